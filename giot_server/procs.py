"""Finding and stopping the processes a Flower deployment starts (Linux ``/proc``).

Flower's daemons start children in sessions of their own (SuperExec, ``flwr-serverapp``), and
``flwr run`` on a local connection leaves a SuperLink behind: killing one process or one group is
not enough. Two nets catch them: the process tree (children, recursively) and the ``FLWR_HOME``
every process of one server inherits.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path


def descendants(pid: int) -> list[int]:
    """Children of ``pid``, recursively."""
    kids: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(stat.parent.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        found = kids.get(todo.pop(), [])
        out += found
        todo += found
    return out


def with_env(name: str, value: str) -> list[int]:
    """List processes started with ``name=value`` in their environment (not this one)."""
    mark = f"{name}={value}".encode()
    pids = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        with contextlib.suppress(OSError):
            if mark in environ.read_bytes().split(b"\0"):
                pids.append(int(environ.parent.name))
    return [p for p in pids if p != os.getpid()]


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in {"Z", "X"}


def kill(pid: int, sig: signal.Signals) -> None:
    """Signal ``pid`` and the process group it leads (each daemon starts its own session)."""
    if pid != os.getpgrp():  # never the caller's own group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def terminate(pids: Iterable[int], grace: float = 5.0) -> list[int]:
    """SIGTERM ``pids``, wait up to ``grace`` seconds, SIGKILL what is left; return those killed."""
    pids = [p for p in dict.fromkeys(pids) if p != os.getpid()]
    for pid in pids:
        kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    left = [p for p in pids if alive(p)]
    for pid in left:
        kill(pid, signal.SIGKILL)
    return left


def stop_by_env(name: str, value: str, grace: float = 5.0) -> None:
    """Stop every process started with ``name=value`` (repeated until none is left)."""
    for _ in range(5):
        pids = [p for p in with_env(name, value) if alive(p)]
        if not pids:
            return
        terminate(pids, grace)
