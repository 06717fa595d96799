"""Real Flower processes for the deployment tests: ports, staged app, daemons and their teardown.

Shared by ``test_fl_deployment`` (a bare SuperLink and SuperNodes) and ``test_giot_server`` (the
``giot-server`` command with TLS and node authentication).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from giot_server import app, procs

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


def toml_value(value: bool | int | float | str) -> str:
    """``value`` as a run-config override writes it (TOML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, str) else repr(value)


def run_config_arg(config: dict[str, bool | int | float | str]) -> str:
    """``config`` as one ``--run-config`` argument."""
    return " ".join(f"{k}={toml_value(v)}" for k, v in config.items())


def stage_app(dest: Path) -> Path:
    """Copy the app's files the way ``flwr build`` picks them (``giot_server.app``)."""
    return app.stage_app(ROOT, dest)


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


class Federation:
    """The Flower processes of one test, their logs, and their teardown."""

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

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> None:
        """Start ``BIN/args[0] args[1:]`` with ``FLWR_HOME=tmp/home-NAME``, logging to NAME.log."""
        with (self.tmp / f"{name}.log").open("wb") as log:
            self.procs[name] = subprocess.Popen(
                [str(BIN / args[0]), *args[1:]],
                cwd=self.tmp,
                env=self.env(f"home-{name}") | (env or {}),
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
        spawned = [q for p in self.procs.values() for q in procs.descendants(p.pid)]
        procs.terminate([*(p.pid for p in self.procs.values()), *spawned], grace=5.0)
        for proc in self.procs.values():
            proc.wait(timeout=5)
        for name in self.procs:  # anything a daemon left behind in its own FLWR_HOME
            procs.stop_by_env("FLWR_HOME", str(self.tmp / f"home-{name}"))

    def kill(self, name: str, sig: signal.Signals = signal.SIGTERM) -> None:
        procs.kill(self.procs[name].pid, sig)
