"""What the Home Assistant benchmarks measure, shared by them (``load``, ``hub_round``).

Event-loop lag as a task sleeping 1 ms in a loop sees it (``lag_probe``; each overshoot is time
the loop could not run a ready task, split by the kernel's account of the loop thread into
``Stall``s), the loop's longest callbacks and GIoT's own among them (``CallbackTimer``), the
cyclic collector's pauses (``GcPauses``), where the loop's thread was during a stall
(``StallWatch``), a bare asyncio process beside Home Assistant for the machine's own lag
(``start_reference``), and the memory and CPU time of Home Assistant's and the detector's
processes (``/proc``).
"""

import asyncio
import gc
import json
import os
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from custom_components.giot.coordinator import GIoTCoordinator
from giot_engine.detector_process import ProcessDetector

GC_MS = [0.0]  # cyclic-GC time so far (while a GcPauses is started), for the callback timer


def rss_mb(pid: int | str = "self") -> float:
    """A process's resident memory now (MB)."""
    return _status_mb(pid, "VmRSS:")


def _status_mb(pid: int | str, field: str) -> float:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return float("nan")
    for line in lines:
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return float("nan")


def detector_pid(coordinator: GIoTCoordinator) -> int | None:
    """The detector's process (None if GIoT fell back to detecting in Home Assistant's)."""
    detector = coordinator.detector
    return detector.pid if isinstance(detector, ProcessDetector) else None


def detector_rss_mb(coordinator: GIoTCoordinator) -> float:
    pid = detector_pid(coordinator)
    return rss_mb(pid) if pid is not None else 0.0


def detector_cpu_s(coordinator: GIoTCoordinator) -> float:
    """User + system CPU seconds the detector's process has used."""
    pid = detector_pid(coordinator)
    return cpu_s(pid) if pid is not None else 0.0


def cpu_s(pid: int | str = "self") -> float:
    """User + system CPU seconds a process has used (all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_mb(pid: int | str = "self") -> float:
    """The process's peak RSS (VmHWM) since it started or since ``reset_peak``."""
    return _status_mb(pid, "VmHWM:")


def reset_peak(pid: int | str = "self") -> bool:
    """Start the peak RSS afresh from the current RSS (Linux 4.0+); False where refused."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class GcPauses:
    """Time Python's cyclic collector: it stops every thread of the process, the loop's too."""

    def __init__(self) -> None:
        self.pauses: list[float] = []
        self.by_generation = [0, 0, 0]  # collections of each generation
        self.worst_by_generation = [0.0, 0.0, 0.0]
        self.cpu_worst = 0.0  # the collecting thread's CPU time: the collector's own cost
        self._cpu_started = 0.0
        self._started = 0.0

    def start(self) -> GcPauses:
        gc.callbacks.append(self._timer)
        return self

    def stop(self) -> None:
        gc.callbacks.remove(self._timer)

    def __enter__(self) -> GcPauses:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _timer(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            self._cpu_started = time.thread_time()
        else:
            self.cpu_worst = max(self.cpu_worst, (time.thread_time() - self._cpu_started) * 1000)
            pause = (time.perf_counter() - self._started) * 1000
            self.pauses.append(pause)
            generation = min(info["generation"], 2)
            self.by_generation[generation] += 1
            self.worst_by_generation[generation] = max(self.worst_by_generation[generation], pause)
            GC_MS[0] += pause

    @property
    def worst(self) -> float:
        return max(self.pauses, default=0.0)


def _outer(frame: Any, depth: int) -> list[Any]:
    frames: list[Any] = []
    while frame is not None and len(frames) < depth:
        frames.append(frame)
        frame = frame.f_back
    return frames


class StallWatch:
    """Sample the event loop thread's stack whenever it has not run for 4 ms.

    The loop beats every 1 ms; a watchdog thread looks every 0.5 ms. A stall whose stack sits in
    the selector (``select``/``epoll``) was spent waiting for the GIL or the CPU, not running
    code on the loop.
    """

    def __init__(self) -> None:
        self.beat = time.perf_counter()
        self.thread_id = threading.get_ident()
        self.stacks: dict[str, list[float]] = {}
        self.stage = "setup"
        self.stop = threading.Event()
        self.watcher = threading.Thread(target=self._watch, daemon=True)

    async def heartbeat(self) -> None:
        while not self.stop.is_set():
            self.beat = time.perf_counter()
            await asyncio.sleep(0.001)

    def _watch(self) -> None:
        sampled_beat = None
        last = time.perf_counter()
        while not self.stop.is_set():
            time.sleep(0.0005)
            now = time.perf_counter()
            if now - last > 0.004:  # this thread was held up too: every thread's position
                frames = sys._current_frames()
                stack = f"{self.stage}, the whole process held up:\n" + "".join(
                    f"  thread {ident}: "
                    + " <- ".join(
                        f"{f.f_code.co_filename.rsplit('/', 1)[-1]}:{f.f_lineno} {f.f_code.co_name}"
                        for f in _outer(frame, 4)
                    )
                    + "\n"
                    for ident, frame in frames.items()
                    if ident != threading.get_ident()
                )
                self.stacks.setdefault(stack, []).append((now - last) * 1000)
            last = now
            late = now - self.beat
            if late > 0.004 and sampled_beat != self.beat:
                sampled_beat = self.beat
                frame = sys._current_frames().get(self.thread_id)
                if frame is not None:
                    stack = self.stage + ":\n" + "".join(traceback.format_stack(frame, limit=-10))
                    self.stacks.setdefault(stack, []).append(late * 1000)

    def report(self) -> None:
        for stack, lates in sorted(self.stacks.items(), key=lambda kv: -max(kv[1])):
            print(f"--- {len(lates)} stalls, worst seen {max(lates):.1f} ms, in:\n{stack}")


class LoopThreadClock:
    """The kernel's account of the loop thread (``/proc/<pid>/task/<tid>/schedstat``).

    Splits a stall into time on a CPU (the loop running Python, ours or Home Assistant's), time
    runnable but waiting for a CPU (other processes or the hypervisor had it), and the rest:
    asleep although the timer was due, i.e. waiting for the GIL that another thread held.
    """

    def __init__(self) -> None:
        path = f"/proc/self/task/{threading.get_native_id()}/schedstat"
        self._fd = os.open(path, os.O_RDONLY) if os.path.exists(path) else None

    def read(self) -> tuple[int, int]:
        if self._fd is None:
            return 0, 0
        on_cpu, waiting, _slices = os.pread(self._fd, 128, 0).split()
        return int(on_cpu), int(waiting)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)


@dataclass
class Stall:
    """One probe sleep that overshot by more than 5 ms, and where its time went."""

    at: float  # time.monotonic() when it ended
    lag_ms: float
    on_cpu_ms: float
    waiting_for_cpu_ms: float

    @property
    def asleep_ms(self) -> float:
        """Neither on a CPU nor queued for one (the 1 ms asked for included): the GIL's wait."""
        return max(0.0, self.lag_ms + 1.0 - self.on_cpu_ms - self.waiting_for_cpu_ms)


async def lag_probe(
    samples: list[float], stop: asyncio.Event, stalls: list[Stall] | None = None
) -> None:
    """Sleep 1 ms in a loop; every overshoot is time the loop could not run a ready task."""
    loop = asyncio.get_running_loop()
    clock = LoopThreadClock()
    try:
        while not stop.is_set():
            cpu_before, wait_before = clock.read()
            before = loop.time()
            await asyncio.sleep(0.001)
            lag = (loop.time() - before - 0.001) * 1000
            samples.append(lag)
            if lag > 5.0 and stalls is not None:
                cpu_after, wait_after = clock.read()
                stalls.append(
                    Stall(
                        time.monotonic(),
                        lag,
                        (cpu_after - cpu_before) / 1e6,
                        (wait_after - wait_before) / 1e6,
                    )
                )
    finally:
        clock.close()


class CallbackTimer:
    """Time every callback the loop runs (wall and the loop thread's CPU time).

    A callback that runs long is the loop blocked in the plain sense; its CPU time says whether
    it was computing or was itself held up (preempted, or waiting for the GIL). ``split``: also
    read the kernel's account of the loop thread around every callback (``LoopThreadClock``), so
    that GIoT's callbacks are judged on the time they held the loop, leaving out the time the
    thread sat runnable waiting for a CPU that other processes had (``giot_held``).
    """

    def __init__(self, *, split: bool = False) -> None:
        self.worst: list[tuple[float, float, str]] = []  # wall ms, cpu ms, what
        self.over_5ms = 0
        self.count = 0
        # GIoT's own callbacks (their code is the integration's): the longest, and the longest
        # without the collector's pauses in them, both as (wall ms, cpu ms, gc ms, what)
        self.giot_worst = (0.0, 0.0, 0.0, "-")
        self.giot_worst_without_gc = (0.0, 0.0, 0.0, "-")
        # split: GIoT's callback that held the loop longest, wall less the collector's pauses
        # and less the wait for a CPU, as (held ms, wall ms, cpu ms, gc ms, waiting ms, what)
        self.giot_held = (0.0, 0.0, 0.0, 0.0, 0.0, "-")
        self._clock = LoopThreadClock() if split else None
        self._original = asyncio.events.Handle._run

    def start(self) -> CallbackTimer:
        original, timer, clock = self._original, self, self._clock

        def timed(handle: asyncio.Handle) -> None:
            callback = handle._callback  # type: ignore[attr-defined]  # gone once it has run
            gc_before = GC_MS[0]
            waited = clock.read()[1] if clock is not None else 0
            wall, cpu = time.perf_counter(), time.thread_time()
            original(handle)
            wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
            timer.count += 1
            if wall > 0.001:
                waiting = (clock.read()[1] - waited) / 1e6 if clock is not None else 0.0
                timer._note(wall * 1000, cpu * 1000, callback, GC_MS[0] - gc_before, waiting)

        asyncio.events.Handle._run = timed  # type: ignore[method-assign,assignment]
        return self

    def stop(self) -> None:
        asyncio.events.Handle._run = self._original  # type: ignore[method-assign]
        if self._clock is not None:
            self._clock.close()
            self._clock = None

    def _note(
        self, wall_ms: float, cpu_ms: float, callback: Any, gc_ms: float, waiting_ms: float = 0.0
    ) -> None:
        self.over_5ms += wall_ms > 5.0
        owner = getattr(callback, "__self__", None)
        if isinstance(owner, asyncio.Task):
            what = f"task {owner.get_coro().__qualname__}"  # type: ignore[union-attr]
        else:
            what = str(getattr(callback, "__qualname__", None) or repr(callback))[:80]
            if isinstance(getattr(owner, "key", None), str):  # e.g. which Store saves
                what += f" ({owner.key})"  # type: ignore[union-attr]
        if is_giot(callback):
            timing = (wall_ms, cpu_ms, gc_ms, what)
            self.giot_worst = max(self.giot_worst, timing)
            if wall_ms - gc_ms > self.giot_worst_without_gc[0] - self.giot_worst_without_gc[2]:
                self.giot_worst_without_gc = timing
            held = wall_ms - gc_ms - waiting_ms
            if held > self.giot_held[0]:
                self.giot_held = (held, wall_ms, cpu_ms, gc_ms, waiting_ms, what)
        if gc_ms > 0.05:
            what += f" (GC {gc_ms:.1f} ms of it)"
        self.worst.append((wall_ms, cpu_ms, what))
        self.worst.sort(reverse=True)
        del self.worst[5:]

    @property
    def worst_wall_ms(self) -> float:
        return self.worst[0][0] if self.worst else 0.0


def is_giot(callback: Any) -> bool:
    """Whether a loop callback runs the integration's code (a task of a GIoT coroutine too)."""
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        callback = owner.get_coro()
    while isinstance(callback, partial):
        callback = callback.func
    code = getattr(callback, "cr_code", None) or getattr(
        getattr(callback, "__func__", callback), "__code__", None
    )
    return code is not None and f"custom_components{os.sep}giot" in code.co_filename


# seconds <= 0: until its stdin closes (``reference_result`` closes it)
REFERENCE_CODE = """
import asyncio, json, os, sys, threading, time
def clock(fd):
    on_cpu, waiting, _ = os.pread(fd, 128, 0).split()
    return int(on_cpu) / 1e6, int(waiting) / 1e6
async def main(seconds):
    loop, stalls, worst, count = asyncio.get_running_loop(), [], 0.0, 0
    fd = os.open(f"/proc/self/task/{os.getpid()}/schedstat", os.O_RDONLY)
    end = time.monotonic() + seconds if seconds > 0 else float("inf")
    closed = threading.Event()
    if seconds <= 0:
        threading.Thread(target=lambda: (sys.stdin.read(), closed.set()), daemon=True).start()
    while time.monotonic() < end and not closed.is_set():
        cpu, waiting = clock(fd)
        before = loop.time()
        await asyncio.sleep(0.001)
        lag = (loop.time() - before - 0.001) * 1000
        count += 1
        worst = max(worst, lag)
        if lag > 2.0:
            cpu_after, waiting_after = clock(fd)
            stalls.append((time.monotonic(), lag, cpu_after - cpu, waiting_after - waiting))
    print(json.dumps({"worst": worst, "count": count, "stalls": stalls}))
asyncio.run(main(float(sys.argv[1])))
"""


def start_reference(seconds: float) -> subprocess.Popen[bytes]:
    """A bare asyncio process beside Home Assistant: the loop lag this machine has anyway.

    It sleeps 1 ms in a loop for ``seconds`` (0: until ``reference_result`` asks for its result).
    """
    return subprocess.Popen(
        [sys.executable, "-c", REFERENCE_CODE, str(seconds)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )


def reference_result(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    """Wait for the bare process's result (it ends now if it was started with 0 seconds)."""
    out, _ = proc.communicate()
    result: dict[str, Any] = json.loads(out)
    return result


def shared_with_reference(stalls: list[Stall], reference: dict[str, Any]) -> int:
    """How many of our stalls overlap one of the bare process's (over 2 ms) in time."""
    theirs = [(end - lag / 1000, end) for end, lag, _, _ in reference["stalls"]]
    return sum(
        any(start < stall.at and stall.at - stall.lag_ms / 1000 < end for start, end in theirs)
        for stall in stalls
    )


def full_collection() -> tuple[float, int, Counter[str]]:
    """How long a full collection takes now, over how many tracked objects (and their types)."""
    gc.collect()  # garbage first: the second one walks only what is alive
    start = time.perf_counter()
    gc.collect()
    took = (time.perf_counter() - start) * 1000
    tracked = gc.get_objects()
    kinds = Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in tracked)
    return took, len(tracked), kinds


def stall_split(stalls: list[Stall]) -> str:
    if not stalls:
        return "no sleep overshot 5 ms"
    total = sum(stall.lag_ms + 1.0 for stall in stalls)
    cpu = sum(stall.on_cpu_ms for stall in stalls)
    waiting = sum(stall.waiting_for_cpu_ms for stall in stalls)
    asleep = sum(stall.asleep_ms for stall in stalls)
    return (
        f"{len(stalls)} sleeps overshot 5 ms, their time {cpu / total:.0%} on a CPU,"
        f" {waiting / total:.0%} waiting for one, {asleep / total:.0%} asleep (GIL)"
    )


def reference_stalls(reference: dict[str, Any]) -> list[Stall]:
    return [Stall(*stall) for stall in reference["stalls"] if stall[1] > 5.0]


def write_report(path: Path, report: str) -> None:
    """Write the generated report; a hand-written part (from the first "## " on) stays."""
    old = path.read_text() if path.exists() else ""
    kept = old[old.index("\n## ") :] if "\n## " in old else ""
    path.write_text(report + kept)
