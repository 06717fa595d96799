"""``giot-server run``: a SuperLink, the GSFS ServerApp through ``flwr run``, and a clean stop.

Everything lives under the server's home (``HOME``)::

    ca.pem ca.key server.pem server.key    TLS (giot-server init; keys 0600)
    signing.key signing.pub                Ed25519 key that signs models (giot-server init; 0600)
    base-model/                            round 0 (giot-server base-model; signed)
    enrolled/*.pub                         SuperNode public keys (giot-server enrol / revoke)
    superlink.db                           the SuperLink's state (node registrations, runs)
    checkpoints/round-NNNNNN.npz           the ServerApp's checkpoints (run-config checkpoint-dir)
    checkpoints/rounds.jsonl               one line per round (read by the status page)
    logs/                                  giot-server.log, superlink.log, run.log
    flwr/                                  FLWR_HOME of every Flower process of this server
    app/                                   the app as staged for ``flwr run`` (rewritten per run)
    server.json                            pid and address while the server runs

The SuperLink runs with TLS and ``--enable-supernode-auth`` unless ``--insecure`` (then without
both: Flower refuses node authentication without TLS). Every Flower process of this server has
``FLWR_HOME=HOME/flwr`` in its environment; on SIGINT/SIGTERM (and when the run ends) the run, the
SuperLink, everything they started (SuperExec, ``flwr-serverapp``) and anything else with that
``FLWR_HOME`` is stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from giot_engine.model_manager import N_EMBD, N_HEAD, N_LAYER, N_POSITIONS
from giot_engine.tokenizer import Vocabulary
from giot_server import procs
from giot_server.advertise import Advertiser, advertise
from giot_server.app import find_project, stage_app
from giot_server.certs import CertPaths, server_names
from giot_server.control import Control
from giot_server.enrolment import Enrolment
from giot_server.status_page import StatusConfig, StatusServer

SIGNING_KEY = "signing.key"  # fl_server.signing.KEY_FILE (imported there with cryptography)
SIGNING_PUB = "signing.pub"

log = logging.getLogger(__name__)

BIN = Path(sys.executable).parent  # the server venv: flwr, flower-superlink, flwr-serverapp ...
CONNECTION = "giot-server"
WILDCARD = {"0.0.0.0", "::", ""}


def _not_overridden(defaults: list[str], overrides: list[str]) -> list[str]:
    """Keep the ``key=value`` defaults whose key no override sets (Flower refuses a key twice)."""
    given = {part.split("=", 1)[0] for item in overrides for part in shlex.split(item)}
    return [item for item in defaults if item.split("=", 1)[0] not in given]


def hub_model_run_config() -> list[str]:
    """Return the model Home Assistant hubs run, as run-config overrides.

    ``[tool.flwr.app.config]`` defaults to a tiny model so that simulations take seconds; the
    hubs refuse a global model of any other shape ("incompatible_model"), so a real federation
    runs theirs.
    """
    model = {
        "vocab-size": len(Vocabulary.default().tokens),
        "n-positions": N_POSITIONS,
        "n-embd": N_EMBD,
        "n-layer": N_LAYER,
        "n-head": N_HEAD,
    }
    return [f"{key}={value}" for key, value in model.items()]


class ServerError(RuntimeError):
    """The server cannot start (a message for the user)."""


class Stopped(BaseException):
    """SIGINT or SIGTERM arrived."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class Home:
    """The paths of one server home."""

    root: Path

    @property
    def certs(self) -> CertPaths:
        return CertPaths(self.root)

    @property
    def flwr_home(self) -> Path:
        return self.root / "flwr"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def state(self) -> Path:
        return self.root / "server.json"

    @property
    def signing_key(self) -> Path:
        return self.root / SIGNING_KEY

    @property
    def signing_pub(self) -> Path:
        return self.root / SIGNING_PUB

    @property
    def base_model(self) -> Path:
        return self.root / "base-model"

    def running(self) -> dict[str, object] | None:
        """Return the running server's ``server.json``, or None when none runs."""
        try:
            state: dict[str, object] = json.loads(self.state.read_text("utf-8"))
        except (OSError, ValueError):
            return None
        pid = state.get("pid")
        return state if isinstance(pid, int) and procs.alive(pid) else None


def default_home() -> Path:
    """``$GIOT_SERVER_HOME``, else ``$XDG_DATA_HOME/giot-server`` (``~/.local/share``)."""
    if env := os.environ.get("GIOT_SERVER_HOME"):
        return Path(env).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "giot-server"


def control_for(home: Home) -> Control | None:
    """Return a Control API client of the server running on ``home``; None if none runs."""
    state = home.running()
    if state is None:
        return None
    root = None if state.get("insecure") else home.certs.ca_cert
    return Control(str(state["address"]), root)


@dataclass
class Options:
    """What ``giot-server run`` was asked."""

    home: Path
    host: str = "127.0.0.1"
    port: int = 8000
    insecure: bool = False
    app: Path | None = None
    run_config: list[str] = field(default_factory=list)
    advertise: bool = True
    ready_timeout: float = 60.0
    status: StatusConfig | None = None  # the status page; None: none


def _toml_str(value: str) -> str:
    return json.dumps(value)


class Server:
    """One ``giot-server run``."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.home = Home(opts.home)
        self.superlink: subprocess.Popen[bytes] | None = None
        self.flwr_run: subprocess.Popen[bytes] | None = None
        self.advertiser: Advertiser | None = None
        self.status_page: StatusServer | None = None
        self.tree: set[int] = set()
        self._pump: threading.Thread | None = None

    # -- checks -------------------------------------------------------------------------------
    def check(self) -> Path:
        """Refuse to start when something is missing; return the app project folder."""
        if self.opts.insecure:
            log.warning(
                "--insecure: the SuperLink runs WITHOUT TLS and WITHOUT SuperNode "
                "authentication; any SuperNode that reaches port %d can join and all traffic "
                "is readable. Use it for local tests only.",
                self.opts.port,
            )
        elif not self.home.certs.complete():
            raise ServerError(
                f"no TLS certificates in {self.home.root}: run `giot-server init` first "
                "(or `giot-server run --insecure` for a local test without TLS)"
            )
        if self.home.running() is not None:
            raise ServerError(f"a giot-server already runs on {self.home.root} (server.json)")
        if self.opts.host not in WILDCARD and not self.opts.insecure:
            names = server_names(self.home.certs.server_cert)
            if self.opts.host not in names:
                raise ServerError(
                    f"--host {self.opts.host} is not in the server certificate ({names}): "
                    f"run `giot-server init --force --san {self.opts.host}`"
                )
        if self.opts.host not in {"127.0.0.1", "localhost", "::1"}:
            log.warning(
                "listening on %s: Flower 1.41 serves its Control API (runs, node registration) "
                "on the same port as the Fleet API, without account authentication; expose it "
                "only to networks you trust",
                self.opts.host,
            )
        app = self.opts.app or find_project()
        if app is None or not (app / "pyproject.toml").is_file():
            raise ServerError("the GIoT app project was not found: give --app DIR")
        return app

    # -- processes ----------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the FAB's code
        env |= {
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # SuperExec runs flwr-* by name
            "FLWR_HOME": str(self.home.flwr_home),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_TELEMETRY_ENABLED": "0",
        }
        return env

    @property
    def address(self) -> str:
        """Where this machine reaches the SuperLink (loopback for a wildcard host)."""
        host = "127.0.0.1" if self.opts.host in WILDCARD else self.opts.host
        host = f"[{host}]" if ":" in host else host
        return f"{host}:{self.opts.port}"

    def _root_certs(self) -> Path | None:
        return None if self.opts.insecure else self.home.certs.ca_cert

    def start_superlink(self) -> None:
        certs = self.home.certs
        cmd = [str(BIN / "flower-superlink"), "--host", self.opts.host, "--port"]
        cmd += [str(self.opts.port), "--database", str(self.home.root / "superlink.db")]
        cmd += ["--disable-runtime-dependency-installation"]
        if self.opts.insecure:
            cmd += ["--insecure"]
        else:
            cmd += ["--ssl-certfile", str(certs.server_cert), "--ssl-keyfile"]
            cmd += [str(certs.server_key), "--ssl-ca-certfile", str(certs.ca_cert)]
            cmd += ["--enable-supernode-auth"]
        log.info("starting %s", " ".join(cmd))
        with (self.home.logs / "superlink.log").open("ab") as out:
            self.superlink = subprocess.Popen(
                cmd,
                cwd=self.home.root,
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own group: a terminal's Ctrl-C reaches us only
            )

    def wait_ready(self) -> None:
        """Wait until the Control API answers (then sync the enrolled keys)."""
        deadline = time.monotonic() + self.opts.ready_timeout
        last: BaseException | None = None
        while time.monotonic() < deadline:
            assert self.superlink is not None
            if self.superlink.poll() is not None:
                tail = (self.home.logs / "superlink.log").read_text(errors="replace")[-3000:]
                raise ServerError(f"the SuperLink exited ({self.superlink.returncode}):\n{tail}")
            try:
                with Control(self.address, self._root_certs()) as ctl:
                    if self.opts.insecure:
                        ctl.nodes()
                    else:
                        added, removed = ctl.sync(Enrolment(self.home.root).keys())
                        log.info(
                            "SuperNode auth on: %d enrolled key(s) registered now, %d "
                            "node(s) unregistered",
                            len(added),
                            len(removed),
                        )
                return
            except (Exception, SystemExit) as err:  # flwr's client may exit on errors
                last = err
                time.sleep(0.5)
        raise ServerError(f"the SuperLink did not answer in {self.opts.ready_timeout} s: {last}")

    def write_connection(self) -> None:
        """Write the ``giot-server`` connection into ``HOME/flwr/config.toml``."""
        os.environ["FLWR_HOME"] = str(self.home.flwr_home)  # Flower's config reader looks here
        from fl_server import flwr_config  # noqa: PLC0415 - after FLWR_HOME is set

        root = self._root_certs()
        conn: dict[str, object] = {"address": self.address}
        conn |= {"insecure": True} if root is None else {"root-certificates": str(root)}
        flwr_config.write(CONNECTION, conn, default=True)

    def start_run(self, app: Path) -> None:
        staged = self.home.root / "app"
        shutil.rmtree(staged, ignore_errors=True)
        stage_app(app, staged)
        config = [
            f"checkpoint-dir={_toml_str(str(self.home.checkpoints))}",
            *_not_overridden(
                [*hub_model_run_config(), *self.signing_run_config()], self.opts.run_config
            ),
            *self.opts.run_config,  # a run may still choose another model
        ]
        cmd = [str(BIN / "flwr"), "run", str(staged), CONNECTION, "--stream"]
        cmd += ["--run-config", " ".join(config)]
        log.info("starting %s", " ".join(cmd))
        self.flwr_run = subprocess.Popen(
            cmd,
            cwd=self.home.root,
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        assert self.flwr_run.stdout is not None
        self._pump = threading.Thread(
            target=_tee, args=(self.flwr_run.stdout, self.home.logs / "run.log"), daemon=True
        )
        self._pump.start()

    def signing_run_config(self) -> list[str]:
        """Sign with the home's key and start from its base model, where they exist."""
        config = []
        if self.home.signing_key.is_file():
            config.append(f"signing-key={_toml_str(str(self.home.signing_key))}")
        else:
            log.warning("no %s: global models go out unsigned", self.home.signing_key)
        if (self.home.base_model / "MANIFEST.json").is_file():
            config.append(f"base-model={_toml_str(str(self.home.base_model))}")
            log.info("round 0: the base model in %s", self.home.base_model)
        return config

    def stop(self) -> None:
        """Stop the run, the SuperLink and everything they started; idempotent."""
        started = [p for p in (self.flwr_run, self.superlink) if p is not None]
        for proc in started:
            self.tree |= set(procs.descendants(proc.pid))
        if started:
            log.info("stopping the run and the SuperLink")
        procs.terminate([p.pid for p in started], grace=10.0)
        for proc in started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        procs.terminate([p for p in self.tree if procs.alive(p)], grace=5.0)
        procs.stop_by_env("FLWR_HOME", str(self.home.flwr_home))
        if self._pump is not None:
            self._pump.join(timeout=5)
        if self.advertiser is not None:
            self.advertiser.close()
            self.advertiser = None
        if self.status_page is not None:
            self.status_page.stop()
            self.status_page = None
        self.home.state.unlink(missing_ok=True)

    # -- the whole run ------------------------------------------------------------------------
    def run(self) -> int:
        """Start, run the federation until its last round (or a signal), stop; the exit code."""
        app = self.check()
        for folder in (self.home.root, self.home.logs, self.home.checkpoints):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.home.flwr_home.mkdir(exist_ok=True, mode=0o700)
        procs.stop_by_env("FLWR_HOME", str(self.home.flwr_home))  # left by a killed server
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for sig in previous:
            signal.signal(sig, _raise_stopped)
        try:
            self.start_status_page()
            self.write_connection()
            self.start_superlink()
            self.wait_ready()
            state = {"pid": os.getpid(), "address": self.address, "insecure": self.opts.insecure}
            if self.status_page is not None:
                state["status-page"] = self.status_page.cfg.url
            self.home.state.write_text(json.dumps(state), "utf-8")
            log.info(
                "SuperLink ready on %s:%d (home %s)", self.opts.host, self.opts.port, self.home.root
            )
            if self.opts.advertise:
                self.advertiser = advertise(self.opts.host, self.opts.port, self._txt())
            self.start_run(app)
            assert self.flwr_run is not None
            rc = self.flwr_run.wait()
            log.info("flwr run ended (exit %d)", rc)
            return rc
        except Stopped as stop:
            log.info("%s: stopping", stop)
            return 0
        finally:
            for sig in previous:
                signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C does not cut the cleanup
            try:
                self.stop()
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    def start_status_page(self) -> None:
        """Serve the status page; a port in use costs the page, not the federation."""
        if self.opts.status is None:
            return
        page = StatusServer(self.opts.status)
        try:
            page.start()
        except OSError as err:
            log.warning("no status page: %s:%d: %s", page.cfg.host, page.cfg.port, err)
            return
        self.status_page = page

    def _txt(self) -> dict[str, str]:
        from flwr import __version__ as flwr_version  # noqa: PLC0415

        txt = {"tls": "0" if self.opts.insecure else "1", "version": str(flwr_version)}
        if not self.opts.insecure:
            from cryptography import x509  # noqa: PLC0415
            from cryptography.hazmat.primitives.serialization import Encoding  # noqa: PLC0415

            ca = x509.load_pem_x509_certificate(self.home.certs.ca_cert.read_bytes())
            txt |= {
                "auth": "1",
                "ca-sha256": hashlib.sha256(ca.public_bytes(Encoding.DER)).hexdigest(),
            }
        return txt


def _raise_stopped(signum: int, frame: types.FrameType | None) -> None:
    """Stop once: a second signal (a group kill reaches this process too) must not interrupt.

    The clean stop the first signal started goes on undisturbed.
    """
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    raise Stopped(signum)


def _tee(stream: IO[bytes], path: Path) -> None:
    """Copy ``flwr run``'s output to our stdout and to ``path``."""
    with path.open("ab") as out:
        for line in stream:
            out.write(line)
            out.flush()
            with contextlib.suppress(OSError, ValueError):
                sys.stdout.buffer.write(line)
                sys.stdout.flush()
