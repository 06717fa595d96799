"""Load benchmark of GIoT in a real Home Assistant (a pytest module, but not a test).

Run: ``.venv/bin/python -m pytest benchmarks/ha/load.py -p no:cacheprovider -s`` or
``scripts/bench ha-load``. Environment: ``GIOT_BENCH_SECONDS`` (per phase, default 20),
``GIOT_BENCH_EVENTS`` (state changes per second, default 1000), ``GIOT_BENCH_FLOWS`` (NetFlow v9
flows per second, default 2000), ``GIOT_BENCH_SENDER`` (``process``, the default: the NetFlow
exporter is a process of its own, as a router is; ``thread``: a thread in Home Assistant's process,
as in earlier runs), ``GIOT_BENCH_OUT`` (results file, default docs/results/ha_load.md; empty:
print only; a hand-written part of the file, from its first ``## `` heading on, is kept),
``GIOT_BENCH_STALLS`` (print where the event loop's thread was during each stall over 4 ms: a
watchdog thread samples its stack; for whoever hunts the remaining stalls).

A real hass with GIoT set up (NetFlow listener on a UDP port, 20 watched devices with one entity
each) gets, for each phase, state changes of the watched entities on the bus from the event loop
and NetFlow v9 datagrams (20 flows each, from 50 LAN hosts) sent over UDP. Phases: the bigram
scorer (a fresh install), the GIoT model scorer (a trained hub), and the GIoT scorer again under
tracemalloc (its overhead distorts the other numbers, hence a phase of its own; it traces Home
Assistant's process only). A task sleeping 1 ms in a loop measures event-loop lag (overshoot of
each sleep). GIoT's detector runs in a process of its own: memory is reported for both processes.
"""

import asyncio
import cProfile
import gc
import json
import os
import pickle
import platform
import pstats
import socket
import subprocess
import sys
import threading
import time
import traceback
import tracemalloc
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers import entity_registry as er
from homeassistant.helpers.event import async_track_state_change_event
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.giot.const import CONF_DEVICES, CONF_NETFLOW_PORT, DOMAIN
from custom_components.giot.coordinator import GIoTCoordinator
from giot_engine.detector_process import ProcessDetector
from giot_engine.records import FlowRecord
from tests.engine.netflow_packets import build_v9

pytestmark = pytest.mark.usefixtures("socket_enabled")

ROOT = Path(__file__).resolve().parents[2]
SECONDS = float(os.environ.get("GIOT_BENCH_SECONDS", "20"))
EVENTS_PER_S = int(os.environ.get("GIOT_BENCH_EVENTS", "1000"))
FLOWS_PER_S = int(os.environ.get("GIOT_BENCH_FLOWS", "2000"))
OUT = os.environ.get("GIOT_BENCH_OUT", str(ROOT / "docs" / "results" / "ha_load.md"))
SENDER = os.environ.get("GIOT_BENCH_SENDER", "process")
GC_MS = [0.0]  # cyclic-GC time so far (while a _GcPauses is started), for the callback timer
TICKS: list[float] = []  # how long each tick of state changes held the loop
PROFILE = bool(os.environ.get("GIOT_BENCH_PROFILE"))
STALLS = bool(os.environ.get("GIOT_BENCH_STALLS"))
DEVICES = 20
HOSTS = 50
FLOWS_PER_DATAGRAM = 20
TICK_S = 0.01
SERVICES = (
    (443, "tcp", 900, 5200),
    (53, "udp", 70, 140),
    (123, "udp", 76, 76),
    (80, "tcp", 400, 900),
)


@dataclass
class Phase:
    """What one phase measured."""

    name: str
    seconds: float
    events_sent: int
    flows_sent: int
    scored: int
    dropped: int
    backlog: int
    lag_max_ms: float
    lag_p99_ms: float
    lag_p999_ms: float
    lag_over_5ms: int
    lag_samples: int
    rss_before_mb: float
    rss_after_mb: float
    child_rss_before_mb: float
    child_rss_after_mb: float
    child_cpu_s: float
    traced_peak_mb: float | None
    gc_worst_ms: float = 0.0  # longest cyclic-GC pause (any thread: it holds the GIL)
    gc_over_5ms: int = 0
    gc_collections: tuple[int, ...] = (0, 0, 0)  # of generations 0, 1, 2
    gc_worst_by_generation: tuple[float, ...] = (0.0, 0.0, 0.0)
    gc_cpu_worst_ms: float = 0.0
    callbacks: _CallbackTimer | None = None
    stalls: list[Stall] | None = None
    reference: dict[str, Any] | None = None  # the bare asyncio process's lag, same seconds


def _rss_mb(pid: int | str = "self") -> float:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return float("nan")
    for line in lines:
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _child(coordinator: GIoTCoordinator) -> int | None:
    """The detector's process (None if GIoT fell back to detecting in Home Assistant's)."""
    detector = coordinator.detector
    return detector.pid if isinstance(detector, ProcessDetector) else None


def _child_rss_mb(coordinator: GIoTCoordinator) -> float:
    pid = _child(coordinator)
    return _rss_mb(pid) if pid is not None else 0.0


def _child_cpu_s(coordinator: GIoTCoordinator) -> float:
    """User + system CPU seconds the detector's process has used."""
    if (pid := _child(coordinator)) is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _datagrams(start: int, seconds: float, rng: np.random.Generator) -> list[bytes]:
    """v9 datagrams for ``seconds`` of FLOWS_PER_S flows, exported 100 per second."""
    per_s = max(1, FLOWS_PER_S // FLOWS_PER_DATAGRAM)
    out = []
    for k in range(int(seconds * per_s)):
        unix_secs = start + k // per_s
        flows = []
        for _ in range(FLOWS_PER_DATAGRAM):
            host = int(rng.integers(HOSTS))
            port, proto, up, down = SERVICES[int(rng.integers(len(SERVICES)))]
            flows.append(
                FlowRecord(
                    ts=unix_secs - float(rng.integers(0, 2000)) / 1000,
                    orig_h=f"192.168.1.{100 + host}",
                    orig_p=int(rng.integers(32768, 60999)),
                    resp_h=f"93.184.{216 + host % 8}.{34 + port % 7}",
                    resp_p=port,
                    proto=proto,
                    duration=float(rng.integers(1, 2000)) / 1000,
                    orig_bytes=int(up * rng.uniform(0.8, 1.2)),
                    resp_bytes=int(down * rng.uniform(0.8, 1.2)),
                    orig_pkts=int(rng.integers(1, 12)),
                    resp_pkts=int(rng.integers(1, 12)),
                    tcp_flags=0x1B if proto == "tcp" else None,
                )
            )
        out.append(build_v9(flows, unix_secs=unix_secs, sequence=k))
    return out


# The exporter as a process of its own: reads the datagrams (a pickle) on stdin, says "ready",
# waits for a line, then sends them on an absolute schedule.
SENDER_CODE = """
import pickle, socket, sys, time
port, interval = int(sys.argv[1]), float(sys.argv[2])
datagrams = pickle.load(sys.stdin.buffer)
print("ready", flush=True)
sys.stdin.buffer.readline()
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
    start = time.monotonic()
    for i, data in enumerate(datagrams):
        delay = start + i * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sock.sendto(data, ("127.0.0.1", port))
"""


def _start_sender(port: int, datagrams: list[bytes]) -> subprocess.Popen[bytes]:
    """Start the exporter process and hand it the datagrams; it sends once told to."""
    interval = FLOWS_PER_DATAGRAM / FLOWS_PER_S
    proc = subprocess.Popen(
        [sys.executable, "-c", SENDER_CODE, str(port), str(interval)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    proc.stdin.write(pickle.dumps(datagrams))
    proc.stdin.flush()
    assert proc.stdout.readline() == b"ready\n"
    return proc


class _CycleGarbage:
    """``GIOT_BENCH_GARBAGE=1``: keep what the cyclic collector frees in a phase; print its types.

    This is how the collections were traced to Home Assistant's ``Event``/``Context`` cycles.
    """

    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("GIOT_BENCH_GARBAGE"))

    def start(self) -> _CycleGarbage:
        if self.enabled:
            gc.set_debug(gc.DEBUG_SAVEALL)
        return self

    def report(self, phase: str) -> None:
        if not self.enabled:
            return
        gc.collect()
        gc.set_debug(0)
        kinds = Counter(type(o).__qualname__ for o in gc.garbage)
        print(f"{phase}: cyclic garbage {len(gc.garbage):,} objects", kinds.most_common(12))
        gc.garbage.clear()


class _GcPauses:
    """Time Python's cyclic collector: it stops every thread of the process, the loop's too."""

    def __init__(self) -> None:
        self.pauses: list[float] = []
        self.by_generation = [0, 0, 0]  # collections of each generation
        self.worst_by_generation = [0.0, 0.0, 0.0]
        self.cpu_worst = 0.0  # the collecting thread's CPU time: the collector's own cost
        self._cpu_started = 0.0
        self._started = 0.0

    def start(self) -> _GcPauses:
        gc.callbacks.append(self._timer)
        return self

    def stop(self) -> None:
        gc.callbacks.remove(self._timer)

    def __enter__(self) -> _GcPauses:
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
    frames = []
    while frame is not None and len(frames) < depth:
        frames.append(frame)
        frame = frame.f_back
    return frames


class _StallWatch:
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


def _stop_sender(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait()
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            pipe.close()


def _send(port: int, datagrams: list[bytes], stop: threading.Event) -> None:
    """Sender thread: one datagram every 1/rate s on an absolute schedule (the router's side)."""
    interval = FLOWS_PER_DATAGRAM / FLOWS_PER_S
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        start = time.monotonic()
        for i, data in enumerate(datagrams):
            if stop.is_set():
                return
            delay = start + i * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            sock.sendto(data, ("127.0.0.1", port))


class _LoopThreadClock:
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


async def _probe(
    samples: list[float], stop: asyncio.Event, stalls: list[Stall] | None = None
) -> None:
    """Sleep 1 ms in a loop; every overshoot is time the loop could not run a ready task."""
    loop = asyncio.get_running_loop()
    clock = _LoopThreadClock()
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


class _CallbackTimer:
    """Time every callback the loop runs (wall and the loop thread's CPU time).

    A callback that runs long is the loop blocked in the plain sense; its CPU time says whether
    it was computing or was itself held up (preempted, or waiting for the GIL).
    """

    def __init__(self) -> None:
        self.worst: list[tuple[float, float, str]] = []  # wall ms, cpu ms, what
        self.over_5ms = 0
        self.count = 0
        # GIoT's own callbacks (their code is the integration's): the longest, and the longest
        # without the collector's pauses in them, both as (wall ms, cpu ms, gc ms, what)
        self.giot_worst = (0.0, 0.0, 0.0, "-")
        self.giot_worst_without_gc = (0.0, 0.0, 0.0, "-")
        self._original = asyncio.events.Handle._run

    def start(self) -> _CallbackTimer:
        original, timer = self._original, self

        def timed(handle: asyncio.Handle) -> None:
            callback = handle._callback  # type: ignore[attr-defined]  # gone once it has run
            gc_before = GC_MS[0]
            wall, cpu = time.perf_counter(), time.thread_time()
            original(handle)
            wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
            timer.count += 1
            if wall > 0.001:
                timer._note(wall * 1000, cpu * 1000, callback, GC_MS[0] - gc_before)

        asyncio.events.Handle._run = timed  # type: ignore[method-assign]
        return self

    def stop(self) -> None:
        asyncio.events.Handle._run = self._original  # type: ignore[method-assign]

    def _note(self, wall_ms: float, cpu_ms: float, callback: Any, gc_ms: float) -> None:
        self.over_5ms += wall_ms > 5.0
        owner = getattr(callback, "__self__", None)
        if isinstance(owner, asyncio.Task):
            what = f"task {owner.get_coro().__qualname__}"  # type: ignore[union-attr]
        else:
            what = str(getattr(callback, "__qualname__", None) or repr(callback))[:80]
            if isinstance(getattr(owner, "key", None), str):  # e.g. which Store saves
                what += f" ({owner.key})"  # type: ignore[union-attr]
        if _is_giot(callback):
            timing = (wall_ms, cpu_ms, gc_ms, what)
            self.giot_worst = max(self.giot_worst, timing)
            if wall_ms - gc_ms > self.giot_worst_without_gc[0] - self.giot_worst_without_gc[2]:
                self.giot_worst_without_gc = timing
        if gc_ms > 0.05:
            what += f" (GC {gc_ms:.1f} ms of it)"
        self.worst.append((wall_ms, cpu_ms, what))
        self.worst.sort(reverse=True)
        del self.worst[5:]

    @property
    def worst_wall_ms(self) -> float:
        return self.worst[0][0] if self.worst else 0.0


def _is_giot(callback: Any) -> bool:
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


REFERENCE_CODE = """
import asyncio, json, os, sys, time
def clock(fd):
    on_cpu, waiting, _ = os.pread(fd, 128, 0).split()
    return int(on_cpu) / 1e6, int(waiting) / 1e6
async def main(seconds):
    loop, stalls, worst, count = asyncio.get_running_loop(), [], 0.0, 0
    fd = os.open(f"/proc/self/task/{os.getpid()}/schedstat", os.O_RDONLY)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
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


def _start_reference(seconds: float) -> subprocess.Popen[bytes]:
    """A bare asyncio process beside Home Assistant: the loop lag this machine has anyway."""
    return subprocess.Popen(
        [sys.executable, "-c", REFERENCE_CODE, str(seconds)], stdout=subprocess.PIPE
    )


def _reference_result(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    out, _ = proc.communicate()
    result: dict[str, Any] = json.loads(out)
    return result


def _shared_with_reference(stalls: list[Stall], reference: dict[str, Any]) -> int:
    """How many of our stalls overlap one of the bare process's (over 2 ms) in time."""
    theirs = [(end - lag / 1000, end) for end, lag, _, _ in reference["stalls"]]
    return sum(
        any(start < stall.at and stall.at - stall.lag_ms / 1000 < end for start, end in theirs)
        for stall in stalls
    )


async def _states(hass: HomeAssistant, entities: list[str], stop: asyncio.Event) -> int:
    """Set watched entities' states at EVENTS_PER_S from the event loop; return how many."""
    loop = asyncio.get_running_loop()
    per_tick = max(1, round(EVENTS_PER_S * TICK_S))
    start, sent, tick = loop.time(), 0, 0
    while not stop.is_set():
        tick_start = time.perf_counter()
        for _ in range(per_tick):
            entity = entities[sent % len(entities)]
            hass.states.async_set(entity, "on" if (sent // len(entities)) % 2 else "off")
            sent += 1
        TICKS.append(time.perf_counter() - tick_start)
        tick += 1
        await asyncio.sleep(max(0.0, start + tick * TICK_S - loop.time()))
    return sent


def _time_slices(
    hass: HomeAssistant, coordinator: GIoTCoordinator
) -> dict[str, tuple[int, float, float]]:
    """Wrap the loop-side steps of GIoT (and the load's own) to find what holds the loop."""
    found: dict[str, tuple[int, float, float]] = {}

    def wrap(owner: Any, name: str, label: str) -> None:
        inner = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                took = time.perf_counter() - start
                count, total, worst = found.get(label, (0, 0.0, 0.0))
                found[label] = (count + 1, total + took, max(worst, took))

        setattr(owner, name, timed)

    wrap(coordinator, "_apply", "coordinator._apply")
    wrap(coordinator, "async_set_updated_data", "coordinator.async_set_updated_data")
    wrap(coordinator.ingest, "async_add_flows", "ingest.async_add_flows")
    wrap(coordinator.ingest, "async_add_event", "ingest.async_add_event")
    wrap(coordinator.devices, "attribute", "devices.attribute (one flow)")
    wrap(coordinator.hub_store, "_snapshot", "hub_store._snapshot")
    wrap(coordinator.windows, "add", "windows.add")
    wrap(coordinator.state_collector, "_async_state_changed", "state_collector (one change)")
    wrap(json, "dumps", "json.dumps")
    return found


def _scored(coordinator: GIoTCoordinator) -> int:
    return sum(state.observations for state in coordinator.devices.values())


async def _phase(
    hass: HomeAssistant,
    coordinator: GIoTCoordinator,
    name: str,
    entities: list[str],
    seconds: float,
    *,
    trace: bool = False,
) -> Phase:
    port = coordinator.netflow.bound_port if coordinator.netflow else None
    assert port is not None
    datagrams = await hass.async_add_executor_job(
        _datagrams, int(time.time()), seconds, np.random.default_rng(len(name))
    )
    await hass.async_block_till_done()
    rss_before = _rss_mb()
    child_rss_before, child_cpu_before = _child_rss_mb(coordinator), _child_cpu_s(coordinator)
    exporter = (
        await hass.async_add_executor_job(_start_sender, port, datagrams)
        if SENDER == "process"
        else None
    )
    if trace:
        tracemalloc.start()
    stop_threads, stop = threading.Event(), asyncio.Event()
    samples: list[float] = []
    stalls: list[Stall] = []
    flows_before = coordinator.netflow.stats.flows if coordinator.netflow else 0
    scored_before, dropped_before = _scored(coordinator), coordinator.ingest.dropped
    sender = threading.Thread(target=_send, args=(port, datagrams, stop_threads), daemon=True)
    probe = asyncio.create_task(_probe(samples, stop, stalls))
    states = asyncio.create_task(_states(hass, entities, stop))
    gc_pauses = _GcPauses().start()
    callbacks = _CallbackTimer().start()
    reference = _start_reference(seconds)
    profile = cProfile.Profile() if PROFILE and not trace else None
    if profile is not None:  # the event loop's thread only: what runs on the loop
        profile.enable()
    t0 = time.monotonic()
    garbage = _CycleGarbage().start()
    if exporter is not None:
        assert exporter.stdin is not None
        exporter.stdin.write(b"go\n")
        exporter.stdin.flush()
    else:
        sender.start()
    await asyncio.sleep(seconds)
    if profile is not None:
        profile.disable()
        pstats.Stats(profile).sort_stats("cumulative").print_stats(40)
    stop.set()
    stop_threads.set()
    events_sent = await states
    await probe
    elapsed = time.monotonic() - t0
    garbage.report(name)
    callbacks.stop()
    scored = _scored(coordinator) - scored_before
    # What is still queued is the backlog; drop it so the next phase starts level.
    ingest = coordinator.ingest
    queues = (ingest._raw_flows, ingest._pending_flows, ingest._pending_events)
    backlog = sum(len(queue) for queue in queues)
    for queue in queues:
        queue.clear()
    if exporter is not None:
        await hass.async_add_executor_job(_stop_sender, exporter)
    else:
        await hass.async_add_executor_job(sender.join)
    traced = None
    if trace:
        traced = tracemalloc.get_traced_memory()[1] / 2**20
        if os.environ.get("GIOT_BENCH_TOP"):  # where the memory is, for whoever tunes this
            for stat in tracemalloc.take_snapshot().statistics("lineno")[:15]:
                print(stat)
        tracemalloc.stop()
    gc_pauses.stop()
    pauses = gc_pauses.pauses
    reference_lag = await hass.async_add_executor_job(_reference_result, reference)
    rss_after = _rss_mb()
    child_rss_after, child_cpu = _child_rss_mb(coordinator), _child_cpu_s(coordinator)
    flows_sent = (coordinator.netflow.stats.flows if coordinator.netflow else 0) - flows_before
    await hass.async_block_till_done()
    ordered = sorted(samples)
    return Phase(
        name=name,
        seconds=elapsed,
        events_sent=events_sent,
        flows_sent=flows_sent,
        scored=scored,
        dropped=coordinator.ingest.dropped - dropped_before,
        backlog=backlog,
        lag_max_ms=ordered[-1],
        lag_p99_ms=ordered[int(0.99 * (len(ordered) - 1))],
        lag_p999_ms=ordered[int(0.999 * (len(ordered) - 1))],
        lag_over_5ms=sum(1 for s in samples if s > 5.0),
        lag_samples=len(samples),
        rss_before_mb=rss_before,
        rss_after_mb=rss_after,
        child_rss_before_mb=child_rss_before,
        child_rss_after_mb=child_rss_after,
        child_cpu_s=child_cpu - child_cpu_before,
        traced_peak_mb=traced,
        gc_worst_ms=max(pauses, default=0.0),
        gc_over_5ms=sum(1 for p in pauses if p > 5.0),
        gc_collections=tuple(gc_pauses.by_generation),
        gc_worst_by_generation=tuple(gc_pauses.worst_by_generation),
        gc_cpu_worst_ms=gc_pauses.cpu_worst,
        callbacks=callbacks,
        stalls=stalls,
        reference=reference_lag,
    )


async def _baseline(
    hass: HomeAssistant, entities: list[str], seconds: float, *, listened: bool
) -> str:
    """The same state changes before GIoT is set up: the loop lag Home Assistant has anyway.

    ``listened``: with a state-change listener on the entities that does nothing, as the
    recorder (default_config), an automation or GIoT has. Home Assistant builds the ``Event``
    only for a listener, and every one it builds is a reference cycle with its ``Context``
    (``origin_event``): garbage that only Python's cyclic collector frees.
    """
    samples: list[float] = []
    stalls: list[Stall] = []
    unsub = (
        async_track_state_change_event(hass, entities, callback(lambda event: None))
        if listened
        else None
    )
    reference = _start_reference(seconds)
    callbacks = _CallbackTimer().start()
    with _GcPauses() as pauses:
        stop = asyncio.Event()
        probe = asyncio.create_task(_probe(samples, stop, stalls))
        states = asyncio.create_task(_states(hass, entities, stop))
        await asyncio.sleep(seconds)
        stop.set()
        sent = await states
        await probe
    callbacks.stop()
    if unsub is not None:
        unsub()
    bare = await hass.async_add_executor_job(_reference_result, reference)
    ordered = sorted(samples)
    worst = callbacks.worst[0] if callbacks.worst else (0.0, 0.0, "-")
    return (
        f"- Home Assistant alone (GIoT not set up yet), {sent:,} state changes in {seconds:.0f} s,"
        + (" with a state-change listener that does nothing:" if listened else " nobody listening:")
        + f" loop lag max {ordered[-1]:.1f} ms, p99 {ordered[int(0.99 * (len(ordered) - 1))]:.2f}"
        f" ms, {sum(1 for x in samples if x > 5.0)} of {len(samples):,} sleeps > 5 ms"
        f" ({_stall_split(stalls)}); longest callback {worst[0]:.1f} / {worst[1]:.1f} ms CPU"
        f" {worst[2]}; GC collections of generation 0/1/2"
        f" {'/'.join(map(str, pauses.by_generation))}, longest pause {pauses.worst:.1f} ms;"
        f" the bare asyncio process beside it: max {bare['worst']:.1f} ms.\n"
    )


async def test_ha_load(hass: HomeAssistant) -> None:
    """Sustain the load for each phase and write the results."""
    rss_start = _rss_mb()
    # The test harness runs the loop in asyncio debug mode (a stack captured for every handle
    # and future, several times the loop's cost); Home Assistant in production does not.
    asyncio.get_running_loop().set_debug(False)
    if os.environ.get("GIOT_BENCH_SWITCH_MS"):  # diagnosis: how much of the lag is the GIL
        sys.setswitchinterval(float(os.environ["GIOT_BENCH_SWITCH_MS"]) / 1000)
    if os.environ.get("GIOT_BENCH_SLOW_MS"):
        asyncio.get_running_loop().slow_callback_duration = (
            float(os.environ["GIOT_BENCH_SLOW_MS"]) / 1000
        )
    watch = _StallWatch() if STALLS else None
    beat = None
    if watch is not None:
        watch.watcher.start()
        beat = asyncio.create_task(watch.heartbeat())
    owner = MockConfigEntry(domain="bench_vendor")
    owner.add_to_hass(hass)
    dev_reg, ent_reg = dr.async_get(hass), er.async_get(hass)
    devices, entities = [], []
    for i in range(DEVICES):
        device = dev_reg.async_get_or_create(
            config_entry_id=owner.entry_id, identifiers={("bench_vendor", f"d{i}")}, name=f"D{i}"
        )
        entity = ent_reg.async_get_or_create(
            "binary_sensor",
            "bench_vendor",
            f"d{i}-motion",
            config_entry=owner,
            device_id=device.id,
            suggested_object_id=f"d{i}_motion",
            original_device_class="motion",
        )
        hass.states.async_set(entity.entity_id, "off")
        devices.append(device.id)
        entities.append(entity.entity_id)
    baseline = await _baseline(hass, entities, min(SECONDS, 10.0), listened=False)
    baseline += await _baseline(hass, entities, min(SECONDS, 10.0), listened=True)
    full_before = _full_collection()
    port = _free_udp_port()
    entry = MockConfigEntry(
        domain=DOMAIN, data={}, options={CONF_DEVICES: devices, CONF_NETFLOW_PORT: port}
    )
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    coordinator: GIoTCoordinator = entry.runtime_data.coordinator
    assert isinstance(coordinator.detector, ProcessDetector)
    rss_setup = _rss_mb()
    child_setup = _child_rss_mb(coordinator)
    slices = _time_slices(hass, coordinator) if os.environ.get("GIOT_BENCH_SLICES") else None

    # Warm-up: every host and device seen (entities created), windows stored.
    await _phase(hass, coordinator, "warm-up", entities, 3.0)
    await hass.async_block_till_done()
    if watch is not None:
        watch.stage = "bigram phase"
    phases = [await _phase(hass, coordinator, "bigram scorer", entities, SECONDS)]
    if watch is not None:
        watch.stage = "training"

    train_lag: list[float] = []
    train_stalls: list[Stall] = []
    stop_probe = asyncio.Event()
    probe = asyncio.create_task(_probe(train_lag, stop_probe, train_stalls))
    t_train = time.monotonic()
    train_callbacks = _CallbackTimer().start()
    train_reference = _start_reference(15.0)  # about as long as training takes here
    with _GcPauses() as train_gc:
        result = await coordinator.training.async_train()
        train_wall = time.monotonic() - t_train
        stop_probe.set()
        await probe
    train_callbacks.stop()
    train_reference_lag = await hass.async_add_executor_job(_reference_result, train_reference)
    train_lag.sort()
    print("longest callbacks while training:", train_callbacks.worst)
    # A hub whose model has learnt scores with GIoT (the model beats the bigram counts here).
    scorer = "GIoT" if coordinator.detector.model_info["scorer"] == "giot" else "bigram (again)"
    if watch is not None:
        watch.stage = "second phase"
    phases.append(await _phase(hass, coordinator, f"{scorer} scorer", entities, SECONDS))
    phases.append(
        await _phase(hass, coordinator, f"{scorer} scorer, tracemalloc", entities, 5.0, trace=True)
    )
    rss_end = _rss_mb()
    full_after = _full_collection()
    if os.environ.get("GIOT_BENCH_GARBAGE"):
        print("tracked objects added:", (full_after[2] - full_before[2]).most_common(25))
    if watch is not None and beat is not None:
        watch.stop.set()
        await beat
        watch.report()
    if slices is not None:
        for name, (count, total, worst) in sorted(slices.items(), key=lambda kv: -kv[1][2]):
            print(
                f"{name}: {count} calls, {total * 1000:.0f} ms in all, worst {worst * 1000:.1f} ms"
            )
        print(
            f"state-change ticks: worst {max(TICKS) * 1000:.1f} ms,"
            f" mean {np.mean(TICKS) * 1000:.2f} ms"
        )
    report = _report(
        phases, (rss_start, rss_setup, rss_end, child_setup), result, train_wall, coordinator
    )
    report += baseline
    report += (
        f"- A full collection (``gc.collect()``, what the collector's oldest generation costs"
        f" when it runs): {full_before[0]:.1f} ms over {full_before[1]:,} tracked objects before"
        f" GIoT was set up, {full_after[0]:.1f} ms over {full_after[1]:,} after the phases (the"
        " test harness freezes the objects of Home Assistant's start, which a full collection"
        " then skips).\n"
    )
    report += (
        f"- Event-loop lag while training (no other load): max {train_lag[-1]:.1f} ms,"
        f" p99 {train_lag[int(0.99 * (len(train_lag) - 1))]:.2f} ms; longest GC pause"
        f" {train_gc.worst:.1f} ms; longest loop callback {train_callbacks.worst_wall_ms:.1f} ms;"
        f" {_stall_split(train_stalls)}; the bare asyncio process beside it (15 s):"
        f" max {train_reference_lag['worst']:.1f} ms,"
        f" {_stall_split(_reference_stalls(train_reference_lag))}.\n"
    )
    report += _loop_section(phases)
    print(report)
    if OUT:
        await hass.async_add_executor_job(_write, Path(OUT), report)


def _full_collection() -> tuple[float, int, Counter[str]]:
    """How long a full collection takes now, over how many tracked objects (and their types)."""
    gc.collect()  # garbage first: the second one walks only what is alive
    start = time.perf_counter()
    gc.collect()
    took = (time.perf_counter() - start) * 1000
    tracked = gc.get_objects()
    kinds = Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in tracked)
    return took, len(tracked), kinds


def _stall_split(stalls: list[Stall]) -> str:
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


def _reference_stalls(reference: dict[str, Any]) -> list[Stall]:
    return [Stall(*stall) for stall in reference["stalls"] if stall[1] > 5.0]


def _giot_timing(timing: tuple[float, float, float, str]) -> str:
    wall, cpu, gc_ms, what = timing
    return f"{wall:.1f} / {cpu:.1f} / {gc_ms:.1f} {what}"


def _loop_section(phases: list[Phase]) -> str:
    """Where the loop's worst moments went: long callbacks, and each long sleep's time split."""
    lines = [
        "",
        "Event loop, phase by phase: the longest callbacks the loop ran (wall / the loop thread's"
        " CPU ms), GIoT's own (callbacks whose code is the integration's; GC: the collector's"
        " pauses inside the callback), and where the time of each sleep that overshot 5 ms"
        " went (the kernel's account of the loop thread); beside it, a bare asyncio process"
        " (no Home Assistant)"
        " sleeping 1 ms in a loop over the same seconds.",
        "",
        "| phase | callbacks run | over 5 ms | longest callbacks (wall / CPU ms) |"
        " GIoT's longest callback (wall / CPU / GC in it, ms) | GIoT's longest, GC left out |"
        " sleeps > 5 ms: where their time went | bare process: max lag ms, sleeps > 5 ms |"
        " our sleeps > 5 ms during a stall of the bare process |",
        "|---|---:|---:|---|---|---|---|---|---:|",
    ]
    for p in phases:
        if p.callbacks is None or p.stalls is None or p.reference is None:
            continue
        worst = "; ".join(f"{w:.1f} / {c:.1f} {what}" for w, c, what in p.callbacks.worst[:3])
        ref = p.reference
        ref_over = sum(1 for _, lag, _, _ in ref["stalls"] if lag > 5.0)
        lines.append(
            f"| {p.name} | {p.callbacks.count:,} | {p.callbacks.over_5ms} | {worst or '-'} |"
            f" {_giot_timing(p.callbacks.giot_worst)} |"
            f" {_giot_timing(p.callbacks.giot_worst_without_gc)} |"
            f" {_stall_split(p.stalls)} | {ref['worst']:.1f}, {ref_over} of {ref['count']:,}"
            f" ({_stall_split(_reference_stalls(ref))}) |"
            f" {_shared_with_reference(p.stalls, ref)} of {len(p.stalls)} |"
        )
    return "\n".join(lines) + "\n"


def _write(path: Path, report: str) -> None:
    """Write the generated report; a hand-written part (from the first "## " on) stays."""
    old = path.read_text() if path.exists() else ""
    kept = old[old.index("\n## ") :] if "\n## " in old else ""
    path.write_text(report + kept)


def _report(
    phases: list[Phase],
    rss: tuple[float, float, float, float],
    result: Any,
    train_wall: float,
    coordinator: GIoTCoordinator,
) -> str:
    rss_start, rss_setup, rss_end, child_setup = rss
    info = coordinator.detector.model_info
    lines = [
        "# GIoT under load in a real Home Assistant",
        "",
        "- Command: `.venv/bin/python -m pytest benchmarks/ha/load.py -p no:cacheprovider -s`"
        " (or `scripts/bench ha-load`)",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs"
        f" (shared), Python {platform.python_version()}, numpy {np.__version__};"
        f" 1-min load average {os.getloadavg()[0]:.1f} at the end",
        f"- Load per phase: {EVENTS_PER_S:,} state changes/s of {DEVICES} watched entities"
        f" (event loop), {FLOWS_PER_S:,} flows/s as NetFlow v9 over UDP"
        f" ({FLOWS_PER_DATAGRAM} flows per datagram, {HOSTS} LAN hosts, sent by "
        + (
            "a process of its own, as by a router)"
            if SENDER == "process"
            else "a thread in Home Assistant's process)"
        ),
        "- GIoT's detector (scoring and training) runs in a process of its own (nice +5, its"
        " training thread at idle priority);"
        " Home Assistant's process keeps the queues, attribution, entities and window store",
        f"- Model: {info['parameters']:,} parameters"
        f" (width {info['config']['n_embd']}, {info['config']['n_layer']} layers,"
        f" {info['config']['n_head']} heads, {info['config']['n_positions']} positions)",
        "",
        "| phase | s | events sent | flows decoded | scored/s | dropped | backlog at end |"
        " loop lag max ms | p99 ms | p99.9 ms | sleeps > 5 ms | HA RSS before → after MB |"
        " detector RSS before → after MB | detector CPU s | tracemalloc peak MB (HA) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in phases:
        lines.append(
            f"| {p.name} | {p.seconds:.1f} | {p.events_sent:,} | {p.flows_sent:,} |"
            f" {p.scored / p.seconds:,.0f} | {p.dropped:,} | {p.backlog:,} |"
            f" {p.lag_max_ms:.1f} | {p.lag_p99_ms:.2f} | {p.lag_p999_ms:.2f} |"
            f" {p.lag_over_5ms} of {p.lag_samples:,} |"
            f" {p.rss_before_mb:.0f} → {p.rss_after_mb:.0f} |"
            f" {p.child_rss_before_mb:.0f} → {p.child_rss_after_mb:.0f} |"
            f" {p.child_cpu_s:.1f} |"
            f" {'' if p.traced_peak_mb is None else f'{p.traced_peak_mb:.1f}'} |"
        )
    lines += [
        "",
    ]
    worst = max(p.lag_max_ms for p in phases if p.traced_peak_mb is None)
    giot = max(
        p.callbacks.giot_worst_without_gc[0] - p.callbacks.giot_worst_without_gc[2]
        for p in phases
        if p.traced_peak_mb is None and p.callbacks is not None
    )
    # tracemalloc keeps a traceback per live allocation: its own memory is not GIoT's, so the
    # target is judged on the phases without it (the end value is reported beside it)
    untraced = max(p.rss_after_mb for p in phases if p.traced_peak_mb is None)
    child = max(p.child_rss_after_mb for p in phases)
    added_ha = untraced - rss_start
    added = added_ha + child
    lines += [
        f"- RSS of Home Assistant's process: {rss_start:.0f} MB before GIoT was set up,"
        f" {rss_setup:.0f} MB after setup, {untraced:.0f} MB at most after the phases without"
        f" tracemalloc ({added_ha:.0f} MB added); {rss_end:.0f} MB at the end, after the"
        " tracemalloc phase (its bookkeeping included).",
        f"- RSS of GIoT's detector process: {child_setup:.0f} MB after setup, {child:.0f} MB at"
        f" most after a phase. **Memory added, both processes: {added_ha:.0f} + {child:.0f} ="
        f" {added:.0f} MB.**",
    ]
    lines += [
        f"- Target: event loop never blocked > 5 ms, as loop lag (any cause):"
        f" **{'met' if worst <= 5 else 'missed'}** (worst sleep overshoot {worst:.1f} ms"
        " without tracemalloc; where the time went: the event-loop table below).",
        f"- Event loop blocked by GIoT's code: **{'met' if giot <= 5 else 'missed'}** (its longest"
        f" callback {giot:.1f} ms wall leaving out the collector's pauses in it, which Home"
        " Assistant's event cycles cause; with them: the table below).",
        f"- Target: memory added <= 150 MB: **{'met' if added <= 150 else 'missed'}**"
        f" ({added:.0f} MB RSS, Home Assistant's process and the detector's together).",
        f"- Target: all offered records scored: {sum(p.scored for p in phases[:2]):,} of"
        f" {sum(p.events_sent + p.flows_sent for p in phases[:2]):,} offered in the first two"
        " phases (the rest was backlog when the phase ended).",
        "- Python's cyclic garbage collector (it stops every thread): longest pause per phase "
        + ", ".join(
            f"{p.name} {p.gc_worst_ms:.1f} ms ({p.gc_over_5ms} over 5 ms; collections of"
            f" generation 0/1/2: {'/'.join(map(str, p.gc_collections))}, longest"
            f" {'/'.join(f'{w:.1f}' for w in p.gc_worst_by_generation)} ms; longest in CPU time"
            f" {p.gc_cpu_worst_ms:.1f} ms)"
            for p in phases
        )
        + ". The collections are Home Assistant's: every state change a listener receives"
        " leaves an Event/Context reference cycle (see the two lines of Home Assistant alone).",
    ]
    if result is not None:
        lines.append(
            f"- Local training between the phases (train_now on {result.windows:,} stored windows):"
            f" {result.steps} steps in {result.seconds:.1f} s ({train_wall:.1f} s wall),"
            f" loss {result.loss_before:.2f} → {result.loss_after:.2f} nats/token"
            f" (bigram {result.bigram_loss:.2f})."
        )
    return "\n".join(lines) + "\n"
