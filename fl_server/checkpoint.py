"""Atomic per-round checkpoints of the server, and resume after a restart.

A federation runs for days across homes that come and go; the server process must survive being
killed at any instant. After every round one ``.npz`` file is written to a temporary name in the
same directory, flushed to disk and renamed over its final name (``os.replace`` is atomic on POSIX
and Windows), so a reader sees the previous complete checkpoint or the new complete one, never a
torn file. It holds the global arrays, everything else as named arrays (server optimiser moments,
downlink snapshots), and one JSON document (round history, per-node sensed conditions, downlink
copies, privacy ledger) stored as a uint8 array, so no pickle is ever loaded.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from giot_engine.persist import atomic_write

_NAME = re.compile(r"^round-(\d{6})\.npz$")
_META = "__meta__"


@dataclass
class Checkpoint:
    """State of the server after ``server_round`` rounds."""

    server_round: int
    arrays: dict[str, np.ndarray]
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(directory: str | os.PathLike[str], ckpt: Checkpoint, keep: int = 2) -> Path:
    """Write ``round-NNNNNN.npz`` atomically and drop all but the newest ``keep`` checkpoints."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"round-{ckpt.server_round:06d}.npz"
    payload: dict[str, Any] = {f"a/{k}": np.asarray(v) for k, v in ckpt.arrays.items()}
    payload |= {f"x/{k}": np.asarray(v) for k, v in ckpt.extra.items()}
    doc = {"server_round": ckpt.server_round, **ckpt.meta}
    payload[_META] = np.frombuffer(json.dumps(doc).encode(), dtype=np.uint8)
    atomic_write(target, partial(np.savez, allow_pickle=False, **payload))
    for old in sorted(_rounds(root))[:-keep] if keep > 0 else []:
        (root / f"round-{old:06d}.npz").unlink(missing_ok=True)
    return target


def _rounds(root: Path) -> list[int]:
    if not root.is_dir():
        return []
    return [int(m.group(1)) for p in root.iterdir() if (m := _NAME.match(p.name))]


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read one checkpoint file."""
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(bytes(data[_META]).decode())
        arrays = {k[2:]: data[k] for k in data.files if k.startswith("a/")}
        extra = {k[2:]: data[k] for k in data.files if k.startswith("x/")}
    server_round = int(meta.pop("server_round"))
    return Checkpoint(server_round, arrays, extra, meta)


def load_latest(directory: str | os.PathLike[str]) -> Checkpoint | None:
    """Newest complete checkpoint in ``directory``, or None when there is none yet."""
    rounds = _rounds(Path(directory))
    if not rounds:
        return None
    return load_checkpoint(Path(directory) / f"round-{max(rounds):06d}.npz")


def prefixed(prefix: str, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Namespace arrays of one component inside ``Checkpoint.extra``."""
    return {f"{prefix}/{k}": v for k, v in arrays.items()}


def unprefixed(prefix: str, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Arrays of one component back out of ``Checkpoint.extra``."""
    p = f"{prefix}/"
    return {k[len(p) :]: v for k, v in arrays.items() if k.startswith(p)}
