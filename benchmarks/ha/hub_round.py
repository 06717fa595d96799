"""What one federated round costs a Home Assistant hub (a pytest module, but not a test).

Run: ``scripts/bench ha-hub-round`` (or ``.venv/bin/python -m pytest benchmarks/ha/hub_round.py
-p no:cacheprovider -s``). Environment: ``GIOT_BENCH_ROUNDS`` (default 3), ``GIOT_BENCH_OUT``
(results file, default docs/results/hub_round.md; empty: print only; a hand-written part of the
file, from its first ``## `` heading on, is kept), ``GIOT_BENCH_STALLS`` (print where the event
loop's thread was during each stall over 4 ms, as ``load`` does).

A real hass with GIoT set up and paired with a GIoT node on 127.0.0.1: the tests' ``FakeNode``,
a real WebSocket server speaking ``node_protocol``, in a process of its own (``_node``). The
window store holds what 30 days of a 50-device home leave in it (``_home_store``: windows made
from the home's flows and state changes by the engine's tokenizer, added day by day, so the
store's own bounds and retention apply). Each round is what the GSFS server and the node send a
hub: a ``train`` task carrying the full global model at the hub's size (``base-state`` -1), with
the run config's defaults in round 1 (a node the server has not measured) and the planner's
plan from round 2 on (``fl_server.strategy.sensing`` fed with what round 1 measured), then an
``evaluate`` task carrying the new global model (the old one plus the hub's decoded update).

Measured per task, from sending the task to the answer (and the byte counts settling): wall
time, CPU seconds of the detector's process and of Home Assistant's, memory of both (RSS before
and after, the peak in between), event-loop lag as ``load`` measures it (a task sleeping 1 ms;
GIoT's longest callback; a bare asyncio process beside it for the machine's own stalls), and the
frames' bytes, checked against the hub's own count (``HubState.bytes_down`` / ``bytes_up``).
"""

import asyncio
import importlib.util
import os
import pickle
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import homeassistant.const
import numpy as np
import pytest
from homeassistant.core import HomeAssistant
from pytest_homeassistant_custom_component.common import MockConfigEntry

from benchmarks.ha._measure import (
    CallbackTimer,
    GcPauses,
    Stall,
    StallWatch,
    cpu_s,
    detector_pid,
    lag_probe,
    peak_mb,
    reference_result,
    reset_peak,
    rss_mb,
    shared_with_reference,
    stall_split,
    start_reference,
    write_report,
)
from benchmarks.ha._node import read_message, write_message
from custom_components.giot.const import (
    CONF_FEDERATION,
    CONF_NODE_HOST,
    CONF_NODE_PORT,
    CONF_NODE_TOKEN,
    DOMAIN,
    FederationStatus,
)
from custom_components.giot.coordinator import GIoTCoordinator
from giot_engine import gsfs_codec
from giot_engine import node_protocol as proto
from giot_engine.detector_process import ProcessDetector
from giot_engine.model import GIoTModel
from giot_engine.model_manager import ModelManager
from giot_engine.tokenizer import Vocabulary
from tests.ha.fake_node import NODE_ID, TOKEN

pytestmark = pytest.mark.usefixtures("socket_enabled")

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = int(os.environ.get("GIOT_BENCH_ROUNDS", "3"))
OUT = os.environ.get("GIOT_BENCH_OUT", str(ROOT / "docs" / "results" / "hub_round.md"))
STALLS = bool(os.environ.get("GIOT_BENCH_STALLS"))
RUN_ID = 5_318_827_960_164_023_471  # a Flower run id (uint64, here below 2**63)
FLOWER_NODE = 1
NODE_DEADLINE_S = 300.0  # giot-node's --deadline-s default: evaluate tasks name none
IDLE_S = 5.0
SETTLE_S = 0.2  # after the hub's count of the result: what the answer sets off on the loop
WAIT_S = 60.0


@dataclass
class Task:
    """What one task cost the hub."""

    round: int
    kind: str
    config: dict[str, Any]
    seconds: float  # the node's: task sent -> answer received
    detector_cpu_s: float
    ha_cpu_s: float
    detector_rss: tuple[float, float]
    detector_peak_mb: float
    ha_rss: tuple[float, float]
    ha_peak_mb: float
    lag: list[float]  # sorted, ms
    stalls: list[Stall]
    callbacks: CallbackTimer
    gc_worst_ms: float
    window: tuple[float, float]  # time.monotonic() at its start and end
    down: int  # the task frame's bytes
    up: int  # the result frame's bytes
    status: str = ""
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def lag_max(self) -> float:
        return self.lag[-1] if self.lag else 0.0

    @property
    def lag_p99(self) -> float:
        return self.lag[int(0.99 * (len(self.lag) - 1))] if self.lag else 0.0

    @property
    def giot_ms(self) -> float:
        """How long GIoT's code held the loop at most: its longest callback (``giot_held``)."""
        return self.callbacks.giot_held[0]


class NodeProcess:
    """The node (``_node``): a process of its own, driven over its stdin and stdout."""

    def __init__(self) -> None:
        """Start it; it listens once its port is read."""
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.ha._node"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
            env=env,
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def ask(self, frame: bytes) -> dict[str, Any]:
        """Send a task frame to the hub; the hub's answer (blocks: run it in the executor)."""
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        write_message(self.proc.stdin, frame)
        data = read_message(self.proc.stdout)
        assert data is not None, "the node process ended"
        answer: dict[str, Any] = pickle.loads(data)
        return answer

    def close(self) -> None:
        """End it (a closed stdin) and wait."""
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _run_config() -> dict[str, Any]:
    """The run config's defaults, the one definition (pyproject's ``[tool.flwr.app.config]``)."""
    with (ROOT / "pyproject.toml").open("rb") as handle:
        config: dict[str, Any] = tomllib.load(handle)["tool"]["flwr"]["app"]["config"]
    return config


def _sensing() -> ModuleType:
    """The server's planner module, ``fl_server.strategy.sensing`` (numpy-free, flwr-free).

    Loaded from its file: the package's ``__init__`` imports flwr, which Home Assistant's
    environment does not have.
    """
    path = ROOT / "fl_server" / "strategy" / "sensing.py"
    spec = importlib.util.spec_from_file_location("giot_bench_sensing", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class Server:
    """The GSFS server's side of the rounds, as ``fl_server`` plans and configures them."""

    def __init__(self, params: dict[str, np.ndarray]) -> None:
        """Plan with the run config's defaults, as ``server_app.build_strategy`` does."""
        run = self.run = _run_config()
        sensing = _sensing()
        self.sensor = sensing.ConditionSensor(
            sensing.PlannerConfig(
                target_round_s=run["gsfs-target-round-s"],
                default_budget=run["gsfs-default-budget"],
                min_budget=run["gsfs-min-budget"],
                max_budget=run["gsfs-max-budget"],
                default_steps=run["local-steps"],
                min_steps=run["gsfs-min-steps"],
                max_steps=run["gsfs-max-steps"],
                max_deadline_s=run["round-timeout"],
                deadline_quantile=run["gsfs-deadline-quantile"],
                initial_deadline_s=run["gsfs-initial-deadline-s"] or None,
            )
        )
        self.params = params
        self.shapes = {name: tuple(a.shape) for name, a in params.items()}

    def train_config(self, server_round: int) -> dict[str, Any]:
        """The train task's config, key by key as ``GSFS.configure_train`` writes it."""
        full = sum(int(a.nbytes) for a in self.params.values())
        predicted = self.sensor.predicted_round_s(
            FLOWER_NODE, self.sensor.plan(FLOWER_NODE, 0), full
        )
        deadline = self.sensor.deadline([predicted])
        plan = self.sensor.plan(FLOWER_NODE, full)  # the whole model goes down
        return {
            "proximal-mu": self.run["proximal-mu"],  # server_app's train config
            "server-round": server_round,
            "strategy": "gsfs",
            "gsfs-mode": "sparse",
            "local-steps": plan.steps,
            "gsfs-budget": plan.budget,
            "base-state": -1,
            "new-state": server_round,  # DownlinkTracker's ids count from 1, one per offer
            "deadline-s": deadline,
        }

    def take(self, train: Task) -> dict[str, np.ndarray]:
        """Learn from the hub's answer (the planner's measurements); the next global model.

        With one hub, the mean of the decoded updates is its update: the global model moves by
        it (a server step of 1).
        """
        metrics = train.metrics
        payload = gsfs_codec.unpack(train.arrays, self.shapes)
        up = sum(int(a.nbytes) for a in train.arrays.values())
        full = sum(int(a.nbytes) for a in self.params.values())
        self.sensor.observe_reply(
            FLOWER_NODE,
            train.seconds,
            float(metrics.get("compute-s", 0.0)),
            int(metrics.get("local-steps", train.config["local-steps"])),
            full + up,
        )
        update = gsfs_codec.decode(payload, self.shapes)
        return {name: self.params[name] + update[name] for name in self.params}


def task_frame(
    kind: str, server_round: int, config: dict[str, Any], arrays: dict[str, np.ndarray]
) -> bytes:
    """The task frame as giot-node makes it of a Flower message (``clientapp.task_frame``)."""
    deadline = config.get("deadline-s")
    body = {
        "task_id": f"{RUN_ID:x}-{server_round}-{kind}",
        "kind": kind,
        "run_id": RUN_ID,
        "round": server_round,
        "deadline_s": float(deadline) if deadline else NODE_DEADLINE_S,
        "config": config,
    }
    return proto.encode("task", body, arrays)


async def _until(condition: Any) -> None:
    async with asyncio.timeout(WAIT_S):
        while not condition():  # noqa: ASYNC110 - polled: the link's work is in background tasks
            await asyncio.sleep(0.01)


async def _fill_store(hass: HomeAssistant, coordinator: GIoTCoordinator) -> dict[str, Any]:
    """Fill the window store with the home's 30 days, a day at a time; say what it holds."""
    end_ts = time.time() - 60.0
    arrays = await hass.async_add_executor_job(_home_windows, end_ts)
    keys, windows, stamps = arrays["keys"], arrays["windows"], arrays["stamps"]
    store = coordinator.windows
    day = ((stamps - stamps.min()) // 86400).astype(np.int64)
    order = np.lexsort((stamps, keys, day))
    keys, windows, stamps, day = keys[order], windows[order], stamps[order], day[order]
    cuts = np.flatnonzero((day[1:] != day[:-1]) | (keys[1:] != keys[:-1])) + 1
    for start, end in zip(np.r_[0, cuts], np.r_[cuts, len(keys)], strict=True):
        store.add(str(keys[start]), windows[start:end], stamps[start:end])
        await asyncio.sleep(0)
    await store.async_save()
    sizes = [len(store.timestamps(key)) for key in store.devices()]
    on_disk = await hass.async_add_executor_job(
        lambda: sum(p.stat().st_size for p in store.windows_dir.iterdir())
    )
    return {
        "made": len(keys),
        "records_made": int(arrays["records_made"]),
        "natural_records": int(arrays["natural_records"]),
        "natural_windows": int(arrays["natural_windows"]),
        "windows": store.total_windows,
        "devices": len(sizes),
        "min": min(sizes),
        "median": int(statistics.median(sizes)),
        "max": max(sizes),
        "span_days": (time.time() - min(float(store.timestamps(k)[0]) for k in store.devices()))
        / 86400,
        "on_disk_mb": on_disk / 2**20,
        "dropped_bound": store.stats.dropped_bound,
        "dropped_retention": store.stats.dropped_retention,
    }


def _home_windows(end_ts: float) -> dict[str, np.ndarray]:
    """Run ``_home_store`` in a process of its own; its windows and counts."""
    out = Path(tempfile.gettempdir()) / f"giot_home_store_{os.getpid()}.npz"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    try:
        subprocess.run(
            [sys.executable, "-m", "benchmarks.ha._home_store", str(out), repr(end_ts)],
            check=True,
            cwd=ROOT,
            env=env,
        )
        with np.load(out, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    finally:
        out.unlink(missing_ok=True)


async def _measure_task(
    hass: HomeAssistant,
    coordinator: GIoTCoordinator,
    node: NodeProcess,
    frame: bytes,
    meta: tuple[int, str, dict[str, Any]],
    *,
    up_before: int = 0,
) -> Task:
    """Send one task and measure the hub until the answer is in and counted.

    ``up_before``: what the hub counted as sent in this round before (the train task's result).
    """
    server_round, kind, config = meta
    hub = coordinator.hub
    child = detector_pid(coordinator)
    assert child is not None
    await hass.async_block_till_done()
    reset_peak(child)
    reset_peak()
    rss = rss_mb(), rss_mb(child)
    cpu = cpu_s(), cpu_s(child)
    samples: list[float] = []
    stalls: list[Stall] = []
    stop = asyncio.Event()
    probe = asyncio.create_task(lag_probe(samples, stop, stalls))
    callbacks = CallbackTimer(split=True).start()
    gc_pauses = GcPauses().start()
    started = time.monotonic()
    answer = await hass.async_add_executor_job(node.ask, frame)
    # the hub counts its result once sent; both tasks of a round count into the same figures
    await _until(lambda: hub.bytes_up == up_before + answer["size"])
    await asyncio.sleep(SETTLE_S)
    ended = time.monotonic()
    stop.set()
    await probe
    gc_pauses.stop()
    callbacks.stop()
    cpu_after = cpu_s(), cpu_s(child)
    await asyncio.sleep(0)  # the step that stopped the timer ends: the harness's work is not timed
    print(f"{kind} {server_round}: longest callbacks (wall / CPU ms)", callbacks.worst[:3])
    body = answer["body"]
    assert answer["kind"] == "result", answer
    return Task(
        round=server_round,
        kind=kind,
        config=config,
        seconds=answer["seconds"],
        detector_cpu_s=cpu_after[1] - cpu[1],
        ha_cpu_s=cpu_after[0] - cpu[0],
        detector_rss=(rss[1], rss_mb(child)),
        detector_peak_mb=peak_mb(child),
        ha_rss=(rss[0], rss_mb()),
        ha_peak_mb=peak_mb(),
        lag=sorted(samples),
        stalls=stalls,
        callbacks=callbacks,
        gc_worst_ms=gc_pauses.worst,
        window=(started, ended),
        down=len(frame),
        up=answer["size"],
        status=body["status"],
        reason=body["reason"],
        metrics=dict(body["metrics"]),
        arrays=dict(answer["arrays"]),
    )


async def _idle(hass: HomeAssistant) -> tuple[float, list[float], list[Stall], CallbackTimer]:
    """The hub without a round for IDLE_S: Home Assistant's CPU and the loop's lag."""
    samples: list[float] = []
    stalls: list[Stall] = []
    stop = asyncio.Event()
    await hass.async_block_till_done()
    cpu = cpu_s()
    probe = asyncio.create_task(lag_probe(samples, stop, stalls))
    callbacks = CallbackTimer(split=True).start()
    with GcPauses():
        await asyncio.sleep(IDLE_S)
        stop.set()
        await probe
    callbacks.stop()
    used = cpu_s() - cpu
    await asyncio.sleep(0)
    print("idle: longest callbacks (wall / CPU ms)", callbacks.worst[:3])
    return used, sorted(samples), stalls, callbacks


@pytest.mark.parametrize("expected_lingering_timers", [True])  # aiohttp's heartbeat, at close
async def test_hub_round(hass: HomeAssistant) -> None:
    """Set up a paired hub with a month's store, run the rounds, write the results."""
    # The test harness runs the loop in asyncio debug mode (a stack captured for every handle);
    # Home Assistant in production does not.
    asyncio.get_running_loop().set_debug(False)
    load_start = os.getloadavg()[0]
    watch = StallWatch() if STALLS else None
    beat = None
    if watch is not None:
        watch.watcher.start()
        beat = asyncio.create_task(watch.heartbeat())
    node = await hass.async_add_executor_job(NodeProcess)
    try:
        entry = MockConfigEntry(
            domain=DOMAIN,
            title="GIoT",
            unique_id=NODE_ID,
            data={CONF_NODE_HOST: "127.0.0.1", CONF_NODE_PORT: node.port, CONF_NODE_TOKEN: TOKEN},
            options={CONF_FEDERATION: True},
        )
        entry.add_to_hass(hass)
        assert await hass.config_entries.async_setup(entry.entry_id)
        await hass.async_block_till_done()
        coordinator: GIoTCoordinator = entry.runtime_data.coordinator
        assert isinstance(coordinator.detector, ProcessDetector)
        store = await _fill_store(hass, coordinator)
        print("window store:", store)
        await _until(lambda: coordinator.hub.federation_status is FederationStatus.CONNECTED)
        if watch is not None:
            watch.stage = "idle"
        idle = await _idle(hass)
        model = ModelManager(None, Vocabulary.default())
        server = Server(dict(GIoTModel.init(model.config, seed=0).params))
        tasks: list[Task] = []
        reference = start_reference(0)
        for server_round in range(1, ROUNDS + 1):
            config = server.train_config(server_round)
            frame = await hass.async_add_executor_job(
                task_frame, "train", server_round, config, server.params
            )
            if watch is not None:
                watch.stage = f"round {server_round} train"
            train = await _measure_task(
                hass, coordinator, node, frame, (server_round, "train", config)
            )
            assert train.status == "ok", (train.status, train.reason)
            tasks.append(train)
            server.params = server.take(train)
            config = {"server-round": server_round}  # Flower's evaluate config, and the round
            frame = await hass.async_add_executor_job(
                task_frame, "evaluate", server_round, config, server.params
            )
            if watch is not None:
                watch.stage = f"round {server_round} evaluate"
            evaluate = await _measure_task(
                hass,
                coordinator,
                node,
                frame,
                (server_round, "evaluate", config),
                up_before=train.up,
            )
            assert evaluate.status == "ok", (evaluate.status, evaluate.reason)
            tasks.append(evaluate)
            hub = coordinator.hub
            counted = (hub.bytes_down, hub.bytes_up)
            sent = (train.down + evaluate.down, train.up + evaluate.up)
            assert counted == sent, (counted, sent)
            print(f"round {server_round}: {_task_line(train)}; {_task_line(evaluate)}")
        bare = await hass.async_add_executor_job(reference_result, reference)
        info = coordinator.detector.model_info
        assert await hass.config_entries.async_unload(entry.entry_id)
        await hass.async_block_till_done()
    finally:
        await hass.async_add_executor_job(node.close)
    if watch is not None and beat is not None:
        watch.stop.set()
        await beat
        watch.report()
    report = _report(
        tasks, store=store, idle=idle, bare=bare, info=info, server=server, load_start=load_start
    )
    print(report)
    if OUT:
        await hass.async_add_executor_job(write_report, Path(OUT), report)


def _task_line(task: Task) -> str:
    return (
        f"{task.kind} {task.seconds:.2f} s, detector {task.detector_cpu_s:.2f} CPU s,"
        f" HA {task.ha_cpu_s:.2f} CPU s, lag max {task.lag_max:.1f} ms,"
        f" GIoT's longest callback {task.giot_ms:.1f} ms, {task.down:,} B down, {task.up:,} B up"
    )


def _bare_in(bare: dict[str, Any], window: tuple[float, float]) -> tuple[float, int]:
    """The bare process's worst lag (of its stalls over 2 ms) and its stalls over 5 ms, in time."""
    start, end = window
    lags = [lag for at, lag, _, _ in bare["stalls"] if start <= at <= end]
    return max(lags, default=0.0), sum(1 for lag in lags if lag > 5.0)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _report(
    tasks: list[Task],
    *,
    store: dict[str, Any],
    idle: tuple[float, list[float], list[Stall], CallbackTimer],
    bare: dict[str, Any],
    info: dict[str, Any],
    server: Server,
    load_start: float,
) -> str:
    idle_cpu, idle_lag, idle_stalls, idle_callbacks = idle
    idle_rate = idle_cpu / IDLE_S
    params = int(info["parameters"])
    model_bytes = sum(int(a.nbytes) for a in server.params.values())
    first = tasks[0].config
    planned = [t.config for t in tasks if t.kind == "train" and t.round > 1]
    run = server.run
    lines = [
        "# One federated round on a Home Assistant hub",
        "",
        "- Command: `scripts/bench ha-hub-round` (or `.venv/bin/python -m pytest"
        " benchmarks/ha/hub_round.py -p no:cacheprovider -s`)"
        + (f", GIOT_BENCH_ROUNDS={ROUNDS}" if ROUNDS != 3 else ""),
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs, shared"
        f" with other work (1-min load average {load_start:.1f} at the start,"
        f" {os.getloadavg()[0]:.1f} at the end), Python {platform.python_version()},"
        f" numpy {np.__version__}, Home Assistant {homeassistant.const.__version__}",
        "- Hub: a real hass (the test harness) with GIoT set up and paired with a GIoT node on"
        " 127.0.0.1 (the tests' FakeNode, a real WebSocket server speaking node_protocol, in a"
        " process of its own); no other load on the hub during the rounds. GIoT's detector runs"
        " in a process of its own; its federated tasks run in a thread there at idle priority.",
        f"- Model: the hub's default, {params:,} parameters (width {info['config']['n_embd']},"
        f" {info['config']['n_layer']} layers, {info['config']['n_head']} heads,"
        f" {info['config']['n_positions']} positions, vocabulary {info['config']['vocab_size']}),"
        f" {model_bytes / 2**20:.2f} MiB of float32",
        f"- Window store: **{store['windows']:,} windows** of 64 tokens from {store['devices']}"
        f" devices (per device min {store['min']}, median {store['median']}, max {store['max']};"
        f" the oldest {store['span_days']:.1f} days old), {store['on_disk_mb']:.1f} MiB on disk."
        f" Made by `_home_store`: 30 days of a home of 26 network devices and 24 Zigbee devices,"
        f" {store['natural_records']:,} records at the devices' rates, of which"
        f" {store['records_made']:,} were made and tokenized (at most two windows' worth per"
        f" device-hour: the store keeps fewer), {store['made']:,} windows cut from them as the"
        f" detector cuts them, added day by day; the store's bounds (2,000 per device, 20,000 in"
        f" all, each hour of a device keeping an equal share) dropped {store['dropped_bound']:,}."
        f" Unbounded, the hub would have handed the store {store['natural_windows']:,}.",
        f"- Round 1 (a hub the server has not measured): the run config's defaults,"
        f" local-steps {first['local-steps']}, gsfs-budget {first['gsfs-budget']:,} B, deadline"
        f" {first['deadline-s']:.0f} s (round-timeout). Rounds 2+: the GSFS planner's plan"
        f" (fl_server.strategy.sensing, fed with the measured round as the server measures it):"
        + (
            "; ".join(
                f" local-steps {c['local-steps']}, gsfs-budget {c['gsfs-budget']:,} B, deadline"
                f" {c['deadline-s']:.0f} s"
                for c in planned[:1]
            )
            if planned
            else " none run"
        )
        + f" (gsfs-max-steps {run['gsfs-max-steps']}, gsfs-max-budget"
        f" {run['gsfs-max-budget']:,} B: over a link of a few Mbit/s or more the planner asks"
        " that much). Every train task carries the full global model (base-state -1, the"
        " downlink's upper bound; a server holding the hub's copy sends only tensors that moved);"
        " evaluate tasks carry the new global model (the old one plus the hub's decoded update)"
        f" and name only the round (the node's default deadline, {NODE_DEADLINE_S:.0f} s).",
        "",
        "| round | task | local steps | budget B | wall s | detector CPU s | HA CPU s |"
        " detector RSS before → after (peak) MB | HA RSS before → after (peak) MB |"
        " loop lag max ms | p99 ms | sleeps > 5 ms |"
        " GIoT's longest callback: held (wall / CPU) ms | bare process: max lag ms, > 5 ms |"
        " down B | up B | hub's metrics |",
        "|---:|---|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for t in tasks:
        bare_max, bare_over = _bare_in(bare, t.window)
        steps = t.config.get("local-steps", "")
        budget = f"{t.config['gsfs-budget']:,}" if "gsfs-budget" in t.config else ""
        metrics = (
            f"loss {t.metrics['train-loss']:.2f}, {t.metrics['local-steps']:.0f} steps,"
            f" compute {t.metrics['compute-s']:.2f} s, payload {t.metrics['payload-bytes']:,.0f} B"
            if t.kind == "train"
            else f"eval loss {t.metrics['eval-loss']:.2f} on {t.metrics['num-examples']:.0f}"
        )
        lines.append(
            f"| {t.round} | {t.kind} | {steps} | {budget} | {t.seconds:.2f} |"
            f" {t.detector_cpu_s:.2f} | {t.ha_cpu_s:.2f} |"
            f" {t.detector_rss[0]:.0f} → {t.detector_rss[1]:.0f} ({t.detector_peak_mb:.0f}) |"
            f" {t.ha_rss[0]:.0f} → {t.ha_rss[1]:.0f} ({t.ha_peak_mb:.0f}) |"
            f" {t.lag_max:.1f} | {t.lag_p99:.2f} | {len(t.stalls)} of {len(t.lag):,} |"
            f" {t.giot_ms:.1f} ({t.callbacks.giot_held[1]:.1f} / {t.callbacks.giot_held[2]:.1f}) |"
            f" {bare_max:.1f}, {bare_over} | {t.down:,} | {t.up:,} | {metrics} |"
        )
    lines += [
        "",
        "Wall: from the node sending the task to the answer arriving. CPU: user + system seconds"
        " of each process over the task (Home Assistant's includes the probes', see the idle"
        " hub below). Peak: VmHWM, reset before each task. GIoT's longest callback, held: the"
        " wall time of the integration's longest loop callback less the collector's pauses in"
        " it and less the time the loop thread sat runnable waiting for a CPU that other"
        " processes had (the kernel's account), i.e. how long GIoT's code kept the loop from"
        " running anything else.",
    ]
    rounds = sorted({t.round for t in tasks})
    per_round = []
    for r in rounds:
        pair = [t for t in tasks if t.round == r]
        per_round.append(
            (
                r,
                sum(t.seconds for t in pair),
                sum(t.detector_cpu_s for t in pair),
                sum(t.ha_cpu_s for t in pair),
                max(t.detector_peak_mb for t in pair),
                max(t.ha_peak_mb for t in pair),
                max(t.lag_max for t in pair),
                sum(len(t.stalls) for t in pair),
                max(t.giot_ms for t in pair),
                sum(t.down for t in pair),
                sum(t.up for t in pair),
            )
        )
    lines += [
        "",
        "Per round (train + evaluate); the median is over all rounds, and over rounds 2+ (the"
        " planner's plan) where there are any:",
        "",
        "| round | wall s | detector CPU s | HA CPU s | detector peak MB | HA peak MB |"
        " loop lag max ms | sleeps > 5 ms | GIoT's longest callback, held ms | down B | up B |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    row = (
        "| {} | {:.2f} | {:.2f} | {:.2f} | {:.0f} | {:.0f} | {:.1f} | {:.0f} | {:.1f} |"
        " {:,.0f} | {:,.0f} |"
    )
    for values in per_round:
        lines.append(row.format(*values))
    for label, chosen in (("median", per_round), ("median, rounds 2+", per_round[1:])):
        if chosen:
            columns = list(zip(*chosen, strict=True))[1:]
            lines.append(row.format(f"**{label}**", *(_median(list(c)) for c in columns)))
    worst_any = max(t.lag_max for t in tasks)
    giot = max(tasks, key=lambda t: t.giot_ms)
    stalls = [s for t in tasks for s in t.stalls]
    shared = sum(shared_with_reference(t.stalls, bare) for t in tasks)
    held, wall, cpu_ms, gc_ms, waiting, what = giot.callbacks.giot_held
    walls = max(tasks, key=lambda t: t.callbacks.giot_worst_without_gc[0])
    wall_worst = walls.callbacks.giot_worst_without_gc
    longest = max(
        (w for t in tasks for w in t.callbacks.worst), default=(0.0, 0.0, "-"), key=lambda w: w[0]
    )
    lines += [
        "",
        f"- Target: no event-loop stall over 5 ms caused by GIoT's code:"
        f" **{'met' if held <= 5 else 'missed'}**: GIoT's code held the loop {held:.1f} ms at"
        f" most (round {giot.round}'s {giot.kind}: {what}; {wall:.1f} ms wall, of which"
        f" {cpu_ms:.1f} ms on a CPU, {waiting:.1f} ms waiting for a CPU other processes had and"
        f" {gc_ms:.1f} ms the collector's pauses, both left out). GIoT's longest callback by wall"
        f" alone: {wall_worst[0]:.1f} ms ({wall_worst[1]:.1f} ms CPU) in round {walls.round}'s"
        f" {walls.kind}: {wall_worst[3]}.",
        f"- Event-loop lag during the tasks, any cause (a task sleeping 1 ms): worst"
        f" {worst_any:.1f} ms; {len(stalls)} sleeps overshot 5 ms ({stall_split(stalls)});"
        f" {shared} of them while the bare asyncio process beside Home Assistant stalled too"
        f" (over the whole run it stalled over 5 ms"
        f" {sum(1 for s in bare['stalls'] if s[1] > 5.0)} times, worst {bare['worst']:.1f} ms);"
        f" the longest callback of any code {longest[0]:.1f} ms wall / {longest[1]:.1f} ms CPU:"
        f" {longest[2]}.",
        f"- The idle hub ({IDLE_S:.0f} s before the rounds, same probes): Home Assistant's"
        f" process used {idle_rate:.3f} CPU s per second (the probes' own cost included, so the"
        f" HA CPU column holds about that much per second of wall too), loop lag max"
        f" {idle_lag[-1]:.1f} ms, {len(idle_stalls)} sleeps over 5 ms, longest callback"
        f" {idle_callbacks.worst_wall_ms:.1f} ms.",
        f"- Bytes per round per hub (the frames, as the node sent and received them; the hub's"
        f" own count, HubState.bytes_down / bytes_up, agreed in every round):"
        f" down {_median([v[9] for v in per_round]):,.0f} B, up"
        f" {_median([v[10] for v in per_round]):,.0f} B (medians; WebSocket and TCP framing"
        " add a few bytes per frame).",
    ]
    return "\n".join(lines) + "\n"
