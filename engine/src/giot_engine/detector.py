"""Online detector: one verdict per flow or event, the same code in Home Assistant and benchmarks.

Two stages run on every record of a device:
1. signature: behaviour features over the device's last minute -> a classifier head for known attack
   families (scan, C&C, flood, download);
2. generative surprise: the negative log-likelihood of the record's tokens given the device's recent
   tokens (the GIoT model), mixed with a per-device cache of the flow shapes the device has shown
   before (a Bayesian cache language model: what a device did often stops being surprising even when
   it left the model's context long ago), then calibrated against the device's own recent
   benign-looking scores so that every device gets the same target false-alarm rate.

A device alarms only after warm-up, when at least ``k_on`` records of the last minute were hot, or
``k_on_signature`` of them were of a known family, or one was very hot (a flow also needs the
signature stage to find it attack-like: novelty alone is not an attack); it stays on until it has
been quiet for ``off_s`` seconds, and while on, only records that are themselves near the
threshold carry the alarm (a record that started before the window only as a known family). Every
decision uses the training artefacts and earlier records only, so replaying a stream gives the
verdicts a hub would have shown.

Quarantine (one rule, here; ``DetectorConfig.quarantine``, off by default until the loop below is
broken): a record is *held* instead of learnt when it is hot or its device is on. Held records wait
in the device's quarantine (``DeviceState.held``, at most ``held_max``; the rest are counted in
``held_over`` and never learnt) and touch nothing a device learns: its model context (``ids``, and
the KV-cached window: while a device is on, each of its records is scored against the context it
had before the episode; a window a held record left restarts with all the history a record may see,
so the quarantine changes what a record's context holds, not how much of it), its shape cache, its
calibration, its warm-up count and its hours and pace; a host learns nothing of them either
(``Verdict.held``: no profile, no description, no training window).
They leave the quarantine one of three ways:
- the device did not switch on within ``window_s`` of a hot record: nothing came of it, and the
  record is learnt as any hot record is (slowly: ``hot_weight``), a minute late;
- the episode ends (the device switches off after ``off_s`` quiet) with nobody marking it normal:
  its records are dropped (counted in ``held_discarded``), so an attack never becomes habit;
  the records after it learn again;
- ``release`` (a user marked the alarm normal): they are learnt now, in order, and the episode
  ends. ``on_learnt`` tells a host of every record learnt late, so it learns it too.
The quarantine is part of the device's state (``state_dict``), so it survives a restart.
Why it is off: a device that stays on for hours (a long attack, or a poorly fitted model) never
learns its benign novelties either, so they stay hot and keep it on: measured, IoT-23 34-1 at model
seed 1 gave 253 false-alarm windows instead of 4, and the home logs 5.4 false alarms a day instead
of 1.4 (docs/results/detection-notes.md).
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace

import numpy as np

from . import wording
from .context import CachedScorer, ContextScorer, TokenScorer
from .describe import expected_next
from .records import DeviceEvent, FlowRecord, Severity
from .signature import FAMILIES, BehaviourWindow, SignatureHead
from .tokenizer import (
    BOS_ID,
    FLOW_TOKENS,
    TokenContext,
    Vocabulary,
    device_of,
    event_tokens,
    flow_tokens,
    state_class,
    utc_offset,
)

STATE_VERSION = 1


class BigramModel:
    """Smoothed next-token counts: a fallback scorer and a fast stand-in for tests.

    Same ``token_nll`` contract as ``GIoTModel``, for when no trained GIoT model is at hand.
    """

    def __init__(self, counts: np.ndarray, smoothing: float = 0.1) -> None:
        # float32: a full vocabulary's table is ~4 MB instead of ~8 (twice: counts and logs), and
        # counts stay exact up to 2**24 per transition
        self.counts = np.asarray(counts, dtype=np.float32)
        self.smoothing = smoothing
        self._logp = self._log_probs()

    @classmethod
    def fit(cls, windows: Iterable[Iterable[int]], vocab_size: int) -> BigramModel:
        """Count transitions in token windows."""
        counts = np.zeros((vocab_size, vocab_size), dtype=np.float32)
        for w in windows:
            a = np.asarray(list(w), dtype=np.int64)
            np.add.at(counts, (a[:-1], a[1:]), 1.0)
        return cls(counts)

    def _log_probs(self) -> np.ndarray:
        c = self.counts + np.float32(self.smoothing)
        out: np.ndarray = np.log(c / c.sum(axis=1, keepdims=True))
        return out

    def token_nll(self, ids: np.ndarray) -> np.ndarray:
        """Bigram NLL of every next token."""
        out: np.ndarray = -self._logp[ids[:, :-1], ids[:, 1:]]
        return out


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    """Knobs of the online decision; defaults are what the benchmark reports."""

    context_tokens: int = 64  # model window: [BOS] + recent tokens + the record's tokens
    warmup: int = 20  # records of a device before surprise may alarm
    calib_size: int = 512  # benign-looking scores kept per device
    target_fa_rate: float = 0.005  # per-record tail level of the calibration quantile
    margin_nats: float = 4.0  # above the device quantile before a record is hot
    floor_nats: float = 15.0  # nothing less surprising than this is hot, whatever the device
    cache_alpha: float = 20.0  # weight of the model against the device's own shape counts
    hot_weight: float = 0.3  # how much a hot record counts as habit
    sig_threshold: float = 0.7  # attack probability of the signature head that makes a record hot
    k_on: int = 3  # hot records in ``window_s`` that switch a device on
    # signature-hot records (a known attack family) in ``window_s`` that switch a device on: the
    # head was trained on labelled attacks, so its hits are more specific than surprise alone
    k_on_signature: int = 2
    window_s: float = 60.0
    off_s: float = 120.0  # quiet time before a device switches off
    stay_score: float = 0.0  # while on, records scoring at least this carry the alarm
    high_score: float = 12.0  # one record this far over threshold switches a device on alone
    # ... if it is a flow, only when the signature stage also finds it at least this attack-like:
    # a record that is merely new (a first RST, an odd duration) needs company (``k_on``). Events
    # and an untrained signature head leave the single-record rule to surprise alone.
    alone_attack_probability: float = 0.5
    signature_in_warmup: bool = False  # known families may alarm before surprise is calibrated
    utc_offset_s: int = 0  # local time's fixed offset, where no ``time_zone`` is given
    # the home's time zone (IANA name, e.g. "Europe/Berlin"): hour/weekday tokens and hour habits
    # follow its local time, DST included (``tokenizer.utc_offset``); None: ``utc_offset_s``
    time_zone: str | None = None
    time_tokens: bool = True  # False: every record's time token is one constant (the ablation)
    # records that started before the window cannot switch a device on; while it is on, they
    # carry its alarm only when the signature stage calls them an attack or they reach
    # ``high_score`` (a long C&C connection ending mid-incident is part of it; a long NTP
    # exchange that is merely unusual tells about its start, before the incident)
    fresh_only: bool = True
    stale_carries_any: bool = False  # True: any stale record carries (the first sessions' rule)
    # absence (``Detector.tick``): silence against the device's own longest gap, a stuck state
    # against its own longest stay in that state; both need enough observations first
    silence_factor: float = 1.5  # silent when quiet for this many times its longest gap so far
    silence_min_s: float = 600.0  # never silent sooner than this
    silence_min_gaps: int = 50  # gaps seen before silence is judged
    stuck_factor: float = 3.0  # stuck when in one state this many times its longest stay so far
    stuck_min_s: float = 300.0
    stuck_min_stays: int = 10  # completed stays in that state before it can be stuck
    absence_min_span_s: float = 86_400.0  # history a device needs before silent/stuck is judged
    # habits of device events: an hour of the day (+-1 h) the device has never been active in,
    # once it has this many events, and bursts far above its busiest minute so far
    habit_min_events: int = 30
    burst_factor: float = 2.0
    burst_min: int = 10  # events in a minute that can be a burst, whatever the device
    # a KV-cached window (GIoT model) starts with this many tokens of the device's past and grows
    # to ``context_tokens``; ``context_tokens - 1 - FLOW_TOKENS`` is a sliding window (slower)
    carry_tokens: int = 14
    cached_devices: int = 128  # KV-cached windows kept (64 KiB each for the default model)
    # Off by default: measured, holding an episode's records out of learning keeps a device that
    # is on for hours from ever learning its benign novelties (IoT-23 34-1 at model seed 1: 253
    # false-alarm windows instead of 4; home logs: 5.4 false alarms a day instead of 1.4), see
    # docs/results/detection-notes.md. The rule stays here, tested, for the work that fixes it.
    quarantine: bool = False
    held_max: int = 256  # records a device's quarantine keeps (the rest are counted, never learnt)


@dataclass(slots=True)
class Explanation:
    """Why a record scored as it did: per-token surprise, context positions, plain words."""

    text: str
    tokens: list[tuple[str, float]]  # the record's tokens with their surprise in nats
    context_positions: list[int]  # context token positions holding the most surprising token
    signature: dict[str, float] = field(default_factory=dict)  # family probabilities
    # context positions (as in ``context_positions``) the model attended to most when predicting
    # the most surprising token, with their attention weight (GIoT models only, and only on the
    # record that switched the device on; else empty)
    attention: list[tuple[int, float]] = field(default_factory=list)
    # for a flow that switched its device on: the kinds of flow (protocol/port class) the model
    # expected from the device at that point, with probabilities (the contrast to what came)
    expected: list[tuple[str, float]] = field(default_factory=list)


@dataclass(slots=True)
class Verdict:
    """One record's decision, as the anomaly entity shows it."""

    score: float  # higher = more anomalous; 0 = the device's threshold
    alarm: bool
    severity: Severity
    family: str | None
    explanation: Explanation | None
    surprise: float = 0.0  # calibrated surprise alone (nats over the device threshold)
    attack_probability: float = 0.0  # signature head alone
    warmed: bool = False  # the device had finished warm-up before this record
    ids: list[int] = field(default_factory=list)  # the record's token ids, as scored
    held: bool = False  # quarantined: not learnt (see the module's quarantine rule)


@dataclass(slots=True)
class Held:
    """A quarantined record and what learning it later needs (see the quarantine rule)."""

    at: float  # the device's time when it was held
    record: FlowRecord | DeviceEvent
    ids: list[int]
    toks: list[str]
    raw: float  # its surprise, for calibration
    hot: bool
    busy: int = 0  # events: its minute's count, when it may raise the busiest minute (else 0)

    def to_dict(self) -> dict[str, object]:
        """Plain JSON form."""
        record = {f.name: getattr(self.record, f.name) for f in fields(self.record)}
        return {
            "at": self.at,
            "kind": "flow" if isinstance(self.record, FlowRecord) else "event",
            "record": record,
            "ids": list(self.ids),
            "toks": list(self.toks),
            "raw": round(self.raw, 3),  # a thousandth of a nat: batches' float noise left out
            "hot": self.hot,
            "busy": self.busy,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> Held:
        """Inverse of ``to_dict``."""
        kind = FlowRecord if d.get("kind") == "flow" else DeviceEvent
        names = {f.name for f in fields(kind)}
        saved = dict(d["record"])  # type: ignore[call-overload]
        record = kind(**{k: v for k, v in saved.items() if k in names})
        return cls(
            at=float(str(d["at"])),
            record=record,
            ids=[int(x) for x in d["ids"]],  # type: ignore[attr-defined]
            toks=[str(x) for x in d["toks"]],  # type: ignore[attr-defined]
            raw=float(str(d["raw"])),
            hot=bool(d["hot"]),
            busy=int(str(d.get("busy", 0))),
        )


@dataclass(slots=True)
class DeviceState:
    """Everything the detector keeps per device; plain values so it persists as JSON."""

    ids: deque[int]
    calib: deque[float]
    window: BehaviourWindow = field(default_factory=BehaviourWindow)
    prev_ts: float | None = None
    seen: int = 0
    shapes: dict[str, float] = field(default_factory=dict)
    hot: deque[float] = field(default_factory=deque)
    sig_hot: deque[float] = field(default_factory=deque)  # the signature-hot ones among ``hot``
    on: bool = False
    last_hot: float = float("-inf")
    # absence statistics (see ``Detector.tick``): gaps between the device's records and how long
    # it stayed in each state; plain numbers so they persist with the rest
    last_ts: float | None = None
    first_ts: float | None = None  # earliest record: absence is judged after a day of history
    gaps: int = 0
    max_gap: float = 0.0
    state: str | None = None  # current state class (events only)
    state_since: float | None = None
    stays: dict[str, list[float]] = field(default_factory=dict)  # state -> [count, longest stay]
    event_times: deque[float] = field(default_factory=lambda: deque(maxlen=256))
    absent: str | None = None  # "silent" / "stuck" while an absence alarm is on
    hours: list[float] = field(default_factory=lambda: [0.0] * 24)  # events per hour of day
    busiest: int = 0  # most events in 60 s so far (learnt slowly)
    busiest_ts: float = float("-inf")  # when it last grew
    ranked: list[float] = field(default_factory=list)  # ``calib`` sorted (derived, not saved)
    # quarantine (see the module's rule): held records, oldest first; whether they belong to an
    # episode (the device switched on); how many the cap turned away and episodes dropped
    held: deque[Held] = field(default_factory=deque)
    episode: bool = False
    held_over: int = 0
    held_discarded: int = 0

    def to_dict(self) -> dict[str, object]:
        """Plain JSON form."""
        return {
            "ids": list(self.ids),
            "calib": list(self.calib),
            "window": self.window.to_dict(),
            "prev_ts": self.prev_ts,
            "seen": self.seen,
            "shapes": dict(self.shapes),
            "hot": list(self.hot),
            "sig_hot": list(self.sig_hot),
            "on": self.on,
            "last_hot": None if self.last_hot == float("-inf") else self.last_hot,
            "last_ts": self.last_ts,
            "first_ts": self.first_ts,
            "gaps": self.gaps,
            "max_gap": self.max_gap,
            "state": self.state,
            "state_since": self.state_since,
            "stays": {k: list(v) for k, v in self.stays.items()},
            "event_times": list(self.event_times),
            "absent": self.absent,
            "hours": list(self.hours),
            "busiest": self.busiest,
            "busiest_ts": None if self.busiest_ts == float("-inf") else self.busiest_ts,
            "held": [h.to_dict() for h in self.held],
            "episode": self.episode,
            "held_over": self.held_over,
            "held_discarded": self.held_discarded,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, object], maxlen_ids: int, maxlen_calib: int) -> DeviceState:
        """Inverse of ``to_dict``."""
        g = d.get
        last_hot = g("last_hot")
        prev = g("prev_ts")
        last_ts, since, state, absent = g("last_ts"), g("state_since"), g("state"), g("absent")
        busiest_ts = g("busiest_ts")
        return cls(
            ids=deque((int(x) for x in g("ids", [])), maxlen=maxlen_ids),  # type: ignore[attr-defined]
            calib=deque((float(x) for x in g("calib", [])), maxlen=maxlen_calib),  # type: ignore[attr-defined]
            window=BehaviourWindow.from_dict(dict(g("window", {}))),  # type: ignore[call-overload]
            prev_ts=None if prev is None else float(str(prev)),
            seen=int(str(g("seen", 0))),
            shapes={str(k): float(v) for k, v in dict(g("shapes", {})).items()},  # type: ignore[call-overload]
            hot=deque(float(x) for x in g("hot", [])),  # type: ignore[attr-defined]
            sig_hot=deque(float(x) for x in g("sig_hot", [])),  # type: ignore[attr-defined]
            on=bool(g("on", False)),
            last_hot=float("-inf") if last_hot is None else float(str(last_hot)),
            last_ts=None if last_ts is None else float(str(last_ts)),
            first_ts=None if g("first_ts") is None else float(str(g("first_ts"))),
            gaps=int(str(g("gaps", 0))),
            max_gap=float(str(g("max_gap", 0.0))),
            state=None if state is None else str(state),
            state_since=None if since is None else float(str(since)),
            stays={
                str(k): [float(x) for x in v]
                for k, v in dict(g("stays", {})).items()  # type: ignore[call-overload]
            },
            event_times=deque((float(x) for x in g("event_times", [])), maxlen=256),  # type: ignore[attr-defined]
            absent=None if absent is None else str(absent),
            hours=[float(x) for x in g("hours", [0.0] * 24)],  # type: ignore[attr-defined]
            busiest=int(str(g("busiest", 0))),
            busiest_ts=float("-inf") if busiest_ts is None else float(str(busiest_ts)),
            ranked=sorted(float(x) for x in g("calib", [])),  # type: ignore[attr-defined]
            held=deque(Held.from_dict(h) for h in g("held", [])),  # type: ignore[attr-defined]
            episode=bool(g("episode", False)),
            held_over=int(str(g("held_over", 0))),
            held_discarded=int(str(g("held_discarded", 0))),
        )


@dataclass(slots=True)
class _Pending:
    """A record prepared for scoring: what its decision needs from the time it arrived."""

    device: str
    st: DeviceState
    ts: float
    now: float  # the device's latest time before this record (hysteresis, freshness)
    toks: list[str]
    ids: list[int]
    flow: FlowRecord | None = None
    peer: str = ""
    feats: np.ndarray | None = None
    probs: np.ndarray | None = None
    like: int = 0  # flows of the last minute to the same port, this one included (its words)
    event: DeviceEvent | None = None
    recent: int = 0  # the device's events of the last minute before this one
    raw: float = 0.0  # the decision's surprise in nats (what calibration learns)
    hot: bool = False
    busy: int = 0  # events: the minute's count, when it may raise the device's busiest minute
    keys: list[tuple[str, str]] | None = None  # the shape-cache keys of ``toks`` (``_decide``)


class Detector:
    """Online, per-device, strictly causal anomaly detector over flows and device events."""

    def __init__(
        self,
        model: TokenScorer,
        signature: SignatureHead | None = None,
        config: DetectorConfig | None = None,
        vocab: Vocabulary | None = None,
    ) -> None:
        self.signature = signature or SignatureHead.untrained()
        self.config = config or DetectorConfig()
        self.vocab = vocab or Vocabulary.default()
        self.devices: dict[str, DeviceState] = {}
        # told of every record learnt after it was held (released from the quarantine), so a
        # host learns it then too (its profile, its training windows)
        self.on_learnt: Callable[[str, Held], object] | None = None
        self._frozen: set[str] = set()  # devices scored against frozen windows this round
        self._moved: set[str] = set()  # devices whose context a decision moved (``_round``)
        cfg = self.config
        self.contexts = ContextScorer(
            model, cfg.context_tokens, self._ctx_len(), cfg.carry_tokens, cfg.cached_devices
        )

    @property
    def model(self) -> TokenScorer:
        """The language model; replacing it (new weights) restarts every device's window."""
        return self.contexts.model

    @model.setter
    def model(self, model: TokenScorer) -> None:
        self.contexts.model = model

    # -- state -------------------------------------------------------------------------------
    def _state(self, device: str) -> DeviceState:
        st = self.devices.get(device)
        if st is None:
            st = DeviceState(
                ids=deque(maxlen=self._ctx_len()), calib=deque(maxlen=self.config.calib_size)
            )
            self.devices[device] = st
        return st

    def set_time_zone(self, time_zone: str | None) -> None:
        """Follow the home's time zone from now on (an IANA name; None: ``utc_offset_s``).

        Raises ``ZoneInfoNotFoundError`` (a ``KeyError``) for a name the system does not know.
        """
        if time_zone is not None:
            utc_offset(0.0, time_zone)  # unknown names fail here, not on the next record
        self.config = replace(self.config, time_zone=time_zone)

    def local_offset(self, ts: float) -> int:
        """Seconds the home's local time is ahead of UTC at ``ts`` (DST included)."""
        return utc_offset(ts, self.config.time_zone, self.config.utc_offset_s)

    def _ctx_len(self) -> int:
        # whole flows only, as in training windows: [BOS] + k flows + the scored flow
        return max(0, (self.config.context_tokens - 1 - FLOW_TOKENS) // FLOW_TOKENS * FLOW_TOKENS)

    def state_dict(self) -> dict[str, object]:
        """Per-device state (calibration, warm-up, context, alarm) as plain JSON values."""
        return {
            "version": STATE_VERSION,
            "vocab": self.vocab.version,
            "devices": {k: v.to_dict() for k, v in self.devices.items()},
        }

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore what ``state_dict`` saved (e.g. after a Home Assistant restart)."""
        if state.get("version") != STATE_VERSION or state.get("vocab") != self.vocab.version:
            raise ValueError("detector state from another version; start fresh")
        devices = state.get("devices", {})
        assert isinstance(devices, Mapping)
        self.devices = {
            str(k): DeviceState.from_dict(v, self._ctx_len(), self.config.calib_size)
            for k, v in devices.items()
        }
        self.contexts.clear()

    def forget(self, device: str) -> None:
        """Drop everything the detector keeps about a device (e.g. one no longer on the network)."""
        self.devices.pop(device, None)
        self.contexts.forget(device)

    # -- scoring -----------------------------------------------------------------------------
    def process(self, flow: FlowRecord) -> Verdict:
        """Score one flow, decide, then learn from it (in that order: strictly causal)."""
        return self.process_many([flow])[0]

    def process_event(self, event: DeviceEvent) -> Verdict:
        """Score one Home Assistant state change (surprise only: no signature families)."""
        return self.process_many([event])[0]

    def process_many(
        self,
        records: Sequence[FlowRecord | DeviceEvent],
        between: Callable[[], object] | None = None,
    ) -> list[Verdict]:
        """Verdicts of ``records`` in order, as ``process``/``process_event`` one by one give.

        Faster: what a record's tokens and signature features need (its device's earlier
        records) is prepared first for the whole batch, the model then scores every record in
        its device's context with a few batched calls, and the decisions follow in order. Each
        record still sees only the records before it. ``between`` is called between records
        (e.g. a host whose event loop shares the interpreter lets it run now and then).
        """
        pending = []
        for r in records:
            pending.append(
                self._prepare(r) if isinstance(r, FlowRecord) else self._prepare_event(r)
            )
            if between is not None:
                between()
        flows = [p for p in pending if p.feats is not None]
        if flows:
            probs = self.signature.predict(np.stack([p.feats for p in flows]))  # type: ignore[misc]
            for p, row in zip(flows, probs, strict=True):
                p.probs = row
        verdicts: list[Verdict | None] = [None] * len(pending)
        todo = list(range(len(pending)))
        while todo:  # more than one round only where the quarantine moved a device's context
            todo = self._round(pending, todo, verdicts, between)
        return [v for v in verdicts if v is not None]

    def _round(
        self,
        pending: Sequence[_Pending],
        todo: list[int],
        verdicts: list[Verdict | None],
        between: Callable[[], object] | None,
    ) -> list[int]:
        """Score and decide ``todo`` in order; return those to score again.

        A device in an episode is scored against the context it had before it (``ids``, which
        held records never join): each of its records in a window of its own. Where a decision
        moves a device's context away from the window its later records were scored in (a
        record held from a live window, one learnt late, one learnt beside frozen windows),
        those later records are scored again, so a batch gives the verdicts of one at a time.
        """
        self._frozen = (
            {pending[i].device for i in todo if pending[i].st.on or pending[i].st.episode}
            if self.config.quarantine
            else set()
        )
        requests = [
            (
                f"{pending[i].device}\x00{i}"
                if pending[i].device in self._frozen
                else pending[i].device,
                pending[i].st.ids,
                pending[i].ids,
            )
            for i in todo
        ]
        for name, _, _ in requests:
            if "\x00" in name:  # the pre-episode context, as much of it as a live window shows
                self.contexts.forget(name, full=True)
        nlls = self.contexts.score(requests, between)
        for name, _, _ in requests:
            if "\x00" in name:
                self.contexts.forget(name)
        again: list[int] = []
        stopped: set[str] = set()
        self._moved.clear()
        for i, nll in zip(todo, nlls, strict=True):
            p = pending[i]
            if p.device in stopped:
                again.append(i)
                continue
            verdicts[i] = self._conclude(p, nll)
            if p.device in self._moved:
                self._moved.discard(p.device)
                self.contexts.forget(p.device, full=True)
                stopped.add(p.device)
            if between is not None:
                between()
        self._frozen = set()
        return again

    def _prepare(self, flow: FlowRecord) -> _Pending:
        """Tokens and features of a flow from its device's earlier flows; remember it for later."""
        device = device_of(flow)
        st = self._state(device)
        peer = flow.resp_h if device == flow.orig_h else flow.orig_h
        ctx = TokenContext(
            st.prev_ts,
            self._recent(st, flow.ts),
            self.local_offset(flow.ts),
            timeless=not self.config.time_tokens,
        )
        toks = flow_tokens(flow, ctx, device)
        p = _Pending(
            device, st, flow.ts, max(st.window.now, flow.ts), toks, self.vocab.encode(toks)
        )
        p.flow, p.peer, p.feats = flow, peer, st.window.features(flow, peer)
        p.like = st.window.count_like(flow)  # for its words, should it alarm
        st.window.add(flow, peer)
        st.prev_ts = flow.ts if st.prev_ts is None else max(st.prev_ts, flow.ts)
        _seen_at(st, flow.ts)
        return p

    def _prepare_event(self, event: DeviceEvent) -> _Pending:
        device = event.device_id or event.entity_id
        st = self._state(device)
        recent = sum(1 for t in st.event_times if t >= event.ts - 60.0)
        ctx = TokenContext(
            st.prev_ts, recent, self.local_offset(event.ts), timeless=not self.config.time_tokens
        )
        toks = event_tokens(event, ctx)
        now = max(st.window.now, event.ts)
        p = _Pending(device, st, event.ts, now, toks, self.vocab.encode(toks))
        p.event, p.recent = event, recent
        st.window.now = now
        st.event_times.append(event.ts)
        st.prev_ts = event.ts if st.prev_ts is None else max(st.prev_ts, event.ts)
        _seen_at(st, event.ts)
        return p

    def _conclude(self, p: _Pending, nll: np.ndarray) -> Verdict:
        """Decide on a prepared record given its tokens' NLL, then learn from it."""
        st = p.st
        if p.flow is not None:
            assert p.probs is not None
            verdict = self._decide(p, nll, p.probs)
            if verdict.alarm and verdict.explanation is not None:
                verdict.explanation.text = wording.flow_alarm(
                    p.flow,
                    p.peer,
                    p.like,
                    verdict.family,
                    tokens=verdict.explanation.tokens,
                    expected=verdict.explanation.expected,
                )
            self._admit(p, verdict)
            return verdict
        event = p.event
        assert event is not None
        probs = np.zeros(len(FAMILIES))
        probs[0] = 1.0
        habit, why = self._habit(st, event.ts, p.recent + 1)
        verdict = self._decide(p, nll, probs, habit)
        if verdict.alarm and verdict.explanation is not None:
            verdict.explanation.text = wording.event_alarm(event, why, verdict.explanation.tokens)
        p.busy = p.recent + 1 if habit <= 0 else 0
        _change_state(st, event)
        self._admit(p, verdict)
        return verdict

    def observe(self, flow: FlowRecord) -> tuple[str, list[int], np.ndarray]:
        """Return a training flow's device, token ids and signature features, without scoring.

        Exactly what ``process`` sees, so training data is prepared with the same code.
        """
        p = self._prepare(flow)
        p.st.ids.extend(p.ids)
        p.st.seen += 1
        self.contexts.forget(p.device)
        assert p.feats is not None
        return p.device, p.ids, p.feats

    def observe_event(self, event: DeviceEvent) -> tuple[str, list[int]]:
        """Return a training event's device and token ids, without scoring (as ``observe``)."""
        p = self._prepare_event(event)
        _change_state(p.st, event)
        p.st.ids.extend(p.ids)
        p.st.seen += 1
        self.contexts.forget(p.device)
        return p.device, p.ids

    def _habit(self, st: DeviceState, ts: float, in_minute: int) -> tuple[float, str]:
        """Score (0 = threshold) of an event against the device's hours and pace, and why.

        Token surprise sums over all fields, so one odd field of an otherwise ordinary event (a
        door opening at 3 am, a sensor flapping) drowns; these two per-device counts catch it.
        """
        cfg = self.config
        if st.seen < cfg.warmup:
            return -math.inf, ""
        limit = max(cfg.burst_min, cfg.burst_factor * st.busiest)
        if in_minute > limit:
            return math.log(in_minute / limit) + 1.0, wording.burst_reason(in_minute)
        h = _hour(ts, self.local_offset(ts))
        near = st.hours[h] + st.hours[(h - 1) % 24] + st.hours[(h + 1) % 24]
        if sum(st.hours) >= cfg.habit_min_events and near == 0:
            return cfg.high_score, wording.odd_hour_reason(h)
        return -math.inf, ""

    def tick(self, now: float) -> list[tuple[str, Verdict]]:
        """Judge absence at ``now``: devices that went silent or got stuck in one state.

        A record can only be scored when it arrives, so a device that stops reporting (unplugged,
        jammed, battery flat, hijacked and muted) or a sensor stuck in one state would never
        alarm. Call this periodically (e.g. every minute) with the current time. A device is
        silent when its quiet time exceeds ``silence_factor`` times the longest gap it has shown
        so far, and stuck when it has stayed in its current state ``stuck_factor`` times longer
        than its longest completed stay in that state (numeric states: value unchanged). Both
        use only what was seen before ``now``; the alarm clears with the device's next record.
        Returns one verdict per device whose absence alarm is on at ``now``.
        """
        cfg = self.config
        out: list[tuple[str, Verdict]] = []
        for device, st in self.devices.items():
            if st.last_ts is None or now <= st.last_ts:
                continue
            # a device's longest gap or stay means little before it has lived through a night
            if st.first_ts is None or st.last_ts - st.first_ts < cfg.absence_min_span_s:
                continue
            kind, quiet, limit, usual = None, 0.0, math.inf, 0.0
            count, longest = st.stays.get(st.state or "", [0.0, 0.0])
            if st.state_since is not None and count >= cfg.stuck_min_stays:
                quiet, usual = now - st.state_since, longest
                limit = max(cfg.stuck_min_s, cfg.stuck_factor * longest)
                kind = "stuck" if quiet > limit else None
            if kind is None and st.gaps >= cfg.silence_min_gaps:
                quiet, usual = now - st.last_ts, st.max_gap
                limit = max(cfg.silence_min_s, cfg.silence_factor * st.max_gap)
                kind = "silent" if quiet > limit else None
            if kind is None:
                continue
            st.absent = kind
            score = math.log(quiet / limit) + cfg.high_score / 2
            text = wording.absence_alarm(kind, quiet, st.state, usual)
            expl = Explanation(text=text, tokens=[], context_positions=[])
            out.append((device, Verdict(score, True, Severity.MEDIUM, kind, expl, score, 0.0)))
        return out

    def _recent(self, st: DeviceState, ts: float) -> int:
        return st.window.recent(ts)

    def _expected(self, st: DeviceState) -> list[tuple[str, float]]:
        """Rank the kinds of flow the model expected next from the device (top 3)."""
        context = list(st.ids)[max(0, len(st.ids) - (self.config.context_tokens - 2)) :]
        return expected_next(self.model, self.vocab, context, top=3)

    def _attended(self, st: DeviceState, ids: list[int], top: int) -> list[tuple[int, float]]:
        """Context positions the model attended to for the record's ``top`` token (top 5)."""
        if not isinstance(self.model, CachedScorer):  # bigram counts attend to nothing
            return []
        room = self.config.context_tokens - 1 - len(ids)
        ctx = list(st.ids)[len(st.ids) - min(room, len(st.ids)) :]
        seq = np.asarray([BOS_ID, *ctx, *ids], dtype=np.int64)
        att = self.model.attention(seq)  # (L, H, T, T)
        query = 1 + len(ctx) + top - 1  # the position whose output predicts token ``top``
        weights = att[:, :, query, 1 : 1 + len(ctx)].mean(axis=(0, 1))
        offset = len(st.ids) - len(ctx)  # positions count from the start of ``st.ids``
        order = np.argsort(-weights, kind="stable")[:5]
        return [(offset + int(i), round(float(weights[i]), 4)) for i in order]

    def _decide(
        self, p: _Pending, nll: np.ndarray, probs: np.ndarray, habit: float = -math.inf
    ) -> Verdict:
        st, ts, now, toks, ids = p.st, p.ts, p.now, p.toks, p.ids
        cfg = self.config
        keys = p.keys = _cache_keys(toks)
        nll = self._cached(st, keys, nll)
        raw = float(nll.sum())
        warmed = st.seen >= cfg.warmup
        if len(st.calib) >= max(1, min(cfg.warmup, cfg.calib_size)):
            q = _quantile(st.ranked, 1.0 - cfg.target_fa_rate)
            thr = max(cfg.floor_nats, q + cfg.margin_nats)
        else:
            thr = cfg.floor_nats
        surprise = raw - thr
        p_attack = float(1.0 - probs[0])
        sig = _logit(p_attack) - _logit(cfg.sig_threshold)
        sig_ok = warmed or cfg.signature_in_warmup
        score = max(surprise, sig, habit)
        known = sig > 0 and sig_ok  # stage 1: a known attack family
        hot = known or (max(surprise, habit) > 0 and warmed)
        # aggregation with hysteresis (``now``: the device's latest time before this record)
        for times in (st.hot, st.sig_hot):
            while times and times[0] < now - cfg.window_s:
                times.popleft()
        if st.on and now - st.last_hot > cfg.off_s:
            st.on = False
        self._settle(p.device, st, now)
        # Zeek logs a connection when it ends, stamped with its start: a record that started
        # before the current window (a long connection ending, or flushed at shutdown) is no
        # evidence of what the device does now, so it cannot switch the device on
        fresh = not cfg.fresh_only or ts >= now - cfg.window_s
        alone = score >= cfg.high_score and (
            p.flow is None or not self.signature.trained or p_attack >= cfg.alone_attack_probability
        )
        was_on = st.on
        if hot and fresh:
            st.hot.append(now)
            if known:
                st.sig_hot.append(now)
            st.last_hot = now
            if len(st.hot) >= cfg.k_on or len(st.sig_hot) >= cfg.k_on_signature or alone:
                st.on = True
        carries = fresh or known or score >= cfg.high_score or cfg.stale_carries_any
        alarm = st.on and score >= cfg.stay_score and (hot or warmed) and carries
        family: str | None = None
        if alarm and sig > 0:
            family = FAMILIES[1 + int(np.argmax(probs[1:]))]
        severity = Severity.NONE
        if alarm:
            severity = (
                Severity.HIGH
                if score >= cfg.high_score
                else Severity.MEDIUM
                if score >= 0
                else Severity.LOW
            )
        explanation = None
        if alarm:
            top = int(np.argmax(nll))
            positions = [i for i, t in enumerate(st.ids) if t == ids[top]]
            explanation = Explanation(
                text="",
                tokens=[(t, round(float(v), 3)) for t, v in zip(toks, nll, strict=True)],
                context_positions=positions[-8:],
                signature={f: round(float(p), 4) for f, p in zip(FAMILIES, probs, strict=True)},
                # a full forward pass: only for the record that switched the device on
                attention=[] if was_on else self._attended(st, ids, top),
                expected=[] if was_on or p.flow is None else self._expected(st),
            )
        p.raw, p.hot = raw, hot  # learnt (or held) after deciding: ``_admit``
        return Verdict(
            score, alarm, severity, family, explanation, surprise, p_attack, warmed, list(ids)
        )

    def _admit(self, p: _Pending, verdict: Verdict) -> None:
        """Learn a decided record, or hold it: hot, or its device on (the quarantine rule)."""
        st = p.st
        record: FlowRecord | DeviceEvent | None = p.flow if p.flow is not None else p.event
        assert record is not None
        held = Held(p.now, record, p.ids, p.toks, p.raw, p.hot, p.busy)
        frozen = p.device in self._frozen
        if not self.config.quarantine or not (p.hot or st.on):
            self._learn(st, held, p.keys)
            if frozen:  # its later records were scored without it
                self._moved.add(p.device)
            return
        verdict.held = True
        st.episode = st.episode or st.on  # the hot records before it switched on belong to it
        if len(st.held) < self.config.held_max:
            st.held.append(held)
        else:
            st.held_over += 1
        # the device's KV-cached window has seen it: start again from what it learnt (a full
        # window of it: taking a record out changes what later records see, not how much)
        self.contexts.forget(p.device, full=True)
        if not frozen:
            self._moved.add(p.device)

    def _settle(self, device: str, st: DeviceState, now: float) -> None:
        """Empty the quarantine of what ``now`` decides: an episode over, hot records let go."""
        if st.episode and not st.on:  # over, and nobody marked it normal: never learnt
            st.held_discarded += len(st.held)
            st.held.clear()
            st.episode = False
            return
        if st.episode:
            return
        while st.held and st.held[0].at < now - self.config.window_s:
            self._learn_late(device, st, st.held.popleft())

    def release(self, device: str) -> int:
        """Learn the device's quarantined records now (a user marked its alarm normal).

        The episode ends with them (the device is off until new hot records switch it on);
        ``on_learnt`` hears of each. Returns how many were released.
        """
        st = self.devices.get(device)
        if st is None:
            return 0
        held, st.held = list(st.held), deque()
        st.on = st.episode = False
        st.hot.clear()
        st.sig_hot.clear()
        for h in held:
            self._learn_late(device, st, h)
        self.contexts.forget(device, full=True)
        return len(held)

    def quarantine(self, device: str) -> dict[str, int | bool]:
        """Count the device's quarantine: held now, turned away by the cap, dropped."""
        st = self.devices.get(device)
        if st is None:
            return {"held": 0, "episode": False, "over_cap": 0, "discarded": 0}
        return {
            "held": len(st.held),
            "episode": st.episode,
            "over_cap": st.held_over,
            "discarded": st.held_discarded,
        }

    def _learn_late(self, device: str, st: DeviceState, h: Held) -> None:
        self._learn(st, h)
        self._moved.add(device)
        self.contexts.forget(device, full=True)
        if self.on_learnt is not None:
            self.on_learnt(device, h)

    def _learn(self, st: DeviceState, h: Held, keys: list[tuple[str, str]] | None = None) -> None:
        """Learn a record: context, warm-up, calibration, shapes, habits (``keys``: as decided)."""
        cfg = self.config
        ts = h.record.ts
        st.ids.extend(h.ids)
        st.seen += 1
        st.prev_ts = ts if st.prev_ts is None else max(st.prev_ts, ts)
        if not h.hot and st.seen > cfg.warmup:  # first sightings of a young device say little
            if len(st.calib) == st.calib.maxlen:  # the oldest leaves the sorted copy too
                del st.ranked[bisect.bisect_left(st.ranked, st.calib[0])]
            st.calib.append(h.raw)
            bisect.insort(st.ranked, h.raw)
        # hot shapes are learnt slowly: a repeated benign novelty fades, an attack stays loud
        weight = cfg.hot_weight if h.hot else 1.0
        for num, den in keys if keys is not None else _cache_keys(h.toks):
            st.shapes[num] = st.shapes.get(num, 0.0) + weight
            st.shapes[den] = st.shapes.get(den, 0.0) + weight
        if len(st.shapes) > 8192:  # bound memory: forget the rarest token counts
            for k in sorted(st.shapes, key=st.shapes.__getitem__)[:2048]:
                if not k.startswith("#"):
                    del st.shapes[k]
        if isinstance(h.record, DeviceEvent):
            # the busiest minute is learnt one event per minute at most: a real change of pace
            # gets learnt over time, a burst that ramps up does not raise its own limit
            if h.busy > st.busiest and ts - st.busiest_ts >= 60.0:
                st.busiest, st.busiest_ts = st.busiest + 1, ts
            st.hours[_hour(ts, self.local_offset(ts))] += 1.0

    def _cached(self, st: DeviceState, keys: list[tuple[str, str]], nll: np.ndarray) -> np.ndarray:
        """Mix the model with the device's own token counts (a per-device cache model).

        Each token is predicted by (count + alpha * p_model) / (total + alpha), where counts are the
        device's, per field and per kind of flow: what a device keeps doing stops being surprising
        even long after it left the model's context window.
        """
        a = self.config.cache_alpha
        log_a = math.log(a)
        out = np.empty(len(keys))
        for i, ((num, den), x) in enumerate(zip(keys, nll.tolist(), strict=True)):
            c, n = st.shapes.get(num, 0.0), st.shapes.get(den, 0.0)
            # -log((c + a e^-x) / (n + a)), in the form that cannot overflow
            mixed = (
                x - log_a
                if c <= 0
                else -math.log(c + a * math.exp(-x))
                if x < 700
                else -math.log(c)
            )
            out[i] = math.log(n + a) + mixed
        return out


def _quantile(ranked: list[float], q: float) -> float:
    """``np.quantile(ranked, q)`` (linear interpolation) of an already sorted list, O(1)."""
    h = (len(ranked) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(ranked) - 1)
    return ranked[lo] + (ranked[hi] - ranked[lo]) * (h - lo)


def _seen_at(st: DeviceState, ts: float) -> None:
    """Gap statistics for ``tick``; a late-logged record (earlier start) adds no gap."""
    st.absent = None
    if st.last_ts is not None and ts > st.last_ts:
        st.gaps += 1
        st.max_gap = max(st.max_gap, ts - st.last_ts)
    st.last_ts = ts if st.last_ts is None else max(st.last_ts, ts)
    st.first_ts = ts if st.first_ts is None else min(st.first_ts, ts)


def _change_state(st: DeviceState, event: DeviceEvent) -> None:
    """Track how long a device stays in each state (numeric states: until the value changes)."""
    key = state_class(event.new_state)
    changed = key != st.state or (key == "num" and event.new_state != event.old_state)
    if not changed:
        return
    if st.state is not None and st.state_since is not None:
        count, longest = st.stays.get(st.state, [0.0, 0.0])
        st.stays[st.state] = [count + 1.0, max(longest, event.ts - st.state_since)]
    st.state, st.state_since = key, event.ts


def _hour(ts: float, utc_offset_s: int) -> int:
    return int((ts + utc_offset_s) // 3600 % 24)


def _cache_keys(toks: list[str]) -> list[tuple[str, str]]:
    """Count keys (numerator, denominator) of each token of a record.

    The first token (the kind of flow or event) counts against all records, every other token
    against records of the same kind.
    """
    keys = [(f"0|{toks[0]}", "#0")]
    keys += [(f"{k}|{toks[0]}|{t}", f"#{k}|{toks[0]}") for k, t in enumerate(toks[1:], 1)]
    return keys


def _logit(p: float) -> float:
    p = min(max(p, 1e-9), 1 - 1e-9)
    return math.log(p / (1 - p))
