"""GIoT's Flower app on Flower's real deployment engine: a SuperLink, two SuperNodes, ``flwr run``.

Unlike ``test_fl_simulation`` (Ray, in process), this starts the processes a real federation runs:
``flower-superlink --insecure`` and two ``flower-supernode --insecure``, each SuperNode with its own
``--node-config`` partition, on free localhost ports, all state under ``tmp_path``. A connection
written by ``fl_server.flwr_config`` (what ``scripts/federation remote`` does) into a temporary
``FLWR_HOME`` points ``flwr run --stream`` at the SuperLink, which ships the app bundle (FAB) to the
SuperExecs that start ``flwr-serverapp`` and ``flwr-clientapp`` processes. So the FAB build (the
``giot_engine`` symlink it skips), the run config and the Message API are all exercised for real.

The app is staged from the repository's own files (those ``fab-include`` names, the symlink, its
``pyproject.toml`` as it is) rather than built from the root: Flower's FAB builder walks the whole
folder, ``.venv*`` included, before filtering (12 s here). The SuperLink refuses run-config keys
that ``[tool.flwr.app.config]`` does not declare: that table is the one definition of the keys and
their defaults, and ``fl_server.run_config.RunConfig`` must read it whole (checked below, without
processes).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fl_server import flwr_config
from fl_server.checkpoint import load_checkpoint, load_latest
from fl_server.client_app import model_config
from fl_server.run_config import RunConfig, defaults
from giot_engine.model import GIoTModel

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the server venv: flwr, flower-superlink, flower-supernode, ...
RUN_CONFIG: dict[str, bool | int | float | str] = {
    "num-server-rounds": 2,
    "strategy": "gsfs",
    "local-steps": 2,
    "gsfs-max-steps": 2,
    "windows-per-node": 16,
    "batch-size": 8,
    "n-embd": 16,
    "round-timeout": 60.0,
}


def _toml(value: bool | int | float | str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, str) else repr(value)


def _app_table() -> dict[str, object]:
    app: dict[str, object] = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["tool"][
        "flwr"
    ]["app"]
    return app


def test_pyproject_declares_every_run_config_key_with_its_default() -> None:
    """A SuperLink refuses undeclared keys: every key the apps read comes from pyproject's table."""
    declared = _app_table()["config"]
    assert isinstance(declared, dict)
    assert defaults() == declared
    as_read = RunConfig.load().as_run_config()
    assert as_read == declared
    assert all(type(as_read[k]) is type(v) for k, v in declared.items())


def test_run_config_converts_overrides_and_refuses_unknown_keys() -> None:
    """As Flower passes them: an integer where a float is declared reads as that float."""
    cfg = RunConfig.load({"round-timeout": 60, "strategy": "fedavg"}, {"lr": 1})
    assert (cfg.round_timeout, cfg.strategy, cfg.lr) == (60.0, "fedavg", 1.0)
    assert type(cfg.round_timeout) is float
    assert cfg.with_overrides({"seed": 3}) == RunConfig.load({**cfg.as_run_config(), "seed": 3})
    with pytest.raises(KeyError, match="round-timout"):
        RunConfig.load({"round-timout": 60})


def stage_app(dest: Path) -> Path:
    """Copy the app's files the way ``flwr build`` picks them (see module docstring)."""
    dest.mkdir()
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    shutil.copy(ROOT / ".gitignore", dest / ".gitignore")
    patterns: list[str] = _app_table()["fab-include"]  # type: ignore[assignment]
    for pattern in patterns:
        for src in ROOT.glob(pattern):
            if src.is_file() and "__pycache__" not in src.parts:
                target = dest / src.relative_to(ROOT)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(src, target)
    (dest / "giot_engine").symlink_to(Path("custom_components", "giot", "engine"))
    return dest


def free_ports(n: int) -> list[int]:
    """Ports the kernel hands out now (held together, so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _descendants(pid: int) -> list[int]:
    """Children of ``pid``, recursively (Linux /proc; SuperExec starts its own sessions)."""
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


def _kill(pid: int, sig: signal.Signals) -> None:
    """Signal ``pid`` and the process group it leads (each daemon starts its own session)."""
    if pid != os.getpgrp():  # never the test's own group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _kill_by_home(home: Path) -> None:
    """Stop every process started with ``FLWR_HOME=home`` (``flwr run`` on a local connection
    leaves its own SuperLink running for the next run; this test's is the one with its home).
    """
    mark = f"FLWR_HOME={home}".encode()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = []
        for environ in Path("/proc").glob("[0-9]*/environ"):
            with contextlib.suppress(OSError):
                if mark in environ.read_bytes().split(b"\0"):
                    pids.append(int(environ.parent.name))
        pids = [p for p in pids if p != os.getpid()]
        for pid in pids:
            _kill(pid, sig)
        if not pids:
            return
        time.sleep(1.0)


class Federation:
    """The SuperLink and SuperNode processes of one test, their logs, and their teardown."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.port, *self.node_ports = free_ports(3)
        self.address = f"127.0.0.1:{self.port}"

    def env(self, home: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the FAB, not ROOT
        env |= {
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # SuperExec runs flwr-* by name
            "FLWR_HOME": str(self.tmp / home),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_TELEMETRY_ENABLED": "0",
        }
        return env

    def start(self, name: str, *args: str) -> None:
        with (self.tmp / f"{name}.log").open("wb") as log:
            self.procs[name] = subprocess.Popen(
                [str(BIN / args[0]), *args[1:]],
                cwd=self.tmp,
                env=self.env(f"home-{name}"),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # one process group per daemon, killed as a group
            )

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self) -> str:
        return "".join(f"\n===== {n} log =====\n{self.log(n)[-6000:]}" for n in self.procs)

    def wait_nodes(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.log("superlink").count("Activated node_id") < n:
            dead = [k for k, p in self.procs.items() if p.poll() is not None]
            assert not dead, f"{dead} exited{self.logs()}"
            assert time.monotonic() < deadline, f"{n} SuperNodes did not connect{self.logs()}"
            time.sleep(0.2)

    def stop(self) -> None:
        spawned = [q for p in self.procs.values() for q in _descendants(p.pid)]
        for pid in [*(p.pid for p in self.procs.values()), *spawned]:
            _kill(pid, signal.SIGTERM)
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        alive = [p.pid for p in self.procs.values() if p.poll() is None]
        for pid in alive + [q for q in spawned if Path(f"/proc/{q}").exists()]:
            _kill(pid, signal.SIGKILL)
        for proc in self.procs.values():
            proc.wait(timeout=5)


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Federation]:
    fed = Federation(tmp_path)
    try:
        db = str(tmp_path / "superlink.db")
        fed.start(
            "superlink", "flower-superlink", "--insecure", "--port", str(fed.port), "--database", db
        )
        for i, port in enumerate(fed.node_ports):
            fed.start(
                f"supernode{i}",
                "flower-supernode",
                "--insecure",
                "--superlink",
                fed.address,
                "--port",
                str(port),
                "--node-config",
                f"partition-id={i} num-partitions={len(fed.node_ports)}",
            )
        fed.wait_nodes(len(fed.node_ports), timeout=60)
        yield fed
    finally:
        fed.stop()


def test_flwr_run_on_real_superlink_and_supernodes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, federation: Federation
) -> None:
    cli_home = tmp_path / "home-cli"
    monkeypatch.setenv("FLWR_HOME", str(cli_home))  # never the user's ~/.flwr
    assert (
        flwr_config.main(["remote", federation.address, "--insecure", "--name", "giot-test"]) == 0
    )
    assert federation.address in (cli_home / "config.toml").read_text()
    app = stage_app(tmp_path / "giot")
    ckpt_dir = tmp_path / "checkpoints"
    run_config = {**RUN_CONFIG, "checkpoint-dir": str(ckpt_dir)}
    cmd = [str(BIN / "flwr"), "run", str(app), "giot-test", "--stream"]
    cmd += ["--run-config", " ".join(f"{k}={_toml(v)}" for k, v in run_config.items())]
    try:
        run = subprocess.run(
            cmd,
            cwd=tmp_path,
            env=federation.env("home-cli"),
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"flwr run did not finish in {err.timeout}s: {err.output!r}{federation.logs()}")
    out = run.stdout + run.stderr
    why = f"\n===== flwr run (rc {run.returncode}) =====\n{out[-6000:]}{federation.logs()}"
    assert run.returncode == 0, why
    assert "configure_train: round 2, 2 nodes" in out, why  # the ServerApp's log, streamed

    last = load_latest(ckpt_dir)
    assert last is not None, why
    assert last.server_round == 2, why
    history = last.meta["history"]
    assert [h["round"] for h in history] == [1, 2], why
    for h in history:
        assert h["asked"] == h["accepted"] == 2, (h, why)
        assert h["rejected"] == h["missed"] == 0, (h, why)
        assert h["uplink-bytes"] > 0, (h, why)
    for i in range(len(federation.node_ports)):  # each real SuperNode trained in both rounds
        assert federation.log(f"supernode{i}").count("Sending: train message") == 2, why

    init = GIoTModel.init(model_config(RunConfig.load(run_config)), seed=0).params
    first = load_checkpoint(ckpt_dir / "round-000001.npz").arrays
    assert sorted(last.arrays) == sorted(first) == sorted(init)
    assert any(not np.array_equal(first[k], init[k]) for k in init), "round 1 left the model"
    assert any(not np.array_equal(last.arrays[k], first[k]) for k in init), "round 2 left it"


def test_flwr_run_on_the_local_simulation_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's ``scripts/federation local`` + ``flwr run`` path: Flower's own local SuperLink
    with Ray-backed virtual SuperNodes, as the connection ``flwr_config`` writes it.
    """
    home = tmp_path / "home"
    monkeypatch.setenv("FLWR_HOME", str(home))
    assert flwr_config.main(["local", "--supernodes", "2", "--name", "giot-sim"]) == 0
    app = stage_app(tmp_path / "giot")
    ckpt_dir = tmp_path / "checkpoints"
    run_config = {**RUN_CONFIG, "num-server-rounds": 1, "checkpoint-dir": str(ckpt_dir)}
    cmd = [str(BIN / "flwr"), "run", str(app), "giot-sim", "--stream"]
    cmd += ["--run-config", " ".join(f"{k}={_toml(v)}" for k, v in run_config.items())]
    env = Federation(tmp_path).env("home")  # the venv's bin on PATH: flwr starts flower-superlink
    try:
        run = subprocess.run(
            cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240, check=False
        )
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"flwr run did not finish in {err.timeout}s: {err.output!r}")
    finally:
        _kill_by_home(home)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-6000:]
    last = load_latest(ckpt_dir)
    assert last is not None, out[-6000:]
    assert last.server_round == 1
    assert last.meta["history"][0]["accepted"] == 2
