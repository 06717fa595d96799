"""Virtual hubs from real data: IoT-23 captures and public home event logs, tokenised by the engine.

Every device stream (one IoT-23 capture's hosts, one home log's sensors) is tokenised with the
engine's tokenizer exactly as a hub would (per-device context: gap since the device's previous
record, its flows in the last minute), then cut in time into contiguous shards; a shard is one
virtual hub. Hubs are non-IID by construction: a Mirai-infected camera, a Torii-infected device,
a Philips Hue, a door lock and sensor homes of four different studies share one vocabulary and
nothing else.

Held-out hubs (detection is measured on them, they never train): the last ``holdout`` share, in
time, of every IoT-23 capture's scored hosts, cut into hubs of ``holdout_records`` flows. The
remaining records of all sources are split into ``num_hubs`` training hubs, each source getting
hubs in proportion to its records (at least one). A training hub trains on its benign-labelled
records only: a hub is assumed clean while it learns (as ``scripts/bench detect-score`` trains
on benign-labelled flows); labels never reach the model as features.

Library code: the data location is an argument (benchmarks read ``GIOT_DATA``).
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fl_server.run_config import RunConfig
from giot_engine.home_events import detect_format, load_home
from giot_engine.records import DeviceEvent, FlowRecord, ParseStats
from giot_engine.tokenizer import (
    BOS_ID,
    PAD_ID,
    TokenContext,
    Vocabulary,
    event_tokens,
    flow_tokens,
    is_lan,
)
from giot_engine.zeek import read_flows

Windows = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Stream:
    """One device's records in time order: token ids per record and ground truth (eval only)."""

    source: str
    kind: str  # "flows" | "events"
    records: tuple[tuple[int, ...], ...]
    malicious: npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Hub:
    """One virtual hub: the same time slice of every device stream of one home (or capture)."""

    name: str
    source: str
    kind: str
    streams: tuple[Stream, ...]

    @property
    def records(self) -> int:
        """Records of all its devices."""
        return sum(len(s.records) for s in self.streams)

    def train_windows(self, length: int) -> Windows:
        """Per device, [BOS] + whole benign records per row, PAD-filled (time order)."""
        rows = [
            pack([r for r, m in zip(s.records, s.malicious, strict=True) if not m], length)
            for s in self.streams
        ]
        return np.concatenate(rows) if rows else np.zeros((0, length), np.int64)


@dataclass(frozen=True)
class Corpus:
    """Training hubs and held-out hubs."""

    train: list[Hub]
    held_out: list[Hub]

    def describe(self) -> dict[str, int]:
        """Training hubs per source (for reports)."""
        return dict(Counter(h.source for h in self.train))


def pack(records: Sequence[Sequence[int]], length: int) -> Windows:
    """Rows of [BOS] + as many whole records as fit, PAD-filled; records longer than a row drop."""
    rows: list[list[int]] = []
    row = [BOS_ID]
    for rec in records:
        if 1 + len(rec) > length:
            continue
        if len(row) + len(rec) > length:
            rows.append(row + [PAD_ID] * (length - len(row)))
            row = [BOS_ID]
        row += rec
    if len(row) > 1:
        rows.append(row + [PAD_ID] * (length - len(row)))
    return np.asarray(rows, np.int64).reshape(-1, length)


def _recent(times: list[float], ts: float) -> int:
    while times and times[0] < ts - 60.0:
        times.pop(0)
    return len(times)


def flow_streams(
    flows: Iterable[FlowRecord], source: str, vocab: Vocabulary, min_records: int = 20
) -> list[Stream]:
    """Per LAN device, the tokenised flows it takes part in (device = its LAN-side end)."""
    by_dev: dict[str, list[FlowRecord]] = defaultdict(list)
    for f in flows:
        dev = f.orig_h if is_lan(f.orig_h) or not is_lan(f.resp_h) else f.resp_h
        by_dev[dev].append(f)
    out = []
    for dev, fl in sorted(by_dev.items(), key=lambda kv: -len(kv[1])):
        if len(fl) < min_records:
            continue
        fl.sort(key=lambda f: f.ts)
        prev: float | None = None
        recent: list[float] = []
        recs = []
        for f in fl:
            ctx = TokenContext(prev, _recent(recent, f.ts))
            recs.append(tuple(vocab.encode(flow_tokens(f, ctx, dev))))
            prev = f.ts if prev is None else max(prev, f.ts)
            recent.append(f.ts)
        mal = np.array([(f.label or "").lower() == "malicious" for f in fl], bool)
        out.append(Stream(source, "flows", tuple(recs), mal))
    return out


def event_streams(
    events: Iterable[DeviceEvent], source: str, vocab: Vocabulary, min_records: int = 20
) -> list[Stream]:
    """Per device (or entity), the tokenised state changes of one home."""
    by_dev: dict[str, list[DeviceEvent]] = defaultdict(list)
    for e in events:
        by_dev[e.device_id or e.entity_id].append(e)
    out = []
    for _, ev in sorted(by_dev.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        if len(ev) < min_records:
            continue
        ev.sort(key=lambda e: e.ts)
        prev: float | None = None
        recent: list[float] = []
        recs = []
        for e in ev:
            ctx = TokenContext(prev, _recent(recent, e.ts))
            recs.append(tuple(vocab.encode(event_tokens(e, ctx))))
            prev = e.ts if prev is None else max(prev, e.ts)
            recent.append(e.ts)
        mal = np.array([(e.label or "").lower() == "malicious" for e in ev], bool)
        out.append(Stream(source, "events", tuple(recs), mal))
    return out


def iot23_files(root: Path) -> list[Path]:
    """IoT-23 captures under ``root`` (CSV extracts preferred; a Zeek log only if no CSV twin)."""
    csvs = sorted((root / "csv").glob("*.csv")) if (root / "csv").is_dir() else []
    names = {p.name.replace("-labeled.csv", "") for p in csvs}
    zeek = sorted((root / "zeek").glob("*.conn.log.labeled")) if (root / "zeek").is_dir() else []
    return csvs + [p for p in zeek if p.name.replace(".conn.log.labeled", "") not in names]


def load_streams(data_root: str | os.PathLike[str]) -> list[Stream]:
    """Every device stream of ``<root>/iot23`` and ``<root>/home_events`` (absent parts skipped)."""
    root = Path(data_root)
    vocab = Vocabulary.default()
    streams: list[Stream] = []
    for path in iot23_files(root / "iot23"):
        name = path.name.split("-labeled")[0].split(".conn")[0].replace("CTU-", "")
        streams += flow_streams(read_flows(path, ParseStats()), name, vocab)
    homes = root / "home_events"
    for d in sorted(homes.iterdir()) if homes.is_dir() else []:
        if d.is_dir() and detect_format(d) is not None:
            streams += event_streams(load_home(d, ParseStats()), d.name, vocab)
    return streams


def _slice(s: Stream, lo: float, hi: float) -> Stream:
    n = len(s.records)
    a, b = round(lo * n), round(hi * n)
    return Stream(s.source, s.kind, s.records[a:b], s.malicious[a:b])


def split_hubs(
    streams: Sequence[Stream],
    num_hubs: int,
    holdout: float = 0.1,
    holdout_records: int = 100_000,
) -> Corpus:
    """Held-out hubs from the tail of every flow stream, ``num_hubs`` training hubs from the rest.

    A source (one home log, one capture) is one home: its training hubs are consecutive time
    slices of all its devices at once. Sources get hubs in proportion to their records (at
    least one each; largest remainders).
    """
    held: list[Hub] = []
    by_source: dict[str, list[Stream]] = defaultdict(list)
    for s in streams:
        n = len(s.records)
        keep = n
        if s.kind == "flows" and n >= 50:
            keep = n - max(25, int(holdout * n))
            for lo in range(keep, n, holdout_records):
                hi = min(n, lo + holdout_records)
                if hi - lo >= 25:
                    part = Stream(s.source, s.kind, s.records[lo:hi], s.malicious[lo:hi])
                    held.append(Hub(f"{s.source}/held{len(held)}", s.source, s.kind, (part,)))
        by_source[s.source].append(Stream(s.source, s.kind, s.records[:keep], s.malicious[:keep]))
    names = sorted(by_source)
    if num_hubs < len(names):
        raise ValueError(f"need at least {len(names)} hubs, one per home or capture")
    sizes = np.array([sum(len(s.records) for s in by_source[n]) for n in names], float)
    quota = num_hubs * sizes / sizes.sum()
    counts = np.maximum(1, np.floor(quota).astype(int))
    while counts.sum() > num_hubs:
        counts[int(np.argmax(counts))] -= 1
    order = np.argsort(-(quota - np.floor(quota)), kind="stable")
    i = 0
    while counts.sum() < num_hubs:
        counts[order[i % len(order)]] += 1
        i += 1
    train = []
    for name, c in zip(names, counts, strict=True):
        for j in range(int(c)):
            parts = tuple(_slice(s, j / c, (j + 1) / c) for s in by_source[name])
            train.append(Hub(f"{name}/{j}", name, parts[0].kind, parts))
    return Corpus(train, held)


@lru_cache(maxsize=4)
def _streams_cached(data_root: str) -> tuple[Stream, ...]:
    return tuple(load_streams(data_root))


@lru_cache(maxsize=8)
def corpus(data_root: str, num_hubs: int, holdout: float = 0.1) -> Corpus:
    """Return ``split_hubs(load_streams(data_root), num_hubs)``, cached (one load per process)."""
    return split_hubs(_streams_cached(data_root), num_hubs, holdout)


def record_surprise(
    scorer: Callable[[Windows], npt.NDArray[np.floating[Any]]], stream: Stream, length: int
) -> npt.NDArray[np.float64]:
    """Surprise (summed token NLL, nats) of every record given the device's preceding records.

    Records are packed in time order into rows of [BOS] + whole records (as in training); a
    record is scored given the earlier records of its row, so context is at most one row. One
    batched forward pass per stream: cheap enough to score every held-out hub every round.
    """
    rows: list[list[int]] = []
    spans: list[tuple[int, int, int]] = []  # row, first target position, count
    row = [BOS_ID]
    for rec in stream.records:
        if len(row) + len(rec) > length:
            rows.append(row)
            row = [BOS_ID]
        spans.append((len(rows), len(row) - 1, len(rec)))
        row = row + list(rec)
    rows.append(row)
    ids = np.full((len(rows), length), PAD_ID, np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
    nll = np.asarray(scorer(ids), np.float64)
    return np.array([nll[r, a : a + k].sum() for r, a, k in spans])


def corpus_source(partition_id: int, num_partitions: int, cfg: RunConfig) -> Windows:
    """``data-source = "corpus"``: hub ``partition_id`` of ``data-dir`` (see module doc).

    A hub without a whole benign window gets one [BOS]-only row, so that it still answers.
    """
    length = cfg.n_positions
    hub = corpus(cfg.data_dir, num_partitions).train[partition_id]
    w = hub.train_windows(length)
    if len(w) == 0:
        w = np.full((1, length), PAD_ID, np.int64)
        w[:, 0] = BOS_ID
    return w
