"""The Flower SuperNode child: its command line, its ``flwr-clientapp``, and its supervision.

Flower's SuperNode (subprocess isolation) starts ``flower-superexec``, which starts one
``flwr-clientapp`` process per task, found by name on ``PATH`` (``TASK_TYPE_TO_COMMAND`` in
``flwr.supercore.constant``, ``SubprocessExecutor.launch``). The node puts ``STATE/bin`` first
on the child's ``PATH`` with its own ``flwr-clientapp`` there (``python -m giot_node.clientapp``),
so every task of every run goes through the node's ClientApp and no FAB's code ever runs here.
``flwr-agentapp`` (a run whose primary task is an agent app) is shadowed by a script that refuses.

What the ClientApp needs from the node travels in ``--node-config``: the bridge socket, the
trusted apps, the default deadline (``NODE_CONFIG_*`` keys).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shlex
import shutil
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from giot_node.state import NodeState

log = logging.getLogger(__name__)

NODE_CONFIG_BRIDGE = "giot-bridge"
NODE_CONFIG_TRUSTED = "giot-trusted-apps"  # comma-separated PUBLISHER/NAME
NODE_CONFIG_DEADLINE = "giot-deadline-s"
STOP_GRACE_S = 10.0
MAX_BACKOFF_S = 60.0


@dataclass(frozen=True)
class SuperNodeOptions:
    """How to reach the SuperLink, and what the ClientApp is told."""

    superlink: str
    root_certificates: Path | None  # None: --insecure
    trusted_apps: tuple[str, ...]
    deadline_s: float


def write_bin(state: NodeState) -> Path:
    """Write ``STATE/bin/flwr-clientapp`` (and the refusing ``flwr-agentapp``); return the dir."""
    state.bin_dir.mkdir(mode=0o700, exist_ok=True)
    scripts = {
        "flwr-clientapp": (
            "#!/bin/sh\n# Written by giot-node: every task goes through the node's ClientApp.\n"
            f'exec {shlex.quote(sys.executable)} -m giot_node.clientapp "$@"\n'
        ),
        "flwr-agentapp": (
            "#!/bin/sh\n# Written by giot-node: a home node runs no app code of the server's.\n"
            'echo "giot-node: agent apps are not run on a home node" >&2\nexit 1\n'
        ),
    }
    for name, text in scripts.items():
        path = state.bin_dir / name
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.chmod(0o700)
        tmp.replace(path)
    return state.bin_dir


def node_config(state: NodeState, opts: SuperNodeOptions) -> str:
    """Return the ``--node-config`` value (Flower parses ``key=value`` pairs as TOML)."""
    bridge = str(state.bridge_path)
    if "'" in bridge:  # a TOML literal string cannot hold one
        raise ValueError(f"the state directory path may not contain a quote: {bridge}")
    trusted = ",".join(opts.trusted_apps)
    return (
        f"{NODE_CONFIG_BRIDGE}='{bridge}' {NODE_CONFIG_TRUSTED}='{trusted}' "
        f"{NODE_CONFIG_DEADLINE}={float(opts.deadline_s)!r}"
    )


def supernode_executable() -> str:
    """``flower-supernode`` beside this interpreter, else on ``PATH``."""
    beside = Path(sys.executable).parent / "flower-supernode"
    if beside.is_file():
        return str(beside)
    found = shutil.which("flower-supernode")
    if found is None:
        raise FileNotFoundError("flower-supernode not found (is flwr installed?)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def supernode_command(state: NodeState, opts: SuperNodeOptions, runtime_port: int) -> list[str]:
    """``flower-supernode`` arguments; its Runtime API on loopback at ``runtime_port``."""
    cmd = [supernode_executable(), "--superlink", opts.superlink]
    if opts.root_certificates is None:
        cmd.append("--insecure")  # Flower refuses node authentication without TLS
    else:
        cmd += ["--root-certificates", str(opts.root_certificates)]
        cmd += ["--auth-supernode-private-key", str(state.key_path)]
    cmd += ["--node-config", node_config(state, opts)]
    cmd += ["--host", "127.0.0.1", "--port", str(runtime_port)]
    return cmd


def supernode_env(state: NodeState) -> dict[str, str]:
    """Return the node's environment, ``STATE/bin`` first on ``PATH`` (then this interpreter's)."""
    env = dict(os.environ)
    path = [str(state.bin_dir), str(Path(sys.executable).parent), env.get("PATH", "")]
    env["PATH"] = os.pathsep.join(p for p in path if p)
    env.setdefault("FLWR_HOME", str(state.root / "flwr"))  # never the user's ~/.flwr
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # a home node reports nothing on its own
    return env


def _die_with_parent() -> None:  # pragma: no cover (runs in the child before exec)
    """Linux: the SuperNode gets SIGTERM if the node dies without cleaning up (SIGKILL)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class Supervisor:
    """Run the SuperNode, restart it with backoff when it dies, stop its process group."""

    def __init__(
        self,
        command: Callable[[], list[str]],
        env: dict[str, str],
        on_change: Callable[[bool], Awaitable[None]],
    ) -> None:
        self.command = command
        self.env = env
        self.on_change = on_change
        self.starts = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop`` is set; the SuperNode and everything it started end with it."""
        loop = asyncio.get_running_loop()
        backoff = 1.0
        while not stop.is_set():
            cmd = self.command()
            log.info("starting %s", shlex.join(cmd))
            started = loop.time()
            proc = await asyncio.create_subprocess_exec(
                *cmd, env=self.env, start_new_session=True, preexec_fn=_die_with_parent
            )
            self.starts += 1
            await self.on_change(True)
            waiting = asyncio.ensure_future(proc.wait())
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not waiting.done():
                await self._terminate(proc, waiting)
                await self.on_change(False)
                return
            signal_group(proc.pid, signal.SIGKILL)  # its SuperExec and ClientApps, if left
            await self.on_change(False)
            if loop.time() - started > MAX_BACKOFF_S:
                backoff = 1.0
            log.warning(
                "flower-supernode exited with %s; restarting in %.0f s", proc.returncode, backoff
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff)
            backoff = min(2 * backoff, MAX_BACKOFF_S)

    async def _terminate(
        self, proc: asyncio.subprocess.Process, waiting: asyncio.Future[int]
    ) -> None:
        signal_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(waiting), STOP_GRACE_S)
        except TimeoutError:
            log.warning("flower-supernode ignored SIGTERM for %.0f s: killed", STOP_GRACE_S)
        signal_group(proc.pid, signal.SIGKILL)
        await waiting
        log.info("flower-supernode stopped (%s)", proc.returncode)
