"""``giot-node``: state files, the hub WebSocket, the bridge, the ClientApp, and real processes.

The integration's side is played by an aiohttp WebSocket client speaking ``node_protocol`` (the
edge of this component); the ClientApp's side of the bridge by an HTTP client on the Unix socket.
The real-process tests run a SuperLink, ``giot-node run`` (whose SuperNode starts the node's own
ClientApp) and ``flwr run``: the project's app trains through the test's hub, and an app of
another publisher is refused without its code ever running. With ``giot-server`` (TLS, node
authentication): an enrolled node trains the hubs' model through the hub, its revoked key is
refused, and its SuperNode comes back by itself when the server restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import stat
import struct
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from cryptography.hazmat.primitives.serialization import load_ssh_private_key
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common.config import parse_config_args
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fl_server import flwr_config
from fl_server.checkpoint import load_latest
from fl_server.client_app import model_config
from fl_server.history import read_history
from fl_server.run_config import RunConfig
from fl_server.strategy.gsfs import GSFS
from giot_engine import gsfs_codec
from giot_engine import node_protocol as proto
from giot_engine.model import GIoTModel
from giot_engine.model_manager import ModelManager
from giot_engine.tokenizer import Vocabulary
from giot_node import advertise, cli, clientapp
from giot_node.link import Link
from giot_node.state import NodeState
from giot_node.supernode import (
    NODE_CONFIG_BRIDGE,
    NODE_CONFIG_DEADLINE,
    NODE_CONFIG_TRUSTED,
    SuperNodeOptions,
    supernode_command,
)
from giot_server import procs
from giot_server.certs import server_names
from giot_server.enrolment import parse_key
from tests.server.deployment import (
    BIN,
    ROOT,
    RUN_CONFIG,
    Federation,
    free_ports,
    run_config_arg,
    stage_app,
)
from tests.server.test_giot_server import gs

NODE_ENV = {"PYTHONPATH": os.pathsep.join([str(ROOT / "engine" / "src"), str(ROOT)])}


def _init(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """``giot-node init``; the token it printed."""
    assert cli.main(["init", "--state-dir", str(state_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    return lines[lines.index("pairing token (enter it in Home Assistant; shown only now):") + 1]


def test_init_pair_show_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state_dir = tmp_path / "node"
    assert cli.main(["init", "--state-dir", str(state_dir)]) == 0
    out = capsys.readouterr().out
    key_line = next(line for line in out.splitlines() if line.startswith("ecdsa-sha2-nistp"))
    token = out.splitlines()[-1]
    assert len(proto.normalise_token(token)) == 20
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    files = sorted(p.name for p in state_dir.iterdir())
    assert files == ["node_id", "supernode.key", "supernode.key.pub", "token"]
    for path in state_dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    # what giot-server enrol takes, and what flower-supernode loads
    assert parse_key(key_line.encode()).openssh == " ".join(key_line.split()[:2])
    load_ssh_private_key((state_dir / "supernode.key").read_bytes(), None)
    node_id = (state_dir / "node_id").read_text().strip()
    assert len(node_id) == 32
    assert int(node_id, 16) >= 0

    assert cli.main(["init", "--state-dir", str(state_dir)]) == 0  # idempotent
    again = capsys.readouterr().out
    assert "existing keys kept" in again
    assert key_line in again
    assert token not in again
    assert (state_dir / "node_id").read_text().strip() == node_id
    assert NodeState(state_dir).token() == token

    assert cli.main(["pair", "--state-dir", str(state_dir)]) == 0
    new = capsys.readouterr().out.splitlines()[-1]
    assert new != token
    assert NodeState(state_dir).token() == new
    assert stat.S_IMODE((state_dir / "token").stat().st_mode) == 0o600

    assert cli.main(["show-key", "--state-dir", str(state_dir)]) == 0
    assert capsys.readouterr().out.strip() == key_line
    assert cli.main(["show-key", "--state-dir", str(tmp_path / "none")]) == 2


# -- hub WebSocket and bridge (in process, real sockets) -------------------------------------


@pytest.fixture
async def link(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> AsyncIterator[Link]:
    state = NodeState(tmp_path / "node")
    _init(state.root, capsys)
    node = Link(state, "superlink.example:9092")
    await node.start("127.0.0.1", 0)
    try:
        yield node
    finally:
        await node.close()


async def _connect(
    session: aiohttp.ClientSession, node: Link, token: str | None = None, protocol: int = 1
) -> tuple[aiohttp.ClientWebSocketResponse, proto.Frame]:
    """Connect and answer the challenge as the integration does; the node's reply frame."""
    ws = await session.ws_connect(
        f"http://127.0.0.1:{node.port}/giot", max_msg_size=proto.MAX_FRAME_BYTES
    )
    challenge = proto.decode(await ws.receive_bytes(timeout=5))
    assert challenge.kind == "challenge"
    assert challenge.body["node_id"] == node.node_id
    assert challenge.body["protocols"] == [1]
    token = node.state.token() if token is None else token
    auth = {"proof": proto.proof(token, challenge.body["nonce"]), "protocol": protocol, "hub": "t"}
    await ws.send_bytes(proto.encode("auth", auth))
    return ws, proto.decode(await ws.receive_bytes(timeout=5))


async def _closed(ws: aiohttp.ClientWebSocketResponse) -> bool:
    msg = await ws.receive(timeout=5)
    return msg.type in {aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED}


async def _post(node: Link, frame: bytes) -> tuple[int, proto.Frame]:
    """POST to the bridge as the ClientApp does."""
    connector = aiohttp.UnixConnector(path=str(node.state.bridge_path))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post("http://node/task", data=frame) as response,
    ):
        return response.status, proto.decode(await response.read())


def _task(task_id: str = "t1", deadline_s: float = 5.0, round_: int = 3) -> bytes:
    body = {
        "task_id": task_id,
        "kind": "train",
        "run_id": 7,
        "round": round_,
        "deadline_s": deadline_s,
        "config": {"gsfs-budget": 4096, "strategy": "gsfs"},
    }
    return proto.encode("task", body, {"w": np.arange(6, dtype=np.float32).reshape(2, 3)})


def _result(task_id: str, status: str = "ok", arrays: dict[str, Any] | None = None) -> bytes:
    body = {"task_id": task_id, "status": status, "reason": "", "metrics": {"num-examples": 4}}
    return proto.encode("result", body, arrays)


async def test_auth(link: Link) -> None:
    async with aiohttp.ClientSession() as session:
        ws, reply = await _connect(session, link)
        assert reply.kind == "welcome"
        assert reply.body == {
            "node_id": link.node_id,
            "protocol": 1,
            "superlink": "superlink.example:9092",
            "connected": False,
            "server_key": "",  # no --server-key given
        }
        assert link.hub is not None
        await ws.close()

        ws, reply = await _connect(session, link, token="aaaaa-bbbbb-ccccc-ddddd")
        assert (reply.kind, reply.body["reason"]) == ("error", "bad_token")
        assert await _closed(ws)

        ws, reply = await _connect(session, link, protocol=2)
        assert (reply.kind, reply.body["reason"]) == ("error", "unsupported_version")
        assert await _closed(ws)

        # a frame of a protocol version the node does not speak
        ws = await session.ws_connect(f"http://127.0.0.1:{link.port}/giot")
        await ws.receive_bytes(timeout=5)
        header = json.dumps({"v": 9, "kind": "auth", "body": {}, "arrays": []}).encode()
        await ws.send_bytes(b"GIOT" + struct.pack(">I", len(header)) + header)
        reply = proto.decode(await ws.receive_bytes(timeout=5))
        assert (reply.kind, reply.body["reason"]) == ("error", "unsupported_version")
        assert await _closed(ws)

        old = link.state.token()  # `giot-node pair` while the node runs: the next connect counts
        link.state.new_token()
        ws, reply = await _connect(session, link, token=old)
        assert (reply.kind, reply.body["reason"]) == ("error", "bad_token")
        ws, reply = await _connect(session, link)
        assert reply.kind == "welcome"
        await ws.close()


async def test_task_reaches_the_hub_and_its_result_comes_back(link: Link) -> None:
    assert stat.S_IMODE(link.state.bridge_path.stat().st_mode) == 0o600
    async with aiohttp.ClientSession() as session:
        ws, _ = await _connect(session, link)
        posting = asyncio.create_task(_post(link, _task("t1")))
        task = proto.decode(await ws.receive_bytes(timeout=5))
        assert (task.kind, task.body["task_id"]) == ("task", "t1")
        np.testing.assert_array_equal(task.arrays["w"], np.arange(6).reshape(2, 3))
        answer = {"gsfs.val": np.array([1, -2], np.int8)}
        await ws.send_bytes(_result("t1", arrays=answer))
        status, result = await posting
        assert status == 200
        assert result.body == {
            "task_id": "t1",
            "status": "ok",
            "reason": "",
            "metrics": {"num-examples": 4},
        }
        np.testing.assert_array_equal(result.arrays["gsfs.val"], [1, -2])
        after = proto.decode(await ws.receive_bytes(timeout=5))
        assert after.kind == "status"
        assert after.body == {
            "superlink": "superlink.example:9092",
            "connected": False,
            "last_round": 3,
        }
        await ws.close()


async def test_no_hub_skips(link: Link) -> None:
    status, result = await _post(link, _task("t2"))
    assert status == 200
    assert (result.body["status"], result.body["reason"]) == ("skipped", "no_hub")
    status, error = await _post(link, b"not a frame")
    assert (status, error.kind, error.body["reason"]) == (400, "error", "bad_frame")


async def test_slow_hub_misses_the_deadline(link: Link) -> None:
    async with aiohttp.ClientSession() as session:
        ws, _ = await _connect(session, link)
        posting = asyncio.create_task(_post(link, _task("t3", deadline_s=0.3)))
        assert proto.decode(await ws.receive_bytes(timeout=5)).kind == "task"
        _, result = await posting
        assert (result.body["status"], result.body["reason"]) == ("skipped", "deadline")
        assert proto.decode(await ws.receive_bytes(timeout=5)).kind == "status"
        await ws.send_bytes(_result("t3"))  # too late: dropped, and the hub is told
        late = proto.decode(await ws.receive_bytes(timeout=5))
        assert (late.kind, late.body["reason"], late.body["in_reply_to"]) == (
            "error",
            "deadline",
            "t3",
        )
        assert link.last_round == 0
        await ws.close()


async def test_malformed_frames_are_answered_and_not_applied(link: Link) -> None:
    async with aiohttp.ClientSession() as session:
        ws, _ = await _connect(session, link)
        posting = asyncio.create_task(_post(link, _task("t4")))
        assert proto.decode(await ws.receive_bytes(timeout=5)).kind == "task"

        await ws.send_bytes(b"GIOT\x00\x00\x00\x05{oops")
        assert proto.decode(await ws.receive_bytes(timeout=5)).body["reason"] == "bad_frame"
        # a result for the waiting task, but with a status the protocol does not know
        body = {"task_id": "t4", "status": "maybe", "reason": "", "metrics": {}}
        header = json.dumps({"v": 1, "kind": "result", "body": body, "arrays": []}).encode()
        await ws.send_bytes(b"GIOT" + struct.pack(">I", len(header)) + header)
        assert proto.decode(await ws.receive_bytes(timeout=5)).body["reason"] == "bad_schema"
        await ws.send_str("hello")
        assert proto.decode(await ws.receive_bytes(timeout=5)).body["reason"] == "bad_frame"
        await ws.send_bytes(_result("nobody-asked"))
        refused = proto.decode(await ws.receive_bytes(timeout=5))
        assert (refused.body["reason"], refused.body["in_reply_to"]) == (
            "unexpected",
            "nobody-asked",
        )
        assert not posting.done()  # nothing of the above was applied

        await ws.send_bytes(_result("t4"))  # the connection stayed open
        status, result = await posting
        assert (status, result.body["status"]) == (200, "ok")
        await ws.close()


async def test_a_new_hub_replaces_the_old(link: Link) -> None:
    async with aiohttp.ClientSession() as session:
        first, _ = await _connect(session, link)
        posting = asyncio.create_task(_post(link, _task("t5")))
        assert proto.decode(await first.receive_bytes(timeout=5)).kind == "task"
        second, reply = await _connect(session, link)
        assert reply.kind == "welcome"
        assert await _closed(first)
        _, result = await posting  # sent to the hub that left: no answer will come
        assert (result.body["status"], result.body["reason"]) == ("skipped", "no_hub")
        posting = asyncio.create_task(_post(link, _task("t6")))
        frame = proto.decode(await second.receive_bytes(timeout=5))
        if frame.kind == "status":
            frame = proto.decode(await second.receive_bytes(timeout=5))
        assert frame.body["task_id"] == "t6"
        await second.send_bytes(_result("t6"))
        assert (await posting)[1].body["status"] == "ok"
        await second.close()


def test_service_info() -> None:
    info = advertise.service_info("ab" * 16, 9093, ["192.168.1.20"], "0.1.0")
    assert info.type == "_giot._tcp.local."
    assert info.name == f"giot-node-{'ab' * 6}._giot._tcp.local."
    assert info.port == 9093
    assert info.parsed_addresses() == ["192.168.1.20"]
    assert info.properties == {b"id": b"ab" * 16, b"proto": b"1", b"version": b"0.1.0"}


def test_supernode_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = NodeState(tmp_path / "node")
    _init(state.root, capsys)
    ca = tmp_path / "ca.pem"
    opts = SuperNodeOptions("giot.example:9092", ca, ("giot/giot", "lab/x"), 120.0)
    cmd = supernode_command(state, opts, 45678)
    assert Path(cmd[0]).name == "flower-supernode"
    assert "--insecure" not in cmd
    flags = dict(zip(cmd[1::2], cmd[2::2], strict=True))
    assert flags["--superlink"] == "giot.example:9092"
    assert flags["--root-certificates"] == str(ca)
    assert flags["--auth-supernode-private-key"] == str(state.key_path)
    assert (flags["--host"], flags["--port"]) == ("127.0.0.1", "45678")
    assert parse_config_args([flags["--node-config"]]) == {  # as flower-supernode reads it
        NODE_CONFIG_BRIDGE: str(state.bridge_path),
        NODE_CONFIG_TRUSTED: "giot/giot,lab/x",
        NODE_CONFIG_DEADLINE: 120.0,
    }
    insecure = supernode_command(state, SuperNodeOptions("h:1", None, ("giot/giot",), 1.0), 1)
    assert "--insecure" in insecure
    assert "--auth-supernode-private-key" not in insecure  # Flower refuses it without TLS


# -- the ClientApp's conversion (no processes) ------------------------------------------------


@pytest.fixture
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``pull_task_input`` sets in a ClientApp process (Messages read it)."""
    monkeypatch.setattr(TaskIdentity, "_task_id", 11)
    monkeypatch.setattr(TaskIdentity, "_run_id", 7)
    monkeypatch.setattr(TaskIdentity, "_node_id", 5)


def _message(content: RecordDict, message_type: str = MessageType.TRAIN) -> Message:
    msg = Message(content, dst_node_id=5, message_type=message_type, group_id="2")
    msg.metadata.__dict__["_message_id"] = "m1"  # as pull_task_input sets it
    return msg


def _context(bridge: Path, trusted: str = "giot/giot") -> Context:
    node_config: dict[str, bool | float | int | str] = {
        NODE_CONFIG_BRIDGE: str(bridge),
        NODE_CONFIG_TRUSTED: trusted,
        NODE_CONFIG_DEADLINE: 300.0,
    }
    return Context(run_id=7, node_id=5, node_config=node_config, state=RecordDict(), run_config={})


def _run(fab_id: str) -> Run:
    run = Run.create_empty(7)
    run.fab_id = fab_id
    return run


@pytest.mark.usefixtures("task_identity")
def test_clientapp_builds_the_task_frame() -> None:
    weights = {"a": np.ones((2, 2), np.float32), "b": np.zeros(3, np.float32)}
    config = ConfigRecord({"server-round": 2, "lr": 0.1, "deadline-s": 12.5, "tags": [1, 2]})
    content = RecordDict(
        {"arrays": ArrayRecord({k: Array(v) for k, v in weights.items()}), "config": config}
    )
    frame, deadline = clientapp.task_frame(_message(content), "train", 300.0)
    task = proto.decode(frame)
    assert deadline == 12.5
    assert task.body == {
        "task_id": "m1",
        "kind": "train",
        "run_id": 7,
        "round": 2,
        "deadline_s": 12.5,
        "config": {"server-round": 2, "lr": 0.1, "deadline-s": 12.5},  # the list is dropped
    }
    assert sorted(task.arrays) == ["a", "b"]
    np.testing.assert_array_equal(task.arrays["a"], weights["a"])
    # no deadline from the server: the node's; no server-round: the message's group
    frame, deadline = clientapp.task_frame(_message(RecordDict()), "evaluate", 30.0)
    assert (deadline, proto.decode(frame).body["round"]) == (30.0, 2)
    with pytest.raises(proto.ProtocolError, match="bad_schema"):
        clientapp.task_frame(_message(RecordDict({"shared": ArrayRecord()})), "train", 30.0)


@pytest.mark.usefixtures("task_identity")
def test_clientapp_refuses_untrusted_apps_and_skips_cleanly(tmp_path: Path) -> None:
    msg = _message(RecordDict({"config": ConfigRecord({"server-round": 1})}))
    reply = clientapp.answer(msg, _context(tmp_path / "absent.sock"), _run("other/probe"))
    assert reply.has_error()
    assert reply.error.reason == "untrusted_app: other/probe"
    # trusted, but the bridge is not there: a skip the server's validation drops
    reply = clientapp.answer(msg, _context(tmp_path / "absent.sock"), _run("giot/giot"))
    assert not reply.has_error()
    assert dict(reply.content.metric_records["metrics"]) == {"num-examples": 0, "skipped": 1}
    gsfs = GSFS()
    gsfs.global_arrays = {"a": np.zeros(4, np.float32)}
    assert gsfs._accept(reply, {"a": (4,)}) is None  # rejected with a reason, not an exception
    assert gsfs.recorder.refusals == {"node skipped": 1}  # the status page says so, not "malformed"


# -- real processes -----------------------------------------------------------------------------


def _start_node(
    fed: Federation, state_dir: Path, port: int, *extra: str, ca: Path | None = None
) -> None:
    """``giot-node run`` against ``fed``'s SuperLink: TLS with ``ca``, else ``--insecure``."""
    tls = ["--insecure"] if ca is None else ["--root-certificates", str(ca)]
    fed.start(
        "node",
        "python",
        "-m",
        "giot_node",
        "run",
        "--state-dir",
        str(state_dir),
        "--superlink",
        fed.address,
        *tls,
        "--listen",
        f"127.0.0.1:{port}",
        "--no-advertise",
        "--deadline-s",
        "30",
        *extra,
        env=NODE_ENV,
    )


def _supernode_pids(node_pid: int) -> list[int]:
    pids = []
    for pid in procs.descendants(node_pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"flower-supernode" in cmdline and procs.alive(pid):
            pids.append(pid)
    return pids


def _path_of(pid: int) -> str:
    """``PATH`` in the environment of process ``pid``."""
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next(e for e in env if e.startswith(b"PATH=")).decode()[5:]


async def _hub(
    session: aiohttp.ClientSession, port: int, token: str, within: float = 20.0
) -> tuple[aiohttp.ClientWebSocketResponse, proto.Frame]:
    """Connect to a node process as the integration does (retrying while it starts): welcome."""
    deadline = time.monotonic() + within
    while True:
        try:
            ws = await session.ws_connect(
                f"http://127.0.0.1:{port}/giot", max_msg_size=proto.MAX_FRAME_BYTES
            )
            break
        except aiohttp.ClientConnectionError:
            assert time.monotonic() < deadline, f"the node did not listen on {port}"
            await asyncio.sleep(0.2)
    challenge = proto.decode(await ws.receive_bytes(timeout=5))
    proof = proto.proof(token, challenge.body["nonce"])
    await ws.send_bytes(proto.encode("auth", {"proof": proof, "protocol": 1, "hub": "t"}))
    welcome = proto.decode(await ws.receive_bytes(timeout=5))
    assert welcome.kind == "welcome", welcome.body
    return ws, welcome


async def _status(ws: aiohttp.ClientWebSocketResponse, connected: bool, within: float) -> None:
    """Wait for a status frame saying ``connected``."""
    deadline = time.monotonic() + within
    while True:
        frame = proto.decode(await ws.receive_bytes(timeout=max(0.1, deadline - time.monotonic())))
        if frame.kind == "status" and frame.body["connected"] is connected:
            return


async def test_run_restarts_the_supernode_and_stops_on_sigterm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No SuperLink needed: the SuperNode keeps retrying, which is all this test watches."""
    fed = Federation(tmp_path)
    token = _init(tmp_path / "node", capsys)
    port = free_ports(1)[0]
    try:
        _start_node(fed, tmp_path / "node", port)
        node = fed.procs["node"]
        async with aiohttp.ClientSession() as session:
            ws, welcome = await _hub(session, port, token)
            if not welcome.body["connected"]:
                await _status(ws, True, 20)
            first = _supernode_pids(node.pid)
            assert len(first) == 1, fed.logs()
            clientapp_script = (tmp_path / "node" / "bin" / "flwr-clientapp").read_text()
            assert sys.executable in clientapp_script
            assert "-m giot_node.clientapp" in clientapp_script
            assert _path_of(first[0]).split(os.pathsep)[0] == str(tmp_path / "node" / "bin")

            os.kill(first[0], signal.SIGKILL)  # the SuperNode dies: status, then a new one
            await _status(ws, False, 10)
            await _status(ws, True, 20)
            second = _supernode_pids(node.pid)
            assert len(second) == 1, fed.logs()
            assert second != first
            assert "restarting in 1 s" in fed.log("node")

            spawned = procs.descendants(node.pid)
            os.kill(node.pid, signal.SIGTERM)
            assert node.wait(timeout=30) == 0, fed.logs()
            last = await ws.receive(timeout=5)  # the SuperNode stopped, then the node closes
            assert proto.decode(last.data).body["connected"] is False
            assert await _closed(ws)
        assert not [p for p in spawned if procs.alive(p)], fed.logs()
        assert not (tmp_path / "node" / "bridge.sock").exists()
    finally:
        fed.stop()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Federation, str, int]]:
    """A SuperLink and ``giot-node run --insecure`` against it (shared by the tests below)."""
    tmp = tmp_path_factory.mktemp("fed")
    fed = Federation(tmp)
    try:
        db = str(tmp / "superlink.db")
        fed.start(
            "superlink", "flower-superlink", "--insecure", "--port", str(fed.port), "--database", db
        )
        state = NodeState(tmp / "node")
        token = state.init().token
        assert token is not None
        port = free_ports(1)[0]
        _start_node(fed, state.root, port)
        fed.wait_nodes(1, timeout=60)
        yield fed, token, port
    finally:
        fed.stop()


class FakeHub:
    """Answers tasks as a hub would: a small random GSFS update of what it received."""

    def __init__(self) -> None:
        self.tasks: list[proto.Frame] = []
        self.rng = np.random.default_rng(0)

    def answer(self, task: proto.Frame) -> bytes:
        self.tasks.append(task)
        config, task_id = task.body["config"], task.body["task_id"]
        metrics: dict[str, float] = {"num-examples": 16}
        arrays: dict[str, np.ndarray] = {}
        if task.body["kind"] == "train":
            held = task.arrays
            update = {
                k: (self.rng.standard_normal(v.shape) * 1e-3).astype(np.float32)
                for k, v in held.items()
            }
            enc = gsfs_codec.encode(update, held, int(config["gsfs-budget"]))
            arrays = gsfs_codec.pack(enc.payload, {k: v.shape for k, v in held.items()})
            metrics |= {
                "train-loss": 1.0,
                "compute-s": 0.01,
                "local-steps": config["local-steps"],
                "state-id": config["new-state"],
                "downlink-ok": 1,
            }
        else:
            metrics["eval-loss"] = 1.0
        body = {"task_id": task_id, "status": "ok", "reason": "", "metrics": metrics}
        return proto.encode("result", body, arrays)

    async def serve(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.BINARY:
                break
            frame = proto.decode(msg.data)
            if frame.kind == "task":
                await ws.send_bytes(self.answer(frame))


async def _flwr_run(fed: Federation, app: Path, home: str, run_config: str) -> tuple[int, str]:
    env = fed.env(home)
    assert os.environ["FLWR_HOME"] == env["FLWR_HOME"]  # flwr_config writes where flwr run reads
    assert flwr_config.main(["remote", fed.address, "--insecure", "--name", "giot-test"]) == 0
    cmd = [str(BIN / "flwr"), "run", str(app), "giot-test", "--stream", "--run-config", run_config]
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        cwd=fed.tmp,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
    except TimeoutError:
        proc.kill()
        pytest.fail(f"flwr run did not finish in 120 s{fed.logs()}")
    return int(proc.returncode or 0), out.decode(errors="replace")


async def test_flwr_run_trains_through_the_hub(
    deployment: tuple[Federation, str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    fed, token, port = deployment
    monkeypatch.setenv("FLWR_HOME", str(fed.tmp / "home-cli"))
    hub = FakeHub()
    async with aiohttp.ClientSession() as session:
        ws, _ = await _hub(session, port, token)
        serving = asyncio.create_task(hub.serve(ws))
        app = stage_app(fed.tmp / "giot-app")
        ckpt = fed.tmp / "checkpoints"
        run_config = {
            **RUN_CONFIG,
            "num-server-rounds": 1,
            "min-nodes": 1,
            "strategy": "gsfs",
            "checkpoint-dir": str(ckpt),
        }
        rc, out = await _flwr_run(fed, app, "home-cli", run_config_arg(run_config))
        await ws.close()
        serving.cancel()
    why = f"\n===== flwr run (rc {rc}) =====\n{out[-6000:]}{fed.logs()}"
    assert rc == 0, why
    kinds = [t.body["kind"] for t in hub.tasks]
    assert "train" in kinds, why
    train = next(t for t in hub.tasks if t.body["kind"] == "train")
    assert (train.body["round"], train.body["deadline_s"]) == (1, 60.0), why
    init = GIoTModel.init(model_config(RunConfig.load(run_config)), seed=0).params
    assert sorted(train.arrays) == sorted(init), why
    for k, v in init.items():
        np.testing.assert_array_equal(train.arrays[k], v)
    last = load_latest(ckpt)
    assert last is not None, why
    round_1 = last.meta["history"][0]
    assert (round_1["asked"], round_1["accepted"], round_1["rejected"]) == (1, 1, 0), why


async def test_untrusted_app_is_refused_and_never_runs(
    deployment: tuple[Federation, str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    fed, _, _ = deployment
    monkeypatch.setenv("FLWR_HOME", str(fed.tmp / "home-probe"))
    app = fed.tmp / "probe-app"
    marker = fed.tmp / "probe-ran"
    (app / "probe").mkdir(parents=True)
    (app / "pyproject.toml").write_text(
        """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "probe"
version = "1.0.0"
description = "an app of another publisher"
license = "Apache-2.0"
dependencies = ["flwr"]

[tool.flwr.app]
publisher = "other"

[tool.flwr.app.components]
serverapp = "probe.server:app"
clientapp = "probe.client:app"

[tool.flwr.app.config]
rounds = 1
""",
        "utf-8",
    )
    (app / "probe" / "__init__.py").write_text("", "utf-8")
    (app / "probe" / "client.py").write_text(
        f"""from pathlib import Path

from flwr.app import Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

MARKER = Path({str(marker)!r})
MARKER.write_text("imported")  # any of this app's code running on the node leaves a trace
app = ClientApp()


@app.train()
def train(msg, context):
    MARKER.write_text("trained")
    return Message(RecordDict({{"metrics": MetricRecord({{"num-examples": 1}})}}), reply_to=msg)
""",
        "utf-8",
    )
    (app / "probe" / "server.py").write_text(
        """import logging
import time

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import ServerApp

LOG = logging.getLogger("flwr.probe")
app = ServerApp()


@app.main()
def main(grid, context):
    nodes = []
    for _ in range(120):
        nodes = list(grid.get_node_ids())
        if nodes:
            break
        time.sleep(0.5)
    msg = Message(
        RecordDict({"config": ConfigRecord({"server-round": 1})}),
        dst_node_id=nodes[0],
        message_type=MessageType.TRAIN,
    )
    for reply in grid.send_and_receive([msg], timeout=60):
        LOG.info("probe reply: %s", reply.error.reason if reply.has_error() else "content")
""",
        "utf-8",
    )
    rc, out = await _flwr_run(fed, app, "home-probe", "rounds=1")
    why = f"\n===== flwr run (rc {rc}) =====\n{out[-6000:]}{fed.logs()}"
    assert rc == 0, why
    assert "probe reply: untrusted_app: other/probe" in out, why
    assert "untrusted_app: other/probe" in fed.log("node"), why
    assert not marker.exists(), why
    assert not (fed.tmp / "home-node" / "apps").exists(), why  # no FAB was ever installed


# -- giot-server: TLS, node authentication, revocation, restart ---------------------------------

REFUSED = "Failed to activate SuperNode"  # flower-supernode's words for a key nobody enrolled
RECONNECTED = "Connection successful after"  # Flower's retry, once the SuperLink answers again


def _tls_setup(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path, str]:
    """``giot-server init``, ``giot-node init``, ``giot-server enrol``: server home, node, token."""
    home, node_dir = tmp_path / "server", tmp_path / "node"
    done = gs(home, "init")
    assert done.returncode == 0, done.stderr
    assert {"127.0.0.1", "localhost"} <= set(server_names(home / "server.pem"))  # loopback
    token = _init(node_dir, capsys)
    done = gs(home, "enrol", str(node_dir / "supernode.key.pub"), "--name", "home")
    assert done.returncode == 0, done.stderr
    return home, node_dir, token


def _serve_config(**overrides: bool | int | float | str) -> str:
    """One short round of the hubs' model (no n-embd: ``giot-server run`` gives their shapes)."""
    config = {k: v for k, v in RUN_CONFIG.items() if k != "n-embd"}
    return run_config_arg(config | {"num-server-rounds": 1, "min-nodes": 1} | overrides)


async def _until(check: Callable[[], bool], within: float, why: Callable[[], str]) -> float:
    """Wait (the hub serving meanwhile) until ``check()``; the seconds it took."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < within, f"not within {within} s{why()}"
        await asyncio.sleep(0.2)
    return time.monotonic() - start


def _superlink_log(home: Path) -> str:
    path = home / "logs" / "superlink.log"
    return path.read_text(errors="replace") if path.exists() else ""


def _why(fed: Federation, home: Path) -> Callable[[], str]:
    return lambda: f"{fed.logs()}\n===== superlink.log =====\n{_superlink_log(home)[-4000:]}"


async def _start_server(
    fed: Federation, name: str, home: Path, run_config: str, wait: bool = True
) -> None:
    """``giot-server run`` (TLS, node authentication on) on ``fed``'s port; ``wait``: till ready."""
    fed.start(
        name,
        "python",
        "-m",
        "giot_server",
        "--home",
        str(home),
        "--port",
        str(fed.port),
        "--no-advertise",
        "--no-status-page",
        "--run-config",
        run_config,
        env=NODE_ENV,
    )
    proc = fed.procs[name]
    if wait:
        ready = home / "server.json"
        await _until(lambda: ready.exists() or proc.poll() is not None, 60, _why(fed, home))
        assert proc.poll() is None, _why(fed, home)()


def _stamps(home: Path, text: str) -> list[float]:
    """Unix times of the SuperLink's (uvicorn's) log lines that contain ``text``."""
    out = []
    for line in _superlink_log(home).splitlines():
        if text in line:
            with contextlib.suppress(IndexError, ValueError):
                out.append(dt.datetime.fromisoformat(line.split()[0]).timestamp())
    return out


async def _exit_code(fed: Federation, name: str, home: Path, within: float) -> int:
    proc = fed.procs[name]
    await _until(lambda: proc.poll() is not None, within, _why(fed, home))
    return int(proc.returncode)


async def _stop_server(fed: Federation, name: str, home: Path) -> int:
    """SIGTERM it once (``Federation.kill`` signals its group and itself: two); its exit code."""
    fed.procs[name].send_signal(signal.SIGTERM)
    return await _exit_code(fed, name, home, 45)


async def test_tls_node_trains_through_the_hub_and_its_revoked_key_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home, node_dir, token = _tls_setup(tmp_path, capsys)
    fed, hub, port = Federation(tmp_path), FakeHub(), free_ports(1)[0]
    why = _why(fed, home)
    try:
        _start_node(fed, node_dir, port, ca=home / "ca.pem")
        async with aiohttp.ClientSession() as session:
            ws, _ = await _hub(session, port, token)
            serving = asyncio.create_task(hub.serve(ws))
            await _start_server(fed, "server", home, _serve_config())
            assert await _exit_code(fed, "server", home, 90) == 0, why()
            assert "--root-certificates" in fed.log("node"), why()
            assert "--insecure" not in fed.log("node"), why()
            assert _superlink_log(home).count("Activated node_id") == 1, why()
            train = [t for t in hub.tasks if t.body["kind"] == "train"]
            assert [t.body["round"] for t in train] == [1], why()
            hub_model = ModelManager(None, Vocabulary.default()).model.params  # vocab 990, 64 wide
            shapes = {k: v.shape for k, v in hub_model.items()}
            assert {k: v.shape for k, v in train[0].arrays.items()} == shapes, why()
            rounds = read_history(home / "checkpoints").rounds
            assert [(r["round"], r["asked"], r["accepted"]) for r in rounds] == [(1, 1, 1)], why()

            # Revoked (the server is down: applied at its start), then round 2 of the same run:
            # the server waits for a node, the node's key is refused, the hub hears of no task.
            done = gs(home, "revoke", str(node_dir / "supernode.key.pub"))
            assert done.returncode == 0, done.stderr
            seen, refused = len(hub.tasks), fed.log("node").count(REFUSED)
            mark = len(_superlink_log(home))
            config = _serve_config(**{"num-server-rounds": 2})
            await _start_server(fed, "server-revoked", home, config)
            await _until(lambda: fed.log("node").count(REFUSED) >= refused + 2, 60, why)
            assert "resuming after round 1" in fed.log("server-revoked"), why()
            refusal = "No SuperNode found with the given public key"  # the SuperLink's side
            assert refusal in _superlink_log(home)[mark:], why()
            assert "Activated node_id" not in _superlink_log(home)[mark:], why()
            status = json.loads(gs(home, "status").stdout)
            assert (status["enrolled"], status["nodes"]) == ({}, []), status
            assert await _stop_server(fed, "server-revoked", home) == 0, why()
            assert len(hub.tasks) == seen, why()
            assert len(read_history(home / "checkpoints").rounds) == 1, why()
            await ws.close()
            serving.cancel()
    finally:
        fed.stop()


async def test_the_node_reconnects_when_the_server_restarts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The SuperNode outlives the SuperLink and comes back by itself (Flower's retries).

    It prints (``-s``) how long the SuperLink was down and how long after it came up the node
    was back. After a longer outage Flower's backoff (full jitter, at most 20 s between tries)
    adds up to 20 s.
    """
    home, node_dir, token = _tls_setup(tmp_path, capsys)
    fed, hub, port = Federation(tmp_path), FakeHub(), free_ports(1)[0]
    why = _why(fed, home)
    try:
        _start_node(fed, node_dir, port, ca=home / "ca.pem")
        async with aiohttp.ClientSession() as session:
            ws, _ = await _hub(session, port, token)
            serving = asyncio.create_task(hub.serve(ws))
            # A run that waits for a second node: this one activates, no round starts.
            await _start_server(fed, "server", home, _serve_config(**{"min-nodes": 2}))
            await _until(lambda: "Activated node_id" in _superlink_log(home), 60, why)
            assert await _stop_server(fed, "server", home) == 0, why()
            assert hub.tasks == [], why()

            mark = len(fed.log("node"))
            await _start_server(fed, "server-again", home, _serve_config(), wait=False)

            def back() -> bool:
                after = fed.log("node")[mark:]
                return RECONNECTED in after or "SuperNode ID" in after  # or a new SuperNode

            await _until(back, 90, why)
            back_at = time.time()
            await _until(lambda: bool(hub.tasks), 60, why)
            task_at = time.time()
            assert await _exit_code(fed, "server-again", home, 90) == 0, why()
            rounds = read_history(home / "checkpoints").rounds
            assert [(r["round"], r["accepted"]) for r in rounds] == [(1, 1)], why()
            ended, up = _stamps(home, "Finished server process"), _stamps(home, "Uvicorn running")
            restarts = fed.log("node").count("flower-supernode exited")
            if ended and len(up) == 2:
                print(
                    f"\nSuperLink down {up[1] - ended[0]:.1f} s; the node back "
                    f"{back_at - up[1]:.1f} s after it came up, the first task at the hub "
                    f"{task_at - up[1]:.1f} s after; SuperNode restarted {restarts} time(s)"
                )
            await ws.close()
            serving.cancel()
    finally:
        fed.stop()
