"""Detection behind the coordinator: the ``HubDetector`` it talks to and the engine adapter.

Nothing here imports Home Assistant: ``InProcessDetector`` runs either in Home Assistant's executor
or, by default, in a process of its own (``detector_process``), which imports this module without
the integration's package (and so without Home Assistant).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, Protocol, TypeAlias

import numpy as np

from . import wording
from .describe import Behaviour, mud_profile
from .describe import describe as describe_behaviour
from .detector import Detector, Held
from .detector import Verdict as EngineVerdict
from .event_features import user_initiated
from .federated import (
    SHARED_PREFIX,
    HubFederation,
    TaskAnswer,
    Trained,
    config_number,
    model_bytes_limit,
    train_flops,
    validate_global,
    validate_shared,
)
from .gil import GilYielder, yield_gil
from .model import GIoTConfig, GIoTModel, param_shapes
from .model_manager import (
    BATCH,
    LEARNING_RATE,
    MAX_SECONDS,
    MAX_STEPS,
    MIN_STEPS,
    N_POSITIONS,
    ModelManager,
    TrainResult,
    eval_windows,
    limit_blas_threads,
)
from .persist import read_state, write_state
from .records import DeviceEvent, FlowRecord, Severity
from .signature import WINDOW_S, MinuteCounts
from .tokenizer import BOS_ID, PAD_ID, Vocabulary, device_of
from .train import AdamW, train_windows

LOGGER = logging.getLogger(__name__)

StateFile: TypeAlias = Literal["loaded", "missing", "unreadable"]


@dataclass(frozen=True, slots=True)
class HubVerdict:
    """The detector's judgement of one flow or event of one device, as the coordinator uses it.

    ``score`` is in nats over the device's calibrated threshold (0 = threshold, higher = more
    anomalous); ``alarm`` is the engine's own decision (with its hysteresis); the coordinator
    moves the bar for the sensitivity option and away mode, and only for warmed-up devices.
    """

    device: str
    score: float
    alarm: bool
    family: str | None = None
    explanation: str = ""
    severity: Severity | None = None
    warmed: bool = True
    user_initiated: bool = False
    is_event: bool = False


@dataclass(frozen=True, slots=True)
class Description:
    """What a device normally does, short (a sensor state) and in full."""

    short: str
    full: str
    # what the device talks to, as an RFC 8520 (MUD)-shaped profile learnt from its flows, plus
    # timing, volume and active hours (engine ``mud_profile``); None before any flow
    profile: dict[str, Any] | None = None


Window: TypeAlias = tuple[str, np.ndarray, float]


@dataclass(slots=True)
class WindowBatch:
    """Token windows (N, T) with each one's device key and time, as three arrays.

    The detector keeps new windows until the store asks (once a minute) and packs them then,
    so they cross from its process as one message, out of band, and Home Assistant's process
    never holds an object per window (each one was more work for Python's cyclic collector,
    which stops the event loop while it runs); they group by device in numpy instead of a
    Python loop.
    """

    keys: np.ndarray = field(default_factory=lambda: np.zeros(0, np.str_))  # (N,) device keys
    windows: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int32))  # (N, T)
    stamps: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))  # (N,) epoch s

    @classmethod
    def of(cls, windows: Sequence[Window]) -> WindowBatch:
        """Pack windows of one width."""
        if not windows:
            return cls()
        return cls(
            np.array([key for key, _, _ in windows], np.str_),
            np.stack([window for _, window, _ in windows]).astype(np.int32, copy=False),
            np.array([ts for _, _, ts in windows], np.float64),
        )

    def __len__(self) -> int:
        """How many windows."""
        return len(self.stamps)

    def by_device(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Windows and times per device key, each device's in the order they came."""
        if not len(self):
            return {}
        unique, inverse = np.unique(self.keys, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        bounds = np.cumsum(np.bincount(inverse, minlength=len(unique)))[:-1]
        return {
            str(key): (self.windows[rows], self.stamps[rows])
            for key, rows in zip(unique, np.split(order, bounds), strict=True)
        }


@dataclass(slots=True)
class BatchResult:
    """What the coordinator applies of a scored batch.

    Per device (count, last score), the alarming verdicts that matter in order, and refreshed
    descriptions: the loop's work is per device and per alarm, not per record, and so is what
    crosses from the detector's process. New windows stay in the detector until the store asks
    (``drain_windows``).
    """

    devices: dict[str, tuple[int, float]] = field(default_factory=dict)
    alarming: list[HubVerdict] = field(default_factory=list)
    descriptions: dict[str, Description] = field(default_factory=dict)


def hub_local_train(
    config: GIoTConfig, windows: np.ndarray, params: Mapping[str, np.ndarray], steps: int, seed: int
) -> Trained:
    """Train a copy of ``params`` for a round as the hub trains: fresh AdamW, bounded work.

    As ``ModelManager.train`` does (``BATCH``, ``LEARNING_RATE``, at most ``MAX_STEPS`` and
    ``MAX_SECONDS``, the GIL handed over between steps), on the windows without their padding
    (``fl_server.client_app.local_train`` for real data).
    """
    model = GIoTModel(config, {k: np.array(v, np.float32, copy=True) for k, v in params.items()})
    optimizer = AdamW(lr=LEARNING_RATE)
    mask = windows[:, 1:] != PAD_ID
    batch = min(BATCH, len(windows))
    steps = max(1, min(MAX_STEPS, steps))
    losses: list[float] = []
    start = time.monotonic()
    while len(losses) < steps and time.monotonic() - start < MAX_SECONDS:
        report = train_windows(model, windows, 1, batch, seed, optimizer, mask)
        losses.append(report.mean_loss)
        yield_gil()
    done = len(losses)
    return Trained(
        dict(model.params),
        float(np.mean(losses)),
        done,
        done * batch,
        train_flops(model.num_parameters(), done, batch, windows.shape[1]),
    )


def alarming(verdict: HubVerdict, bar: float) -> bool:
    """Raise the bar over the engine's decision, or lower it for warmed-up devices."""
    if bar >= 0:
        return verdict.alarm and verdict.score >= bar
    return verdict.alarm or (verdict.warmed and verdict.score >= bar)


class HubDetector(Protocol):
    """What the coordinator needs from the detector.

    Every method runs in the executor, except the two properties, which the event loop reads
    (they must answer at once).
    """

    @property
    def model_version(self) -> str:
        """Version of the model that scores, shown on the hub."""

    def observe_flows(self, items: Sequence[tuple[str, FlowRecord]]) -> list[HubVerdict]:
        """Score flows attributed to devices, updating their context."""

    def observe_events(self, items: Sequence[tuple[str, DeviceEvent]]) -> list[HubVerdict]:
        """Score device events, updating their context."""

    def observe_batch(
        self,
        flows: Sequence[tuple[str, FlowRecord]],
        events: Sequence[tuple[str, DeviceEvent]],
        bars: tuple[float, float],
        away: bool,
    ) -> BatchResult:
        """Score flows, then events, and reduce the verdicts to what the coordinator applies."""

    def tick(self, now: float) -> list[HubVerdict]:
        """Absence at ``now`` (epoch seconds): one verdict per device gone silent or stuck."""

    def forget(self, key: str) -> None:
        """Drop everything learnt about a device that is no longer watched."""

    def drain_windows(self) -> WindowBatch:
        """Token windows produced since the last call, for the window store."""

    def describe(self, device: str) -> Description:
        """Describe what the device normally does."""

    def set_time_zone(self, time_zone: str | None) -> None:
        """Follow the home's time zone (an IANA name, DST included) from the next record on."""

    def time_zone(self) -> str | None:
        """Return the time zone the detector follows now."""

    def mark_normal(self, device: str) -> np.ndarray:
        """Learn the device's recent alarming pattern as normal; return its windows (N, T)."""

    def federated_train(
        self,
        config: Mapping[str, int | float | str | bool],
        arrays: Mapping[str, np.ndarray],
        windows: np.ndarray,
        seed: int,
    ) -> TaskAnswer:
        """Answer a node's train task: merge the downlink, train, GSFS-encode (see federated)."""
        ...

    def federated_evaluate(
        self,
        config: Mapping[str, int | float | str | bool],
        arrays: Mapping[str, np.ndarray],
        windows: np.ndarray,
    ) -> TaskAnswer:
        """Answer a node's evaluate task: validate and load the published global model."""
        ...

    def train(self, windows: np.ndarray, seed: int) -> TrainResult:
        """Train locally on windows (N, T); raise OSError when the model could not be saved."""

    def load_model(self) -> None:
        """Read the saved model."""

    @property
    def model_info(self) -> dict[str, Any]:
        """Which scorer is active and how much the model has learnt."""

    def save_state(self, path: Path) -> OSError | None:
        """Write ``state()`` to ``path`` atomically; return the error instead of raising it."""

    def load_state_file(self, path: Path) -> StateFile:
        """Restore what ``save_state`` wrote; say whether there was a file and it was readable."""

    def state(self) -> dict[str, Any]:
        """Plain-data state (warm-up, calibration, context) that survives restarts."""

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore what ``state`` returned."""

    def close(self) -> None:
        """Let go of what the detector holds (its process); nothing is saved here."""


class InProcessDetector:
    """Adapter from the engine's online ``HubDetector`` to the coordinator.

    Adds what the engine leaves to its host: the local GIoT model and its training
    (``ModelManager``: bigram counts score until the model beats them on the stored windows),
    per-device descriptions (engine ``describe``), token windows for the window store (exactly
    the sequences the engine scores: ``[BOS]`` and the device's last tokens), feedback
    (``mark_normal`` lowers later scores of the same kind for that device by ``FEEDBACK_NATS`` at
    once and hands the device's recent windows back to be learnt, repeated, in local training),
    and a name for alarms the signature head leaves unnamed (many destination ports in a minute
    is a port scan, many flows to one peer a flood) — for a hub without a base model, whose
    head is untrained and names nothing, and for families the head does not know.
    """

    WINDOW_TOKENS = N_POSITIONS - 1  # plus [BOS]: the model's whole context
    WINDOW_EVERY = 4
    # Windows waiting for the store (drained once a minute): a busy device makes hundreds a
    # minute and the store keeps a few per device-hour (20,000 in all over the retention
    # period), so each device hands over at most this many per drain (its first ones; the rest
    # are not made into store windows at all).
    PENDING_PER_DEVICE = 64
    FEEDBACK_NATS = 8.0
    FEEDBACK_WINDOWS = 8
    SCAN_PORTS = 10
    FLOOD_FLOWS = 300
    KEEP = 1000
    DESCRIBE_EVERY_S = 10.0
    YIELD_EVERY_S = 0.001

    def __init__(self, directory: Path | None = None, base_model: Path | None = None) -> None:
        """Start with a fresh model; ``load_model`` (executor) reads the saved one.

        ``base_model``: the base model directory a hub starts from (``ModelManager``).
        """
        self.vocab = Vocabulary.default()
        self.directory = directory
        self.models = ModelManager(
            directory / "model" if directory is not None else None, self.vocab, base_model
        )
        self._federation: HubFederation | None = None  # read from its files on first use
        self._model_lock = threading.Lock()  # one of train / federated_* at a time
        self.engine = Detector(self.models.scorer, vocab=self.vocab)
        # what the engine learns late (out of its quarantine) the descriptions and windows learn
        self.engine.on_learnt = self._learnt_late
        self._behaviours: dict[str, Behaviour] = {}
        self._events: dict[str, Counter[str]] = {}
        self._recent: dict[str, MinuteCounts] = {}
        self._dampen: dict[str, dict[str, float]] = {}
        self._last_alarm: dict[str, str] = {}
        self._windows: list[Window] = []  # until ``drain_windows`` (bounded per device)
        self._pending: Counter[str] = Counter()  # windows per device since the last drain
        self._count: Counter[str] = Counter()
        self._tail: dict[str, deque[int]] = {}
        self._taken: dict[str, deque[np.ndarray]] = {}
        self._keys: dict[str, str] = {}  # engine device (address, entity) -> coordinator key
        self._described: dict[str, float] = {}  # when each device's description was refreshed
        self._learnt_ts: dict[str, float] = {}  # each engine device's last learnt record (gaps)
        self.gil = GilYielder(self.YIELD_EVERY_S)

    @property
    def model_version(self) -> str:
        """Version of the local model."""
        return self.models.version

    @property
    def model_info(self) -> dict[str, Any]:
        """Which scorer is active, model size, training state."""
        return self.models.info()

    def load_model(self) -> None:
        """Read the saved model (executor) and let it score, with the base model's head."""
        self.models.load()
        self.engine.model = self.models.scorer
        self.engine.signature = self.models.head

    def _name(self, key: str, flow: FlowRecord) -> str | None:
        """Name an alarm from the device's last minute when the signature head did not.

        A busy device has thousands of flows in a minute: the window keeps counts of ports and
        peers as flows enter and leave it, so naming costs the same for a busy device.
        """
        window = self._recent.get(key)
        if window is None:
            window = self._recent[key] = MinuteCounts(bound=None)
        window.drop_before(flow.ts - WINDOW_S)
        window.push_flow(flow, flow.resp_h)
        if window.ports >= self.SCAN_PORTS:
            return "port_scan"
        if window.to(flow.resp_h) >= self.FLOOD_FLOWS:
            return "flood"
        return None

    def _verdict(
        self, key: str, engine_key: str, raw: EngineVerdict, *, warmed: bool, **kw: Any
    ) -> HubVerdict:
        named = kw.pop("named", None)  # the adapter's own name, when the head gives none
        kind = raw.family or named or "unusual"
        score = raw.score - self._dampen.get(key, {}).get(kind, 0.0)
        alarm = raw.alarm and score >= 0
        if alarm:
            self._last_alarm[key] = kind
        self._keys[engine_key] = key  # for ``tick``, whose verdicts name engine devices
        return HubVerdict(
            key,
            round(score, 3),
            alarm,
            None if kind == "unusual" else kind,
            raw.explanation.text if raw.explanation is not None else "",
            raw.severity if raw.severity != Severity.NONE else None,
            warmed,
            **kw,
        )

    def _learn(
        self, key: str, engine_key: str, record: FlowRecord | DeviceEvent, ids: Sequence[int]
    ) -> None:
        """Learn a record the engine learnt: the description's counts and the token windows.

        Records the engine holds (its quarantine: an alarmed episode) are learnt here only if
        and when the engine learns them (``_learnt_late``), in the same way.
        """
        if isinstance(record, FlowRecord):
            behaviour = self._behaviours.setdefault(key, Behaviour())
            previous = self._learnt_ts.get(engine_key)
            behaviour.add(record, previous, self.engine.local_offset(record.ts))
            self._learnt_ts[engine_key] = (
                record.ts if previous is None else max(previous, record.ts)
            )
            del behaviour.gaps[: -self.KEEP], behaviour.bytes_per_flow[: -self.KEEP]
        else:
            self._events.setdefault(key, Counter())[wording.change_words(record)] += 1
        self._count[key] += 1
        tail = self._tail.setdefault(engine_key, deque(maxlen=self.WINDOW_TOKENS))
        tail.extend(ids)  # the record's tokens, as the engine scored them
        if len(tail) == self.WINDOW_TOKENS and self._count[key] % self.WINDOW_EVERY == 0:
            window = np.asarray([BOS_ID, *tail], dtype=np.int32)
            if self._pending[key] < self.PENDING_PER_DEVICE:
                self._pending[key] += 1
                self._windows.append((key, window, record.ts))
            self._taken.setdefault(key, deque(maxlen=self.FEEDBACK_WINDOWS)).append(window)

    def _learnt_late(self, engine_key: str, held: Held) -> None:
        """Learn here too what the engine learnt out of its quarantine."""
        self._learn(self._keys.get(engine_key, engine_key), engine_key, held.record, held.ids)

    def observe_flows(self, items: Sequence[tuple[str, FlowRecord]]) -> list[HubVerdict]:
        """Score the flows with the engine in one batch (the verdicts of one at a time)."""
        named: list[str | None] = []
        for key, flow in items:
            self.gil.maybe_yield()
            engine_key = device_of(flow)
            self._keys.setdefault(engine_key, key)
            if engine_key not in self._learnt_ts:  # gaps count from its last flow (restarts)
                state = self.engine.devices.get(engine_key)
                if state is not None and state.prev_ts is not None:
                    self._learnt_ts[engine_key] = state.prev_ts
            named.append(self._name(key, flow))
        raws = self.engine.process_many([flow for _, flow in items], between=self.gil.maybe_yield)
        verdicts = []
        for (key, flow), raw, name in zip(items, raws, named, strict=True):
            self.gil.maybe_yield()
            engine_key = device_of(flow)
            verdicts.append(self._verdict(key, engine_key, raw, warmed=raw.warmed, named=name))
            if not raw.held:
                self._learn(key, engine_key, flow, raw.ids)
        return verdicts

    def observe_events(self, items: Sequence[tuple[str, DeviceEvent]]) -> list[HubVerdict]:
        """Score the device events with the engine in one batch (the verdicts of one at a time)."""
        for key, event in items:
            self._keys.setdefault(event.device_id or event.entity_id, key)
        raws = self.engine.process_many([event for _, event in items], between=self.gil.maybe_yield)
        verdicts = []
        for (key, event), raw in zip(items, raws, strict=True):
            self.gil.maybe_yield()
            engine_key = event.device_id or event.entity_id
            verdicts.append(
                self._verdict(
                    key,
                    engine_key,
                    raw,
                    warmed=raw.warmed,
                    user_initiated=user_initiated(event),
                    is_event=True,
                )
            )
            if not raw.held:
                self._learn(key, engine_key, event, raw.ids)
        return verdicts

    def observe_batch(
        self,
        flows: Sequence[tuple[str, FlowRecord]],
        events: Sequence[tuple[str, DeviceEvent]],
        bars: tuple[float, float],
        away: bool,
    ) -> BatchResult:
        """Score a batch and reduce it to what the coordinator applies.

        ``bars`` are the coordinator's bars for flows and events (``alarming``); in ``away``
        mode whatever a user did by hand alarms too. Of the alarming verdicts, those that
        change what the coordinator does are kept, in order: per device the first of each kind
        (it may fire an alert; later ones of the kind in the same batch cannot, the alert's
        hold has begun) and the last (its kind and explanation are what the device shows).
        Descriptions are refreshed at most every ``DESCRIBE_EVERY_S`` per device.
        """
        verdicts = self.observe_flows(flows) if flows else []
        if events:
            verdicts += self.observe_events(events)
        result = BatchResult()
        hits: list[HubVerdict] = []
        first: dict[tuple[str, str | None], int] = {}
        last: dict[str, int] = {}
        for verdict in verdicts:
            count, _ = result.devices.get(verdict.device, (0, 0.0))
            result.devices[verdict.device] = (count + 1, verdict.score)
            if alarming(verdict, bars[verdict.is_event]) or (away and verdict.user_initiated):
                first.setdefault((verdict.device, verdict.family), len(hits))
                last[verdict.device] = len(hits)
                hits.append(verdict)
        result.alarming = [hits[i] for i in sorted({*first.values(), *last.values()})]
        now = time.monotonic()
        for key in result.devices:
            if now - self._described.get(key, -math.inf) >= self.DESCRIBE_EVERY_S:
                self._described[key] = now
                result.descriptions[key] = self.describe(key)
        return result

    def tick(self, now: float) -> list[HubVerdict]:
        """Absence verdicts of the engine at ``now``, the loudest per coordinator device.

        The engine names its own devices (an address for flows, a device or entity id for
        events); they are mapped to the coordinator's keys the way ``observe_*`` saw them.
        Feedback counts here too: ``mark_normal`` on a silent device lowers its later absence
        scores, so it has to stay quiet longer before it is silent again.
        """
        loudest: dict[str, HubVerdict] = {}
        for engine_key, raw in self.engine.tick(now):
            key = self._keys.get(engine_key, engine_key)
            kind = raw.family or "silent"
            score = raw.score - self._dampen.get(key, {}).get(kind, 0.0)
            if not raw.alarm or score < 0:
                continue
            self._last_alarm[key] = kind
            verdict = HubVerdict(
                key,
                round(score, 3),
                True,
                kind,
                raw.explanation.text if raw.explanation is not None else "",
                raw.severity if raw.severity != Severity.NONE else None,
                is_event=kind == "stuck",
            )
            if key not in loudest or verdict.score > loudest[key].score:
                loudest[key] = verdict
        return list(loudest.values())

    def forget(self, key: str) -> None:
        """Drop the engine's and the adapter's state of a device no longer watched."""
        engine_keys = {e for e, k in self._keys.items() if k == key}
        # State saved before keys were remembered: the engine's own name for the device.
        for name in (key, key.removeprefix("net:")):
            if self._keys.get(name, key) == key:
                engine_keys.add(name)
        for engine_key in engine_keys:
            self._keys.pop(engine_key, None)
            self.engine.forget(engine_key)
            self._tail.pop(engine_key, None)
            self._learnt_ts.pop(engine_key, None)
        for table in (
            self._behaviours,
            self._events,
            self._recent,
            self._dampen,
            self._last_alarm,
            self._taken,
            self._count,
            self._described,
        ):
            table.pop(key, None)

    def set_time_zone(self, time_zone: str | None) -> None:
        """Hour and weekday tokens, hour habits and active hours in this zone's local time.

        An unknown name is logged and leaves the time zone as it was.
        """
        try:
            self.engine.set_time_zone(time_zone)
        except (KeyError, ValueError) as err:
            LOGGER.warning("GIoT keeps its time zone; %r is unknown: %s", time_zone, err)

    def time_zone(self) -> str | None:
        """Return the time zone the engine follows now (None: UTC or its fixed offset)."""
        return self.engine.config.time_zone

    def drain_windows(self) -> WindowBatch:
        """Hand the new windows over."""
        windows, self._windows = self._windows, []
        self._pending.clear()
        return WindowBatch.of(windows)

    def describe(self, device: str) -> Description:
        """Template sentences about flows (engine ``describe``) and state changes."""
        sentences: list[str] = []
        if (behaviour := self._behaviours.get(device)) is not None and behaviour.flows:
            sentences += describe_behaviour(behaviour)
        if events := self._events.get(device):
            sentences.append(wording.usual_changes(events))
        if not sentences:
            return Description(*wording.NOTHING_OBSERVED)
        profile = None
        if behaviour is not None and behaviour.flows:
            profile = mud_profile(device, behaviour)
        return Description(sentences[0][:255], " ".join(sentences), profile)

    def mark_normal(self, device: str) -> np.ndarray:
        """Lower later scores of the device's last alarming kind (stacking with each mark).

        The engine releases the records it held (its quarantine): the device learns them now,
        and so do its description and windows. Returns the device's recent windows (those
        records' among them), which local training then learns with extra weight.
        """
        for engine_key in [e for e, k in self._keys.items() if k == device] or [device]:
            self.engine.release(engine_key)
        taken = self._taken.pop(device, deque())
        windows = np.stack(taken) if taken else np.zeros((0, self.WINDOW_TOKENS + 1), np.int32)
        if (kind := self._last_alarm.pop(device, None)) is None:
            return windows
        dampen = self._dampen.setdefault(device, {})
        dampen[kind] = dampen.get(kind, 0.0) + self.FEEDBACK_NATS
        return windows

    def train(self, windows: np.ndarray, seed: int) -> TrainResult:
        """Train the GIoT model (and refit the bigram) on the windows; raise OSError if unsaved.

        Runs on copies: scoring goes on meanwhile and switches to the new weights at the end.
        """
        with self._model_lock:
            result = self.models.train(windows, seed)
            self.engine.model = self.models.scorer
        return result

    # -- the federation's tasks ----------------------------------------------------------------

    @property
    def federation(self) -> HubFederation:
        """The hub's federated state (``<directory>/federation/``), read on first use."""
        if self._federation is None:
            directory = self.directory / "federation" if self.directory is not None else None
            self._federation = HubFederation(directory, param_shapes(self.models.config))
            self._federation.load()
        return self._federation

    def _answer(self, status: str, reason: str = "", **kw: Any) -> TaskAnswer:
        return TaskAnswer(
            status, reason, model_version=self.models.version, origin=self.models.origin, **kw
        )

    def _unusable(self, windows: np.ndarray) -> TaskAnswer | None:
        """Skip without windows; refuse ("failed") windows this model cannot read (logged)."""
        if windows.ndim != 2 or not len(windows):
            return self._answer("skipped", "no_data")
        config = self.models.config
        if (
            windows.dtype.kind not in "iu"
            or windows.shape[1] > config.n_positions
            or int(windows.min()) < 0
            or int(windows.max()) >= config.vocab_size
        ):
            LOGGER.warning("GIoT cannot learn from windows %s %s", windows.dtype, windows.shape)
            return self._answer("refused", "failed")
        return None

    def federated_train(
        self,
        config: Mapping[str, int | float | str | bool],
        arrays: Mapping[str, np.ndarray],
        windows: np.ndarray,
        seed: int,
    ) -> TaskAnswer:
        """Answer a train task: a GSFS round (``federated.gsfs_client_round``) on the windows.

        ``arrays`` are the downlink (tensors of the model; with ``base-state`` -1 all of them),
        plus, in the SecAgg mode, the round's index set and grid under ``SHARED_PREFIX``.
        Training starts from the held copy of the global model, never from the model that
        scores, and leaves that model alone: the hub detects with what it has until a global
        model is published (``federated_evaluate``). ``local-steps`` is bounded by
        ``MAX_STEPS`` and ``MAX_SECONDS``, batches are ``BATCH`` windows, padding is not
        learnt. The state the round leaves is saved before the answer (a failed write refuses).
        """
        limit_blas_threads()  # tiny matrices: BLAS threads would only spin (model_manager)
        shapes = param_shapes(self.models.config)
        model = {k: v for k, v in arrays.items() if not k.startswith(SHARED_PREFIX)}
        shared = {
            k[len(SHARED_PREFIX) :]: v for k, v in arrays.items() if k.startswith(SHARED_PREFIX)
        }
        full = config_number(config, "base-state", -1) == -1
        reason = validate_global(model, shapes, model_bytes_limit(shapes), partial=not full)
        if reason is None and config.get("gsfs-mode") == "shared":
            reason = validate_shared(shared, shapes)
        if reason is not None:
            return self._answer("refused", reason)
        windows = np.asarray(windows)
        if (problem := self._unusable(windows)) is not None:
            return problem
        if not np.any(windows[:, 1:] != PAD_ID):  # nothing but padding: nothing to learn
            return self._answer("skipped", "no_data")
        windows = windows.astype(np.int64, copy=False)
        default_steps = min(MAX_STEPS, max(MIN_STEPS, math.ceil(2 * len(windows) / BATCH)))
        with self._model_lock:
            try:
                outcome = self.federation.run_round(
                    model,
                    config,
                    partial(hub_local_train, self.models.config, windows),
                    seed=seed,
                    default_steps=default_steps,
                    shared=shared,
                )
            except OSError:  # logged where it failed
                return self._answer("refused", "failed")
        return self._answer("ok", metrics=dict(outcome.metrics), arrays=outcome.payload)

    def federated_evaluate(
        self,
        config: Mapping[str, int | float | str | bool],
        arrays: Mapping[str, np.ndarray],
        windows: np.ndarray,
    ) -> TaskAnswer:
        """Answer an evaluate task: check the published global model, measure it, score with it.

        The task carries the full model of round ``server-round``. One that does not fit the
        hub's model or is broken is refused and the hub keeps its model. Otherwise it is saved
        and scores from now on (``ModelManager.load_global``: the blend-or-bigram rule on the
        stored windows; a new hub without any takes the model as it is and answers "skipped",
        having no loss to report), and it is the held copy the next train task starts from. What the
        home calibrated (each device's thresholds, in the detector's state) stays. A failed
        write refuses ("failed") and keeps the old model. Metrics: the windows evaluated
        (``EVAL_WINDOWS`` of them at most) and the model's mean NLL per token on them.
        """
        limit_blas_threads()
        shapes = param_shapes(self.models.config)
        reason = validate_global(arrays, shapes, model_bytes_limit(shapes))
        if reason is not None:
            return self._answer("refused", reason)
        windows = np.asarray(windows)
        fresh = windows.ndim == 2 and not len(windows)  # a new hub: nothing to measure on yet
        if not fresh and (problem := self._unusable(windows)) is not None:
            return problem
        server_round = int(config_number(config, "server-round", 0))
        run = config_number(config, "run-id", math.nan)
        name = config.get("model-version")
        with self._model_lock:
            try:
                loss = self.models.load_global(
                    arrays,
                    windows,
                    server_round,
                    None if math.isnan(run) else int(run),
                    name if isinstance(name, str) and name else None,
                )
            except OSError:  # logged where it failed
                return self._answer("refused", "failed")
            except ValueError as err:
                LOGGER.warning("GIoT refuses the federation's model: %s", err)
                return self._answer("refused", "invalid_model")
            self.engine.model = self.models.scorer
            with suppress(OSError):  # logged; the next round starts from the copy held before
                self.federation.adopt(self.models.model.params, config)
        if fresh:  # it scores with the federation's model now, but has no loss to report
            return self._answer("skipped", "no_data")
        metrics = {"num-examples": len(eval_windows(windows)), "eval-loss": loss}
        return self._answer("ok", metrics=metrics)

    def state(self) -> dict[str, Any]:
        """Engine state plus descriptions' counts and feedback."""
        return {
            "engine": self.engine.state_dict(),
            "dampen": {device: dict(kinds) for device, kinds in self._dampen.items()},
            "keys": dict(self._keys),
            "events": {key: dict(counts) for key, counts in self._events.items()},
            "behaviours": {
                key: {
                    "flows": b.flows,
                    "services": [[*service, n] for service, n in b.services.items()],
                    "hours": dict(b.hours),
                    "gaps": b.gaps,
                    "bytes": b.bytes_per_flow,
                }
                for key, b in self._behaviours.items()
            },
        }

    def save_state(self, path: Path) -> OSError | None:
        """Serialise ``state()`` and write it atomically (a failed write keeps the last file).

        The state is megabytes of JSON for a busy home: written where the detector lives, it
        never has to cross into Home Assistant's process.
        """
        return write_state(path, self.state())

    def load_state_file(self, path: Path) -> StateFile:
        """Restore the state ``save_state`` wrote; an unreadable file is logged and ignored."""
        try:
            state = read_state(path)
        except ValueError as err:
            LOGGER.warning("Ignoring unreadable GIoT detector state: %s", err)
            return "unreadable"
        if state is None:
            return "missing"
        self.load_state(state)
        return "loaded"

    def model_params(self) -> dict[str, np.ndarray]:
        """Return the weights of the model that scores now (tests: the process keeps them)."""
        return dict(self.models.model.params)

    def close(self) -> None:
        """Nothing to let go of in-process."""

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore; an engine state from another version is dropped (the engine starts fresh)."""
        try:
            self.engine.load_state_dict(state.get("engine", {}))
        except ValueError as err:
            LOGGER.warning("Starting detection afresh: %s", err)
        self._dampen = {d: dict(v) for d, v in state.get("dampen", {}).items()}
        self._keys = {str(e): str(k) for e, k in state.get("keys", {}).items()}
        self._events = {d: Counter(c) for d, c in state.get("events", {}).items()}
        for key, saved in state.get("behaviours", {}).items():
            self._behaviours[key] = Behaviour(
                flows=int(saved["flows"]),
                services=Counter(
                    {(p, int(port), sc): int(n) for p, port, sc, n in saved["services"]}
                ),
                hours=Counter({int(h): int(n) for h, n in saved["hours"].items()}),
                gaps=[float(g) for g in saved["gaps"]],
                bytes_per_flow=[int(b) for b in saved["bytes"]],
            )
