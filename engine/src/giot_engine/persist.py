"""Atomic files and the GIL-friendly JSON writer, without Home Assistant.

The window store (in Home Assistant's process) and the detector (in its own process, see
``detector_process``) both write files here: all or nothing (temporary file, fsync, ``os.replace``),
so a crash or a full disk leaves the previous version in place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import IO

import numpy as np

from .gil import GilYielder

YIELD_EVERY_S = 0.002  # longest the serialiser holds the GIL at a stretch


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` all or nothing: a temporary file beside it, fsync, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_dir(directory: Path, fill: Callable[[Path], None]) -> None:
    """Replace ``directory`` all or nothing with what ``fill`` writes into a fresh one.

    The new directory is written beside the old one and fsynced, then swapped in by two renames;
    a crash between them leaves ``.<name>.old``, which ``recover_dir`` puts back. The model's
    files (weights, optimizer, tokenizer) must change together, so one file at a time is not
    enough.
    """
    parent = directory.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=parent))
    try:
        fill(tmp)
        for path in tmp.iterdir():
            with path.open("rb+") as handle:
                os.fsync(handle.fileno())
        old = parent / f".{directory.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if directory.exists():
            os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def recover_dir(directory: Path) -> None:
    """Finish or undo a swap a crash interrupted, and drop half-written temporary directories."""
    old = directory.parent / f".{directory.name}.old"
    if not directory.exists() and old.is_dir():
        os.replace(old, directory)
    if directory.parent.is_dir():
        for path in directory.parent.glob(f".{directory.name}.*.tmp"):
            shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(handle: IO[bytes], *, data: bytes) -> None:
    """Write serialised JSON into an open file (the step a full disk makes fail)."""
    handle.write(data)


def write_state(path: Path, state: Mapping[str, object]) -> OSError | None:
    """Serialise and write a detector state; the error, if any, is returned to be counted."""
    try:
        atomic_write(path, partial(write_json, data=dumps_yielding(state)))
    except OSError as err:
        return err
    return None


def read_state(path: Path) -> dict[str, object] | None:
    """Read the state saved at ``path``: None where there is none; ValueError if unreadable."""
    try:
        value = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except OSError as err:
        raise ValueError(str(err)) from err
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def dumps_yielding(state: Mapping[str, object]) -> bytes:
    """``json.dumps`` that lets other threads (Home Assistant's event loop) run while it works.

    The C encoder holds the GIL for the whole document (60 ms for a busy home's detector state).
    The incremental encoder yields the text in pieces; between them the GIL is handed over every
    ~2 ms.
    """
    encoder = json.JSONEncoder(default=json_default, separators=(",", ":"))
    parts: list[str] = []
    gil = GilYielder(YIELD_EVERY_S)
    for count, part in enumerate(encoder.iterencode(state)):
        parts.append(part)
        if count % 256 == 0:
            gil.maybe_yield()
    return "".join(parts).encode()


def json_default(value: object) -> object:
    """Numpy scalars or arrays that slip into a plain-data state become plain too."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
