"""Two homes federate end to end: real Home Assistants, real GIoT nodes, a real giot-server.

Everything is a real process on loopback: `giot-server run` (SuperLink + the GSFS ServerApp
through `flwr run`), one `giot-node run` per home (its Flower SuperNode, the WebSocket its Home
Assistant connects to) and one `python -m homeassistant` per home with GIoT set up through the
REST calls the frontend makes. Each home gets its own traffic: NetFlow v9 datagrams over UDP from
its own devices, and state changes of the demo devices it watches. Between each node and the
SuperLink sits a relay that keeps every byte the node sent; the test searches those bytes for
anything of either home.

One federation, in order: three rounds with both homes (the global model changes, both homes
load it and keep detecting); a node killed (SIGKILL) in the middle of a round (the round completes
without it, its Home Assistant keeps detecting, the node comes back and rejoins); a Home Assistant
restarted in the middle of a round (it rejoins, its error-feedback residual intact); the server
stopped and started again (it resumes from its checkpoint, the nodes reconnect).

The link between node and SuperLink is `--insecure` here so that the relay sees plain bytes
(tests/server/test_node.py runs the node with TLS and node authentication).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.capture import CaptureRelay
from tests.e2e.hass_api import HassApi
from tests.e2e.home import Home, send_datagrams
from tests.ha.real_hass import RealHass, run_real_hass

ROOT = Path(__file__).resolve().parents[2]
SERVER_BIN = ROOT / ".venv-server" / "bin"
HASS_PYTHON = str(ROOT / ".venv" / "bin" / "python")  # Home Assistant's world (Python 3.14)
ROUNDS = 8
RUN_CONFIG = (
    f"num-server-rounds={ROUNDS} min-nodes=2 fraction-train=1.0 fraction-evaluate=1.0 "
    "local-steps=2 gsfs-min-steps=1 gsfs-max-steps=2 round-timeout=90.0 "
    "gsfs-initial-deadline-s=60.0"
)
LIGHTS = ("light.bed_light", "light.ceiling_lights", "light.kitchen_lights")


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(what: str, check: Callable[[], Any], timeout: float, logs: Callable[[], str]) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        if value := check():
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}{logs()}")
        time.sleep(0.25)


class Processes:
    """The server-world daemons of the test (own process groups, logs in files)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *cmd: str) -> None:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env |= {
            "PATH": f"{SERVER_BIN}{os.pathsep}{env.get('PATH', '')}",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_TELEMETRY_ENABLED": "0",
        }
        with (self.tmp / f"{name}.log").open("ab") as log:
            self.procs[name] = subprocess.Popen(
                [str(SERVER_BIN / cmd[0]), *cmd[1:]],
                cwd=self.tmp,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def signal(self, name: str, sig: signal.Signals) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            os.killpg(proc.pid, sig)

    def stop(self, name: str, timeout: float = 60.0) -> None:
        self.signal(name, signal.SIGTERM)
        try:
            self.procs[name].wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.signal(name, signal.SIGKILL)
            self.procs[name].wait(timeout=10)

    def kill9(self, name: str) -> None:
        """SIGKILL the whole group: the node, its SuperNode, SuperExec and ClientApp."""
        self.signal(name, signal.SIGKILL)
        self.procs[name].wait(timeout=10)

    def stop_all(self) -> None:
        for name in list(self.procs):
            if self.procs[name].poll() is None:
                self.stop(name)


@dataclass
class House:
    """One home: its traffic, its node and its Home Assistant."""

    home: Home
    tmp: Path
    ws_port: int = field(default_factory=_free_port)
    udp_port: int = field(default_factory=lambda: _free_port(socket.SOCK_DGRAM))
    http_port: int = field(default_factory=_free_port)  # kept across restarts (hass stores it)
    relay: CaptureRelay | None = None
    hass: RealHass | None = None
    api: HassApi | None = None
    token: str = ""
    stack: ExitStack = field(default_factory=ExitStack)

    @property
    def name(self) -> str:
        return self.home.name

    @property
    def node_dir(self) -> Path:
        return self.tmp / f"node-{self.name}"

    @property
    def config(self) -> Path:
        return self.tmp / f"hass-{self.name}"

    def state(self, entity_id: str) -> str | None:
        assert self.api is not None
        try:
            return str(self.api.call(f"/api/states/{entity_id}")["state"])
        except OSError:
            return None

    def start_hass(self) -> None:
        self.stack = ExitStack()
        self.hass = self.stack.enter_context(
            run_real_hass(
                self.config, extra_yaml="demo:\n", python=HASS_PYTHON, port=self.http_port
            )
        )
        token = self.api.token if self.api else ""
        self.api = HassApi(self.hass.base)
        self.api.token = token

    def stop_hass(self) -> None:
        self.stack.close()
        self.hass = None

    def residual(self) -> dict[str, str]:
        """Digest of the hub's error-feedback residual on disk (federation/residual.npz)."""
        root = self.config / ".storage" / "giot"
        return {
            str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("federation/residual.npz"))
        }


@dataclass
class World:
    tmp: Path
    procs: Processes
    houses: list[House]
    superlink_port: int = field(default_factory=_free_port)

    @property
    def server_home(self) -> Path:
        return self.tmp / "server"

    def logs(self) -> str:
        out = []
        for name in self.procs.procs:
            out.append(f"\n===== {name} =====\n{self.procs.log(name)[-5000:]}")
        for house in self.houses:
            if house.hass is not None:
                lines = [line for line in house.hass.log_lines() if "giot" in line.lower()]
                out.append(
                    f"\n===== hass {house.name} (giot lines) =====\n" + "\n".join(lines[-60:])
                )
        return "".join(out)

    def start_server(self) -> None:
        self.procs.start(
            "server",
            "giot-server",
            "run",
            "--home",
            str(self.server_home),
            "--insecure",
            "--port",
            str(self.superlink_port),
            "--no-advertise",
            "--no-status-page",
            "--run-config",
            RUN_CONFIG,
        )

    def start_node(self, house: House) -> None:
        assert house.relay is not None
        self.procs.start(
            f"node-{house.name}",
            "giot-node",
            "run",
            "--state-dir",
            str(house.node_dir),
            "--superlink",
            f"127.0.0.1:{house.relay.port}",
            "--insecure",
            "--listen",
            f"127.0.0.1:{house.ws_port}",
            "--no-advertise",
            "--deadline-s",
            "90",
        )

    def rounds(self) -> list[dict[str, Any]]:
        """The server's round history (one line per finished round; a restart may repeat one)."""
        path = self.server_home / "checkpoints" / "rounds.jsonl"
        if not path.exists():
            return []
        lines = []
        for line in path.read_text().splitlines():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return lines

    def last_round(self) -> dict[str, Any] | None:
        rounds = self.rounds()
        return rounds[-1] if rounds else None

    def wait_round(self, n: int, timeout: float = 240.0) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            last = [r for r in self.rounds() if r["round"] == n]
            return last[-1] if last else None

        return _wait(f"round {n}", done, timeout, self.logs)  # type: ignore[no-any-return]

    def wait_task(self, house: House, n: int, timeout: float = 240.0) -> None:
        """Until ``house``'s node has handed round ``n``'s train task to its Home Assistant."""
        _wait(
            f"round {n}'s train task at {house.name}",
            lambda: any(
                "train task" in line and f"round {n}) sent to hub" in line
                for line in self.procs.log(f"node-{house.name}").splitlines()
            ),
            timeout,
            self.logs,
        )


def _init_node(house: House) -> str:
    out = subprocess.run(
        [str(SERVER_BIN / "giot-node"), "init", "--state-dir", str(house.node_dir)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    return out[out.index(next(line for line in out if line.startswith("pairing token"))) + 1]


def _set_up_giot(house: House) -> None:
    """Onboard, pair GIoT with the home's node, watch its lights, listen for its NetFlow."""
    api = house.api
    assert api is not None
    api.onboard()
    created = api.flow(
        "/api/config/config_entries/flow",
        {"handler": "giot"},
        {"node_host": "127.0.0.1", "node_port": house.ws_port, "node_token": house.token},
    )
    assert created["type"] == "create_entry", created
    entry_id = created["result"]["entry_id"]
    devices = [
        api.call("/api/template", {"template": f"{{{{ device_id('{light}') }}}}"}, raw=True)
        for light in LIGHTS
    ]
    assert all(devices), devices
    options = api.flow(
        "/api/config/config_entries/options/flow",
        {"handler": entry_id},
        {
            "devices": devices,
            "netflow_port": house.udp_port,
            "sensitivity": "medium",
            "federation": True,
            "retention_days": 30,
        },
    )
    assert options["type"] == "create_entry", options


def _feed(house: House, minutes: int, offset_min: int = 0) -> None:
    """``minutes`` of the home's traffic: NetFlow datagrams and light switches."""
    house.home.start = time.time() - 60 * (minutes - offset_min)
    send_datagrams(house.udp_port, house.home.datagrams(minutes))
    assert house.api is not None
    for i in range(6):
        light = LIGHTS[i % len(LIGHTS)]
        service = "turn_on" if i % 2 == 0 else "turn_off"
        house.api.call(f"/api/services/light/{service}", {"entity_id": light})
    for i, entity in enumerate(house.home.entities):
        house.api.set_state(entity, f"{house.name}-power-{i % 3}")


@contextmanager
def _world(tmp: Path) -> Iterator[World]:
    procs = Processes(tmp)
    houses = [
        House(Home("alpha", "192.168.77", seed=1), tmp),
        House(Home("bravo", "10.31.4", seed=2), tmp),
    ]
    world = World(tmp, procs, houses)
    try:
        yield world
    finally:
        procs.stop_all()
        for house in houses:
            house.stop_hass()
            if house.relay is not None:
                house.relay.close()


def _score_sensor_updates(house: House) -> dict[str, str]:
    assert house.api is not None
    return {
        s["entity_id"]: s["last_updated"]
        for s in house.api.call("/api/states")
        if s["entity_id"].endswith("_anomaly_score")
    }


def _keeps_detecting(world: World, house: House) -> None:
    """New traffic after the rounds moves the home's anomaly score sensors."""
    before = _score_sensor_updates(house)
    _feed(house, 10)
    _wait(
        f"{house.name} to score new traffic",
        lambda: any(
            before.get(k) != v for k, v in _score_sensor_updates(house).items() if k in before
        ),
        60,
        world.logs,
    )


def test_two_homes_federate_and_survive_failures(tmp_path: Path) -> None:
    with _world(tmp_path) as world:
        alpha, bravo = world.houses
        for house in world.houses:
            house.token = _init_node(house)
            house.relay = CaptureRelay(("127.0.0.1", world.superlink_port))
            world.start_node(house)
            house.start_hass()
            _set_up_giot(house)
            _wait(
                f"{house.name} linked to its node",
                lambda h=house: h.state("sensor.giot_federation_status") == "connected",
                60,
                world.logs,
            )
            _feed(house, 90)
        versions = {h.name: h.state("sensor.giot_model_version") for h in world.houses}

        # 1. three rounds with both homes
        world.start_server()
        for n in (1, 2, 3):
            line = world.wait_round(n)
            assert line["accepted"] == 2, line
        rounds = world.rounds()
        assert len({r["model_sha256"] for r in rounds[:3]}) == 3  # the global model changed
        for house in world.houses:
            _wait(
                f"{house.name} to load the global model of round 3 or later",
                lambda h=house: (h.state("sensor.giot_model_origin") or "").startswith("global"),
                60,
                world.logs,
            )
            assert house.state("sensor.giot_model_version") != versions[house.name]
            assert int(float(house.state("sensor.giot_federation_round") or 0)) >= 3
            _keeps_detecting(world, house)

        # 2. bravo's node killed in the middle of round 5: the round completes without it
        world.wait_task(bravo, 5)
        world.procs.kill9("node-bravo")
        line = world.wait_round(5)
        assert line["accepted"] == 1, line
        _keeps_detecting(world, bravo)
        world.start_node(bravo)  # same state directory: same key, id and token

        # 3. alpha's Home Assistant restarted in the middle of round 6
        world.wait_task(alpha, 6)
        alpha.stop_hass()
        kept = alpha.residual()
        assert kept, "no residual on disk"
        alpha.start_hass()
        assert alpha.residual() == kept  # the restart read it back; nothing reset or rewritten
        world.wait_round(6)

        # 4. the server stops after round 6 and resumes from its checkpoint
        world.procs.stop("server")
        world.start_server()
        for n in (7, 8):
            line = world.wait_round(n)
        last = world.rounds()[-2:]
        assert [r["round"] for r in last] == [7, 8]  # resumed, not restarted at round 1
        assert any(r["accepted"] == 2 for r in last), last  # both homes back
        for house in world.houses:
            assert house.state("sensor.giot_federation_status") in {"connected", "training"}
            _keeps_detecting(world, house)

        # 5. nothing of either home left through its node
        secrets = [s for h in world.houses for s in h.home.secrets()]
        secrets += [light.encode() for light in LIGHTS]
        secrets += [s.encode() for s in ("192.168.77.", "10.31.4.")]
        for house in world.houses:
            assert house.relay is not None
            sent = house.relay.sent()
            assert len(sent) > 100_000, f"{house.name}'s node sent only {len(sent)} bytes"
            leaked = [s for s in secrets if s in sent]
            assert leaked == [], f"{house.name}'s node sent {leaked!r}"
