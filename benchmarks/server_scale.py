"""Benchmark: how the server scales with homes (GSFS aggregation, and one SuperLink).

``scripts/bench server-scale [--updates 100 1000 10000] [--nodes 100 1000 10000]
[--round-nodes 100] [--skip-superlink]``

1. Aggregation, at the model the hubs run (``giot_server.server.hub_model_run_config``) and the
   byte budget a node starts with (``gsfs-default-budget``): for each count of updates, a fresh
   process builds that many real GSFS replies (``benchmarks.gsfs_aggregate.build_replies``; a few
   hundred distinct encoded payloads handed out in turn) and times ``GSFS.aggregate_train`` on
   them (wall and CPU, one core), with the process's resident memory before, with the replies
   held (as the ServerApp holds them after ``send_and_receive``), and its peak during the
   aggregation (Linux ``VmHWM``, reset before), then once more under ``tracemalloc`` for the
   aggregation's own peak of Python allocations.
2. One SuperLink, as ``giot-server`` and the containers run it (``flower-superlink`` with TLS and
   SuperNode authentication, its state in an SQLite file), driven by simulated homes that speak
   Flower's own Fleet API client (``FleetHttpClient``, each request signed with that node's key):
   - join: for each count of nodes, keys registered through the Control API (what
     ``giot-server enrol`` does) and nodes activated, then the SuperLink's resident memory;
   - idle load: a real ``flower-supernode`` polls ``PullMessages`` every 3 s and sends a heartbeat
     every ~24 s (30 s x 0.8); the SuperLink's own CPU time per poll and per heartbeat, read from
     ``/proc``, gives how many idle homes one SuperLink process (one uvicorn worker, one core)
     can carry;
   - a round: a probe ServerApp, started with ``flwr run`` as the real one is, sends the hub
     model to every node and waits for replies; each simulated node pulls the message and its
     objects, confirms, and pushes a reply of the budget's size. Wall time of
     ``send_and_receive`` and the SuperLink's CPU time and peak memory over the round.

The simulated nodes skip what a real node does once per run (``GetRun``, ``GetFab``) and never
train; they run in this process, on the same machine as the SuperLink, so wall times include
their cost; CPU times are the SuperLink's own. Writes ``docs/results/server_scale.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.gsfs_aggregate import build_replies, fresh_strategy

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
POLL_S = 3.0  # flwr 1.42 SuperNode: sleep between empty PullMessages (start_client_internal)
HEARTBEAT_S = 30 * 0.8  # HEARTBEAT_DEFAULT_INTERVAL x HEARTBEAT_BASE_MULTIPLIER


# -- process memory (Linux /proc) ---------------------------------------------------------------


def _status_kb(pid: int | str, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise KeyError(key)


def rss_mb(pid: int | str = "self") -> float:
    """Resident memory now."""
    return _status_kb(pid, "VmRSS") / 1024


def peak_mb(pid: int | str = "self") -> float:
    """Peak resident memory since start or since ``reset_peak``."""
    return _status_kb(pid, "VmHWM") / 1024


def reset_peak() -> None:
    """Restart ``VmHWM`` from the current resident size (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def cpu_s(pid: int) -> float:
    """User + system CPU time of one process (its children not counted)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- 1. aggregation -----------------------------------------------------------------------------


def hub_params() -> tuple[dict[str, np.ndarray], int]:
    """Return the hub model's parameters (seeded) and a node's starting byte budget."""
    from fl_server.client_app import model_config  # noqa: PLC0415
    from fl_server.run_config import RunConfig  # noqa: PLC0415
    from giot_engine.model import GIoTModel  # noqa: PLC0415
    from giot_server.server import hub_model_run_config  # noqa: PLC0415

    overrides = {k: int(v) for k, v in (kv.split("=", 1) for kv in hub_model_run_config())}
    cfg = RunConfig.load(overrides)
    return GIoTModel.init(model_config(cfg), seed=0).params, cfg.gsfs_default_budget


def aggregate_child(updates: int, distinct: int, seed: int) -> dict[str, Any]:
    """Measure one aggregation of ``updates`` replies (run in a fresh process)."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    params, budget = hub_params()
    base = rss_mb()
    t0 = time.perf_counter()
    replies = build_replies(params, updates, budget, seed, distinct=distinct)
    build_s = time.perf_counter() - t0
    wire = sum(len(a.data) for m in replies for a in m.content.array_records["arrays"].values())
    held = rss_mb()
    strategy = fresh_strategy(params, updates, budget)
    reset_peak()
    t0, c0 = time.perf_counter(), time.process_time()
    _, metrics = strategy.aggregate_train(1, replies)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = peak_mb()
    assert metrics is not None
    assert metrics["accepted"] == updates, metrics
    strategy = fresh_strategy(params, updates, budget)
    tracemalloc.start()
    strategy.aggregate_train(1, replies)
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {
        "updates": updates,
        "params": int(sum(v.size for v in params.values())),
        "budget": budget,
        "wire_mb": wire / 1e6,
        "build_s": build_s,
        "base_mb": base,
        "held_mb": held,
        "peak_mb": peak,
        "wall_s": wall,
        "cpu_s": cpu,
        "traced_mb": traced / 1e6,
    }


def measure_aggregation(updates: list[int], distinct: int, seed: int) -> list[dict[str, Any]]:
    rows = []
    for n in updates:
        cmd = [sys.executable, "-m", "benchmarks.server_scale", "--child-aggregate", str(n)]
        cmd += ["--distinct", str(distinct), "--seed", str(seed)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"aggregation: {rows[-1]}", file=sys.stderr)
    return rows


# -- 2. one SuperLink ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flwr_env(flwr_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return env | {
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "FLWR_HOME": str(flwr_home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
    }


@dataclass
class SimNode:
    """One simulated home: its key pair and, once active, its node id."""

    private: Any
    public: Any
    auth: Any  # flwr's NodeAuthHttpInterceptor for this key
    node_id: int = 0


class Signer:
    """Sign each Fleet request as the node the calling thread acts for (one connection, many)."""

    def __init__(self) -> None:
        self.local = threading.local()

    def intercept(self, context: Any, call_next: Any) -> Any:
        node: SimNode = self.local.node
        return node.auth.intercept(context, call_next)


@dataclass
class Counter:
    """Fleet requests sent, by method."""

    counts: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counts[name] = self.counts.get(name, 0) + n


class Bench:
    """A real SuperLink under test and the simulated homes that talk to it."""

    def __init__(self, tmp: Path, threads: int, secure: bool = True) -> None:
        from giot_server import certs  # noqa: PLC0415

        self.tmp = tmp
        self.threads = threads
        self.home = tmp / "home"
        certs.create(self.home, [])
        # secure: as deployed (TLS, node auth, SQLite file); else --insecure, state in memory
        self.ca: Path | None = self.home / "ca.pem" if secure else None
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: list[SimNode] = []
        self.signer = Signer()
        self.counter = Counter()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = (tmp / "superlink.log").open("wb")

    # -- the SuperLink process --
    def start(self) -> None:
        cmd = [str(BIN / "flower-superlink"), "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--disable-runtime-dependency-installation"]
        if self.ca is None:
            cmd += ["--insecure"]
        else:
            cmd += ["--database", str(self.home / "superlink.db")]
            cmd += ["--ssl-certfile", str(self.home / "server.pem")]
            cmd += ["--ssl-keyfile", str(self.home / "server.key")]
            cmd += ["--ssl-ca-certfile", str(self.ca), "--enable-supernode-auth"]
        self.proc = subprocess.Popen(
            cmd,
            cwd=self.tmp,
            env=flwr_env(self.tmp / "flwr-superlink"),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        from giot_server.control import Control  # noqa: PLC0415

        deadline = time.monotonic() + 90
        while True:
            assert self.proc.poll() is None, "the SuperLink exited (see superlink.log)"
            try:
                with Control(self.address, self.ca) as ctl:
                    ctl.nodes()
                return
            except (Exception, SystemExit):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        from giot_server import procs  # noqa: PLC0415

        if self.proc is not None:
            tree = procs.descendants(self.proc.pid)
            procs.terminate([self.proc.pid, *tree], grace=10.0)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
        for home in self.tmp.glob("flwr-*"):
            procs.stop_by_env("FLWR_HOME", str(home))
        self.log.close()

    # -- Fleet clients --
    @contextlib.contextmanager
    def client(self) -> Iterator[Any]:
        from flwr.supercore.interceptors.http.runtime_version import (  # noqa: PLC0415
            RuntimeVersionHttpInterceptor,
        )
        from flwr.supernode.fleet_http_client import FleetHttpClient  # noqa: PLC0415

        with FleetHttpClient.from_server_address(
            self.address,
            self.ca is None,
            None if self.ca is None else self.ca.read_bytes(),
            interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperNode"), self.signer],
        ) as client:
            yield client

    def parallel(self, work: list[SimNode], fn: Callable[[Any, SimNode], None]) -> None:
        """Run ``fn(client, node)`` for every node, over ``threads`` connections."""
        chunks = [work[i :: self.threads] for i in range(self.threads)]

        def run(chunk: list[SimNode]) -> None:
            with self.client() as client:
                for node in chunk:
                    self.signer.local.node = node
                    fn(client, node)

        with ThreadPoolExecutor(self.threads) as pool:
            for done in [pool.submit(run, c) for c in chunks if c]:
                done.result()

    # -- join --
    def join(self, total: int) -> dict[str, float]:
        """Register and activate nodes until ``total`` are active; cost of those added."""
        from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
        from flwr.common.constant import HEARTBEAT_MAX_INTERVAL  # noqa: PLC0415
        from flwr.proto.fleet_pb2 import ActivateNodeRequest  # noqa: PLC0415
        from flwr.supercore.primitives.asymmetric import public_key_to_bytes  # noqa: PLC0415
        from flwr.supernode.node_auth_http_interceptor import (  # noqa: PLC0415
            NodeAuthHttpInterceptor,
        )

        from giot_server.control import Control  # noqa: PLC0415
        from giot_server.enrolment import NodeKey  # noqa: PLC0415

        new = []
        for _ in range(total - len(self.nodes)):
            key = ec.generate_private_key(ec.SECP256R1())
            new.append(
                SimNode(key, key.public_key(), NodeAuthHttpInterceptor(key, key.public_key()))
            )
        c0, t0 = cpu_s(self.pid), time.perf_counter()
        with Control(self.address, self.ca) as ctl:
            for i, node in enumerate(new):
                ctl.register(NodeKey(node.public), name=f"sim{len(self.nodes) + i}")
        c1 = cpu_s(self.pid)

        def activate(client: Any, node: SimNode) -> None:
            res = client.ActivateNode(
                ActivateNodeRequest(
                    public_key=public_key_to_bytes(node.public),
                    heartbeat_interval=HEARTBEAT_MAX_INTERVAL,  # online for the whole bench
                )
            )
            node.node_id = int(res.node_id)

        self.parallel(new, activate)
        c2, t2 = cpu_s(self.pid), time.perf_counter()
        self.nodes += new
        n = max(len(new), 1)
        return {
            "nodes": len(self.nodes),
            "register_cpu_ms": (c1 - c0) / n * 1e3,
            "activate_cpu_ms": (c2 - c1) / n * 1e3,
            "join_wall_s": t2 - t0,
            "rss_mb": rss_mb(self.pid),
            "db_mb": sum(f.stat().st_size for f in self.home.glob("superlink.db*")) / 1e6,
        }

    # -- idle load --
    def idle(self, polls: int, heartbeats: int) -> dict[str, float]:
        """SuperLink CPU per empty ``PullMessages`` and per heartbeat, from random nodes."""
        from flwr.common.constant import HEARTBEAT_MAX_INTERVAL  # noqa: PLC0415
        from flwr.proto.fleet_pb2 import PullMessagesRequest  # noqa: PLC0415
        from flwr.proto.heartbeat_pb2 import SendNodeHeartbeatRequest  # noqa: PLC0415
        from flwr.proto.node_pb2 import Node  # noqa: PLC0415

        rng = random.Random(len(self.nodes))

        def pull(client: Any, node: SimNode) -> None:
            res = client.PullMessages(PullMessagesRequest(node=Node(node_id=node.node_id)))
            assert not res.messages_list

        def beat(client: Any, node: SimNode) -> None:
            req = SendNodeHeartbeatRequest(
                node=Node(node_id=node.node_id), heartbeat_interval=HEARTBEAT_MAX_INTERVAL
            )
            assert client.SendNodeHeartbeat(req).success

        out: dict[str, float] = {}
        for name, fn, count in (("poll", pull, polls), ("heartbeat", beat, heartbeats)):
            work = [rng.choice(self.nodes) for _ in range(count)]
            c0, t0 = cpu_s(self.pid), time.perf_counter()
            self.parallel(work, fn)
            c1, t1 = cpu_s(self.pid), time.perf_counter()
            out[f"{name}_cpu_ms"] = (c1 - c0) / count * 1e3
            out[f"{name}_per_s"] = count / (t1 - t0)
        per_node = out["poll_cpu_ms"] / POLL_S + out["heartbeat_cpu_ms"] / HEARTBEAT_S  # ms/s
        out["idle_nodes_per_core"] = 1000.0 / per_node
        return out

    # -- a round --
    def round(self, nodes: int, reply_bytes: int, timeout: float) -> dict[str, float]:
        """One probe round through the SuperLink to the first ``nodes`` simulated homes."""
        from fl_server import flwr_config  # noqa: PLC0415

        app = self.tmp / "probe"
        shutil.rmtree(app, ignore_errors=True)
        app.mkdir()
        (app / "pyproject.toml").write_text(PROBE_PYPROJECT, "utf-8")
        (app / "probe.py").write_text(PROBE_APP, "utf-8")
        out = self.tmp / f"round-{nodes}.json"
        flwr_home = self.tmp / "flwr-cli"
        os.environ["FLWR_HOME"] = str(flwr_home)
        assert self.ca is not None, "rounds run on the deployed configuration only"
        flwr_config.write(
            "bench", {"address": self.address, "root-certificates": str(self.ca)}, True
        )
        active = self.nodes[:nodes]
        done = threading.Event()
        samples: list[tuple[float, float, float]] = []  # (time, SuperLink CPU s, RSS MB)

        def sample() -> None:
            while not done.is_set():
                samples.append((time.time(), cpu_s(self.pid), rss_mb(self.pid)))
                time.sleep(0.25)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        config = f'nodes={nodes} out="{out}" timeout={timeout}'
        run = subprocess.Popen(
            [str(BIN / "flwr"), "run", str(app), "bench", "--run-config", config],
            cwd=self.tmp,
            env=flwr_env(flwr_home),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        served = self._serve(active, reply_bytes, out, timeout)
        rc = run.wait(timeout=60)
        done.set()
        sampler.join()
        assert rc == 0, (run.stdout.read() if run.stdout else b"").decode(errors="replace")
        deadline = time.monotonic() + 60
        while not out.exists():
            assert time.monotonic() < deadline, "the probe ServerApp wrote no result"
            time.sleep(0.5)
        res = json.loads(out.read_text())
        window = [s for s in samples if res["t0"] <= s[0] <= res["t1"]] or samples
        cpu = window[-1][1] - window[0][1]
        return {
            "nodes": nodes,
            "replied": res["replied"],
            "round_wall_s": res["t1"] - res["t0"],
            "superlink_cpu_s": cpu,
            "superlink_cpu_ms_per_node": cpu / nodes * 1e3,
            "rss_before_mb": window[0][2],
            "rss_peak_mb": max(s[2] for s in window),
            "downlink_mb": res["downlink_bytes"] / 1e6,
            "empty_polls": served["empty"],
            "fleet_requests": sum(self.counter.counts.values()),
        }

    def _serve(
        self, active: list[SimNode], reply_bytes: int, out: Path, timeout: float
    ) -> dict[str, int]:
        """Each node: poll until its message comes, pull its objects, confirm, push a reply."""
        from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict  # noqa: PLC0415
        from flwr.app.message import remove_content_from_message  # noqa: PLC0415
        from flwr.common.serde import message_from_proto, message_to_proto  # noqa: PLC0415
        from flwr.proto.fleet_pb2 import (  # noqa: PLC0415
            PullMessagesRequest,
            PushMessagesRequest,
        )
        from flwr.proto.message_pb2 import (  # noqa: PLC0415
            ConfirmMessageReceivedRequest,
            PullObjectRequest,
            PushObjectRequest,
        )
        from flwr.proto.node_pb2 import Node  # noqa: PLC0415
        from flwr.supercore.inflatable.inflatable_object import (  # noqa: PLC0415
            get_all_nested_objects,
            get_object_tree,
            iterate_object_tree,
            no_object_id_recompute,
        )

        self.counter = Counter()
        pending = list(active)
        deadline = time.monotonic() + timeout
        rng = np.random.default_rng(0)

        def serve(client: Any, node: SimNode) -> None:
            me = Node(node_id=node.node_id)
            res = client.PullMessages(PullMessagesRequest(node=me))
            self.counter.add("PullMessages")
            if not res.messages_list:
                self.counter.add("empty")
                return
            msg = message_from_proto(res.messages_list[0])
            run_id = msg.metadata.run_id
            for tree in iterate_object_tree(res.message_object_trees[0]):
                while True:
                    got = client.PullObject(
                        PullObjectRequest(node=me, run_id=run_id, object_id=tree.object_id)
                    )
                    self.counter.add("PullObject")
                    if got.object_available:
                        break
                    time.sleep(0.05)
            client.ConfirmMessageReceived(
                ConfirmMessageReceivedRequest(
                    node=me, run_id=run_id, message_object_id=msg.metadata.message_id
                )
            )
            self.counter.add("ConfirmMessageReceived")
            payload = rng.integers(0, 256, reply_bytes, dtype=np.uint8)
            reply = Message(
                RecordDict(
                    {
                        "arrays": ArrayRecord({"payload": Array(payload)}),
                        "metrics": MetricRecord({"num-examples": 80}),
                    }
                ),
                reply_to=msg,
            )
            with no_object_id_recompute():
                reply.metadata.__dict__["_message_id"] = reply.object_id
                objects = get_all_nested_objects(reply)
                tree = get_object_tree(reply)
                pushed = client.PushMessages(
                    PushMessagesRequest(
                        node=me,
                        messages_list=[message_to_proto(remove_content_from_message(reply))],
                        message_object_trees=[tree],
                        clientapp_runtime_list=[0.1],
                    )
                )
                self.counter.add("PushMessages")
                for oid in pushed.objects_to_push:
                    client.PushObject(
                        PushObjectRequest(
                            node=me,
                            run_id=run_id,
                            object_id=oid,
                            object_content=objects[oid].deflate(),
                            session_id=pushed.session_id,
                        )
                    )
                    self.counter.add("PushObject")
            node.node_id = -node.node_id  # served (sign flipped back below)

        while pending:
            assert time.monotonic() < deadline, f"{len(pending)} nodes got no message"
            self.parallel(pending, serve)
            pending = [n for n in pending if n.node_id > 0]
            if pending:
                time.sleep(1.0)  # a real node waits 3 s after an empty poll
        for node in active:
            node.node_id = abs(node.node_id)
        return {"empty": self.counter.counts.pop("empty", 0)}


PROBE_PYPROJECT = """\
[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "probe"
version = "0.1.0"
dependencies = ["numpy"]

[tool.flwr.app]
publisher = "giot"
fab-include = ["probe.py"]

[tool.flwr.app.components]
serverapp = "probe:app"
clientapp = "probe:client"

[tool.flwr.app.config]
nodes = 0
out = ""
timeout = 600.0
"""

PROBE_APP = '''\
"""Probe ServerApp of benchmarks/server_scale.py: one round of the hub model to N nodes."""

import json
import time

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

app = ServerApp()
client = ClientApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    from fl_server.client_app import model_config
    from fl_server.run_config import RunConfig
    from giot_engine.model import GIoTModel
    from giot_server.server import hub_model_run_config

    overrides = {k: int(v) for k, v in (kv.split("=", 1) for kv in hub_model_run_config())}
    params = GIoTModel.init(model_config(RunConfig.load(overrides)), seed=0).params
    n = int(context.run_config["nodes"])
    while len(ids := sorted(grid.get_node_ids())) < n:
        time.sleep(0.5)
    arrays = ArrayRecord({k: Array(v) for k, v in params.items()})
    msgs = [
        Message(
            RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1})}),
            dst_node_id=i,
            message_type=MessageType.TRAIN,
            group_id="1",
        )
        for i in ids[:n]
    ]
    t0 = time.time()
    replies = list(grid.send_and_receive(msgs, timeout=float(context.run_config["timeout"])))
    t1 = time.time()
    ok = sum(1 for r in replies if r.has_content())
    down = n * sum(int(v.nbytes) for v in params.values())
    with open(str(context.run_config["out"]), "w") as f:
        json.dump({"t0": t0, "t1": t1, "replied": ok, "downlink_bytes": down}, f)
'''


def measure_superlink(
    levels: list[int], round_levels: list[int], threads: int, polls: int, reply_bytes: int
) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    joins: list[dict[str, float]] = []
    rounds: list[dict[str, float]] = []
    tmp = Path(tempfile.mkdtemp(prefix="giot-server-scale-"))
    bench = Bench(tmp, threads)
    try:
        bench.start()
        joins.append({"nodes": 0, "rss_mb": rss_mb(bench.pid)})
        for level in sorted(set(levels) | set(round_levels)):
            row = bench.join(level)
            if level in levels:
                row |= bench.idle(polls, max(polls // 4, 20))
                joins.append(row)
                print(f"superlink: {row}", file=sys.stderr)
            if level in round_levels:
                rounds.append(bench.round(level, reply_bytes, timeout=600.0))
                print(f"round: {rounds[-1]}", file=sys.stderr)
    finally:
        bench.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    # What TLS, node authentication and the SQLite file cost: the same at the smallest level
    # on a SuperLink with none of them.
    tmp = Path(tempfile.mkdtemp(prefix="giot-server-scale-"))
    bench = Bench(tmp, threads, secure=False)
    try:
        bench.start()
        row = bench.join(min(levels)) | bench.idle(polls, max(polls // 4, 20))
        joins.append(row | {"insecure": 1.0})
        print(f"superlink, insecure: {row}", file=sys.stderr)
    finally:
        bench.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return joins, rounds


# -- report -------------------------------------------------------------------------------------


def report(
    argv: list[str],
    agg: list[dict[str, Any]],
    joins: list[dict[str, float]],
    rounds: list[dict[str, float]],
    load: float,
) -> str:
    lines = [
        "# How the server scales with homes",
        "",
        f"Command: `{' '.join(['scripts/bench', 'server-scale', *argv])}`",
        f"Machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs shared with other work (load average {load:.1f} at the end), "
        f"Python {platform.python_version()}. Times on a shared machine vary by tens of percent.",
        "",
    ]
    if agg:
        a = agg[0]
        lines += [
            "## GSFS aggregation (one core)",
            "",
            f"Hub model: {a['params']:,} parameters ({a['params'] * 4 / 1e3:.0f} kB dense); each "
            f"update at the starting budget of {a['budget']:,} B (`gsfs-default-budget`).",
            "",
            "| updates | on the wire | aggregate_train wall | CPU | CPU per update | RSS with "
            "replies held | peak RSS in aggregation | replies held (RSS - base) | Python peak of "
            "aggregation (tracemalloc) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in agg:
            lines.append(
                f"| {r['updates']:,} | {r['wire_mb']:.1f} MB | {r['wall_s']:.2f} s | "
                f"{r['cpu_s']:.2f} s | {r['cpu_s'] / r['updates'] * 1e3:.2f} ms | "
                f"{r['held_mb']:.0f} MB | {r['peak_mb']:.0f} MB | "
                f"{r['held_mb'] - r['base_mb']:.0f} MB | {r['traced_mb']:.1f} MB |"
            )
        lines.append("")
    if joins:
        lines += [
            "## One SuperLink (TLS, SuperNode authentication, SQLite state)",
            "",
            "| nodes active | SuperLink RSS | CPU per register (Control) | CPU per activate "
            "(Fleet) | CPU per empty poll | CPU per heartbeat | polls/s served (this machine) | "
            "idle homes per SuperLink core |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for j in joins:
            if "poll_cpu_ms" not in j:
                lines.append(f"| {int(j['nodes'])} | {j['rss_mb']:.0f} MB | | | | | | |")
                continue
            label = f"{int(j['nodes']):,}" + (
                " (no TLS, no auth, state in memory)" * bool(j.get("insecure"))
            )
            lines.append(
                f"| {label} | {j['rss_mb']:.0f} MB | {j['register_cpu_ms']:.1f} ms | "
                f"{j['activate_cpu_ms']:.1f} ms | {j['poll_cpu_ms']:.1f} ms | "
                f"{j['heartbeat_cpu_ms']:.1f} ms | {j['poll_per_s']:.0f} | "
                f"{j['idle_nodes_per_core']:,.0f} |"
            )
        lines += [
            "",
            f"Idle homes per core: 1 s of CPU / (CPU per poll / {POLL_S:g} s + CPU per heartbeat "
            f"/ {HEARTBEAT_S:g} s), the rates of a flwr 1.42 SuperNode between rounds.",
            "",
        ]
    if rounds:
        lines += [
            "## One round through the SuperLink (hub model down, budget-size reply up)",
            "",
            "| nodes | replies | send_and_receive wall | SuperLink CPU | per node | SuperLink "
            "RSS before | peak | model sent down (all nodes) | empty polls | Fleet requests |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rounds:
            lines.append(
                f"| {int(r['nodes']):,} | {int(r['replied']):,} | {r['round_wall_s']:.1f} s | "
                f"{r['superlink_cpu_s']:.1f} s | {r['superlink_cpu_ms_per_node']:.1f} ms | "
                f"{r['rss_before_mb']:.0f} MB | {r['rss_peak_mb']:.0f} MB | "
                f"{r['downlink_mb']:.0f} MB | {int(r['empty_polls'])} | "
                f"{int(r['fleet_requests']):,} |"
            )
        lines.append("")
    return "\n".join(lines + reading(agg, joins, rounds))


def reading(
    agg: list[dict[str, Any]], joins: list[dict[str, float]], rounds: list[dict[str, float]]
) -> list[str]:
    """Say what the tables show, computed from them (docs/deploy.md draws conclusions)."""
    out = ["## Reading", ""]
    if agg:
        lo, hi = agg[0], agg[-1]
        ratio = (hi["cpu_s"] / hi["updates"]) / (lo["cpu_s"] / lo["updates"])
        held = (hi["held_mb"] - hi["base_mb"]) / hi["updates"] * 1e3
        out += [
            f"- Aggregation is linear in the updates: CPU per update at {hi['updates']:,} is "
            f"{ratio:.2f}x that at {lo['updates']:,} ({hi['cpu_s']:.1f} s of one core for "
            f"{hi['updates']:,}). Its own allocations stay near the model's size "
            f"({lo['traced_mb']:.0f}-{hi['traced_mb']:.0f} MB): the mean is streamed. The replies "
            f"the ServerApp holds cost ~{held:.0f} MB per 1,000 updates of "
            f"{hi['budget'] / 1e3:.0f} kB ({hi['wire_mb'] / hi['updates'] * 1e3:.0f} MB on the "
            "wire): that, not the aggregation, is the ServerApp's memory at 10,000 homes.",
            "- The replies are built from a few hundred distinct encoded payloads handed out in "
            "turn (`--distinct`): the cost per reply (decode, validate, scatter into the mean) "
            "does not depend on the values.",
        ]
    measured = [j for j in joins if "poll_cpu_ms" in j and not j.get("insecure")]
    plain = [j for j in joins if j.get("insecure")]
    if measured:
        polls = [j["poll_cpu_ms"] for j in measured]
        idle = [j["idle_nodes_per_core"] for j in measured]
        out += [
            f"- One SuperLink's cost per Fleet request does not grow with the nodes it knows "
            f"({min(polls):.1f}-{max(polls):.1f} ms of CPU per empty poll from "
            f"{int(measured[0]['nodes']):,} to {int(measured[-1]['nodes']):,} nodes), nor does "
            f"its memory ({measured[0]['rss_mb']:.0f}-{measured[-1]['rss_mb']:.0f} MB; the "
            f"state is in SQLite, {measured[-1]['db_mb']:.1f} MB at "
            f"{int(measured[-1]['nodes']):,} nodes). The limit is the request rate of its one "
            f"process: {min(idle):,.0f}-{max(idle):,.0f} idle homes per core on this machine.",
        ]
    if measured and plain:
        out += [
            f"- Without TLS, node authentication and the SQLite file the same SuperLink spends "
            f"{plain[0]['poll_cpu_ms']:.1f} ms per empty poll (vs "
            f"{measured[0]['poll_cpu_ms']:.1f} ms): "
            f"{plain[0]['poll_cpu_ms'] / measured[0]['poll_cpu_ms']:.0%} of a request's cost is "
            "Flower's HTTP stack in one Python process, the rest TLS, the signature check and "
            "the state on disk.",
        ]
    for r in rounds:
        fleet = r["fleet_requests"] / r["nodes"]
        minutes = r["superlink_cpu_ms_per_node"] * 1000 / 1e3 / 60
        out += [
            f"- A round costs the SuperLink {r['superlink_cpu_ms_per_node']:.0f} ms of CPU per "
            f"home ({int(r['nodes'])} homes; {fleet:.0f} Fleet requests per home, most of them "
            "one `PullObject` per model tensor, plus the ServerApp's Runtime API calls): "
            f"~{minutes:.0f} min of SuperLink CPU for a round of 1,000 homes at this rate. The "
            "wall time includes the simulated homes, which share the machine's 2 cores.",
        ]
    out += [
        "",
        "Not measured: rounds of 1,000 homes and more (minutes of SuperLink CPU on this shared "
        "machine; the cost per home is the measured one), what a real node does once per run "
        "(`GetRun`, `GetFab`), network latency between homes and server, a faster or unshared "
        "CPU. The ServerApp's own process (the Runtime API client) is not in the SuperLink's "
        "CPU time.",
    ]
    return [*out, ""]


def main(argv: list[str] | None = None) -> None:
    """Run the measurements and write the report."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--updates", type=int, nargs="*", default=[100, 1000, 10000])
    parser.add_argument("--distinct", type=int, default=200, help="distinct encoded payloads")
    parser.add_argument("--nodes", type=int, nargs="*", default=[100, 1000, 10000])
    parser.add_argument("--round-nodes", type=int, nargs="*", default=[100])
    parser.add_argument("--threads", type=int, default=4, help="simulated homes' connections")
    parser.add_argument("--polls", type=int, default=800, help="empty polls timed per level")
    parser.add_argument("--skip-superlink", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/results/server_scale.md")
    parser.add_argument("--child-aggregate", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_aggregate:
        print(json.dumps(aggregate_child(args.child_aggregate, args.distinct, args.seed)))
        return
    agg = measure_aggregation(args.updates, args.distinct, args.seed)
    joins: list[dict[str, float]] = []
    rounds: list[dict[str, float]] = []
    if not args.skip_superlink:
        _, budget = hub_params()
        joins, rounds = measure_superlink(
            args.nodes, args.round_nodes, args.threads, args.polls, budget
        )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    text = report(argv, agg, joins, rounds, load)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
