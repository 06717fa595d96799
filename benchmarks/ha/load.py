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
import tracemalloc
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers import entity_registry as er
from homeassistant.helpers.event import async_track_state_change_event
from pytest_homeassistant_custom_component.common import MockConfigEntry

from benchmarks.ha._measure import (
    CallbackTimer,
    GcPauses,
    Stall,
    StallWatch,
    detector_cpu_s,
    detector_rss_mb,
    full_collection,
    lag_probe,
    reference_result,
    reference_stalls,
    rss_mb,
    shared_with_reference,
    stall_split,
    start_reference,
    write_report,
)
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
    callbacks: CallbackTimer | None = None
    stalls: list[Stall] | None = None
    reference: dict[str, Any] | None = None  # the bare asyncio process's lag, same seconds


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
    rss_before = rss_mb()
    child_rss_before, child_cpu_before = detector_rss_mb(coordinator), detector_cpu_s(coordinator)
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
    probe = asyncio.create_task(lag_probe(samples, stop, stalls))
    states = asyncio.create_task(_states(hass, entities, stop))
    gc_pauses = GcPauses().start()
    callbacks = CallbackTimer().start()
    reference = start_reference(seconds)
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
    reference_lag = await hass.async_add_executor_job(reference_result, reference)
    rss_after = rss_mb()
    child_rss_after, child_cpu = detector_rss_mb(coordinator), detector_cpu_s(coordinator)
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
    reference = start_reference(seconds)
    callbacks = CallbackTimer().start()
    with GcPauses() as pauses:
        stop = asyncio.Event()
        probe = asyncio.create_task(lag_probe(samples, stop, stalls))
        states = asyncio.create_task(_states(hass, entities, stop))
        await asyncio.sleep(seconds)
        stop.set()
        sent = await states
        await probe
    callbacks.stop()
    if unsub is not None:
        unsub()
    bare = await hass.async_add_executor_job(reference_result, reference)
    ordered = sorted(samples)
    worst = callbacks.worst[0] if callbacks.worst else (0.0, 0.0, "-")
    return (
        f"- Home Assistant alone (GIoT not set up yet), {sent:,} state changes in {seconds:.0f} s,"
        + (" with a state-change listener that does nothing:" if listened else " nobody listening:")
        + f" loop lag max {ordered[-1]:.1f} ms, p99 {ordered[int(0.99 * (len(ordered) - 1))]:.2f}"
        f" ms, {sum(1 for x in samples if x > 5.0)} of {len(samples):,} sleeps > 5 ms"
        f" ({stall_split(stalls)}); longest callback {worst[0]:.1f} / {worst[1]:.1f} ms CPU"
        f" {worst[2]}; GC collections of generation 0/1/2"
        f" {'/'.join(map(str, pauses.by_generation))}, longest pause {pauses.worst:.1f} ms;"
        f" the bare asyncio process beside it: max {bare['worst']:.1f} ms.\n"
    )


async def test_ha_load(hass: HomeAssistant) -> None:
    """Sustain the load for each phase and write the results."""
    rss_start = rss_mb()
    # The test harness runs the loop in asyncio debug mode (a stack captured for every handle
    # and future, several times the loop's cost); Home Assistant in production does not.
    asyncio.get_running_loop().set_debug(False)
    if os.environ.get("GIOT_BENCH_SWITCH_MS"):  # diagnosis: how much of the lag is the GIL
        sys.setswitchinterval(float(os.environ["GIOT_BENCH_SWITCH_MS"]) / 1000)
    if os.environ.get("GIOT_BENCH_SLOW_MS"):
        asyncio.get_running_loop().slow_callback_duration = (
            float(os.environ["GIOT_BENCH_SLOW_MS"]) / 1000
        )
    watch = StallWatch() if STALLS else None
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
    full_before = full_collection()
    port = _free_udp_port()
    entry = MockConfigEntry(
        domain=DOMAIN, data={}, options={CONF_DEVICES: devices, CONF_NETFLOW_PORT: port}
    )
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    coordinator: GIoTCoordinator = entry.runtime_data.coordinator
    assert isinstance(coordinator.detector, ProcessDetector)
    rss_setup = rss_mb()
    child_setup = detector_rss_mb(coordinator)
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
    probe = asyncio.create_task(lag_probe(train_lag, stop_probe, train_stalls))
    t_train = time.monotonic()
    train_callbacks = CallbackTimer().start()
    train_reference = start_reference(15.0)  # about as long as training takes here
    with GcPauses() as train_gc:
        result = await coordinator.training.async_train()
        train_wall = time.monotonic() - t_train
        stop_probe.set()
        await probe
    train_callbacks.stop()
    train_reference_lag = await hass.async_add_executor_job(reference_result, train_reference)
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
    rss_end = rss_mb()
    full_after = full_collection()
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
        f" {stall_split(train_stalls)}; the bare asyncio process beside it (15 s):"
        f" max {train_reference_lag['worst']:.1f} ms,"
        f" {stall_split(reference_stalls(train_reference_lag))}.\n"
    )
    report += _loop_section(phases)
    print(report)
    if OUT:
        await hass.async_add_executor_job(write_report, Path(OUT), report)


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
            f" {stall_split(p.stalls)} | {ref['worst']:.1f}, {ref_over} of {ref['count']:,}"
            f" ({stall_split(reference_stalls(ref))}) |"
            f" {shared_with_reference(p.stalls, ref)} of {len(p.stalls)} |"
        )
    return "\n".join(lines) + "\n"


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
