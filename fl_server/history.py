"""One JSON line per finished round in ``<checkpoint-dir>/rounds.jsonl``: what a person reads.

The ServerApp runs in Flower's ``flwr-serverapp`` process; ``giot-server``'s status page runs in
another. They share this file only: the strategy appends a line when a round ends, the page reads
the whole file when it changed. A line is written with one ``write`` on an ``O_APPEND``
descriptor and fsynced before the round's checkpoint is saved, so a crash loses at most the line
being written: the reader skips a torn line and counts it, and the writer starts a fresh line
after one. A round re-run after a restart (its checkpoint was not written yet) appends its line
again: the newest line of a round wins.

A line (``SCHEMA`` 1; absent keys mean "not known", never zero)::

    v, round, strategy, started, ended (Unix s), latency_s (monotonic), available (nodes online
    when the round was planned), nodes_seen (distinct nodes so far), asked, replied, accepted,
    refused, refused_reasons {kind: count}, missed (asked, no reply before the deadline), skipped
    (online, not asked), bytes_up, bytes_down, train_s (until the update was applied), deadline_s,
    train_loss, eval_clients {metric: mean},
    eval_server {metric: value}, dp_epsilon, dp_delta, model_version (server steps applied),
    model_sha256 (first 16 hex digits of the global model's arrays)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord

FILE_NAME = "rounds.jsonl"
SCHEMA = 1

# Refusal reasons as validation words them, grouped into kinds a person can count at a glance
# (the full reason, with the node id, is in the ServerApp's log).
_KINDS = (
    ("skipped the round", "node skipped"),
    ("error reply", "error reply"),
    ("undecodable", "undecodable arrays"),
    ("expected one ArrayRecord", "malformed reply"),
    ("base copy", "stale model copy"),
    ("num-examples", "bad num-examples"),
    ("above budget", "over byte budget"),
    ("update norm", "update norm too large"),
    ("finite", "non-finite values"),
    ("key", "unexpected keys"),
)


def refusal_kind(reason: str) -> str:
    """Return the kind of a refusal reason (``"malformed tensor"`` when none matches)."""
    return next((kind for word, kind in _KINDS if word in reason), "malformed tensor")


def model_digest(arrays: ArrayRecord) -> str:
    """Fingerprint the global model (names and serialised arrays, in name order)."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        digest.update(name.encode())
        digest.update(arrays[name].data)
    return digest.hexdigest()[:16]


def plain_metrics(record: Mapping[str, Any] | None) -> dict[str, float] | None:
    """Return a MetricRecord's scalar values as floats (lists dropped); None for no record."""
    if record is None:
        return None
    return {k: float(v) for k, v in record.items() if isinstance(v, (int, float))}


def _json_safe(value: Any) -> Any:
    """NaN and infinities become null: browsers' ``JSON.parse`` refuses them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def append_round(directory: str | os.PathLike[str], record: Mapping[str, Any]) -> Path:
    """Append one round's line to ``directory/rounds.jsonl`` and fsync it."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    path = root / FILE_NAME
    line = json.dumps(_json_safe(record), separators=(",", ":"), allow_nan=False) + "\n"
    data = line.encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data  # a torn line from a crash stays a line of its own
        view = memoryview(data)
        while view:  # one write in practice; a short write (full disk) continues it
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


@dataclass
class History:
    """The rounds read from ``rounds.jsonl``, one per round number, in round order."""

    rounds: list[dict[str, Any]] = field(default_factory=list)
    truncated: int = 0  # a last line without its newline (being written, or a crash)
    corrupt: int = 0  # other lines that are not a round's JSON object


def read_history(directory: str | os.PathLike[str]) -> History:
    """Read ``directory/rounds.jsonl``; an absent file is an empty history."""
    try:
        raw = (Path(directory) / FILE_NAME).read_bytes()
    except FileNotFoundError:
        return History()
    return parse_history(raw)


def parse_history(raw: bytes) -> History:
    """Parse the file's bytes, skipping and counting lines that are not whole rounds."""
    history = History()
    lines = raw.split(b"\n")
    tail = lines.pop()  # after the last newline: empty, or a line not finished
    if tail.strip():
        history.truncated += 1
    by_round: dict[int, dict[str, Any]] = {}
    for line in lines:
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            history.corrupt += 1
            continue
        rnd = rec.get("round") if isinstance(rec, dict) else None
        if not isinstance(rnd, int) or isinstance(rnd, bool):
            history.corrupt += 1
            continue
        by_round[rnd] = _json_safe(rec)  # a re-run round's newest line wins; NaN: null
    history.rounds = [by_round[r] for r in sorted(by_round)]
    return history


@dataclass
class RoundRecorder:
    """Collects one round's facts while the strategy runs it, then appends its line."""

    directory: str | None
    strategy: str
    server_round: int = 0
    started: float = 0.0
    t0: float = 0.0
    fields: dict[str, Any] = field(default_factory=dict)
    refusals: Counter[str] = field(default_factory=Counter)

    def begin(self, server_round: int) -> None:
        """Start a round (its nodes are about to be selected)."""
        self.server_round = server_round
        self.started = time.time()
        self.t0 = time.monotonic()
        self.fields = {}
        self.refusals = Counter()

    def refuse(self, reason: str) -> None:
        """Count one refused reply by the kind of its reason."""
        self.refusals[refusal_kind(reason)] += 1

    def elapsed(self) -> float:
        """Seconds since the round began."""
        return round(time.monotonic() - self.t0, 4)

    def set(self, **values: Any) -> None:
        """Record facts of this round (``None`` values are left out)."""
        self.fields.update({k: v for k, v in values.items() if v is not None})

    def finish(self, arrays: ArrayRecord | None = None) -> dict[str, Any]:
        """End the round: build its line and append it when there is a directory."""
        record: dict[str, Any] = {
            "v": SCHEMA,
            "round": self.server_round,
            "strategy": self.strategy,
            "started": round(self.started, 3),
            "ended": round(time.time(), 3),
            "latency_s": self.elapsed(),
            **self.fields,
            "refused": sum(self.refusals.values()),
            "refused_reasons": dict(sorted(self.refusals.items())),
        }
        if arrays is not None:
            record["model_sha256"] = model_digest(arrays)
        if self.directory:
            append_round(self.directory, record)
        return record


def count_seen(*groups: Iterable[int]) -> int:
    """Distinct node ids over ``groups``."""
    return len(set().union(*groups))
