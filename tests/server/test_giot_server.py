"""``giot-server`` as a user runs it: real processes on loopback, all state under ``tmp_path``.

``init`` makes a CA and a server certificate that a real TLS handshake accepts; ``run`` starts a
TLS SuperLink with Flower 1.41's SuperNode authentication (``--enable-supernode-auth``, keys
registered through the Control API from ``enrol``); a real ``flower-supernode`` with
``--root-certificates`` and an enrolled key trains in two GSFS rounds while one whose key was
revoked is refused; ``--insecure`` warns; SIGTERM leaves no Flower process behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fl_server.checkpoint import load_latest
from giot_server import procs
from tests.server.deployment import ROOT, RUN_CONFIG, Federation, run_config_arg

GS_ENV = {"PYTHONPATH": str(ROOT)}  # giot_server from the checkout (the server strips it again)


def gs(home: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run one short ``giot-server`` command."""
    env = {**os.environ, **GS_ENV}
    cmd = [sys.executable, "-m", "giot_server", *args, "--home", str(home)]
    return subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def node_key(path: Path) -> Path:
    """An EC P-384 key pair in OpenSSH format, as ``ssh-keygen -t ecdsa -b 384`` writes it."""
    key = ec.generate_private_key(ec.SECP384R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    path.with_suffix(".pub").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    )
    return path


def handshake(port: int, ca: Path, name: str) -> str:
    """A verified TLS handshake with the server at ``port`` as ``name``; the peer's TLS version."""
    ctx = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=name) as tls,
    ):
        return str(tls.version())


@pytest.fixture
def fed(tmp_path: Path) -> Iterator[Federation]:
    fed = Federation(tmp_path)
    try:
        yield fed
    finally:
        fed.stop()


def test_init_makes_a_ca_and_server_certificate_tls_accepts(tmp_path: Path) -> None:
    home = tmp_path / "home"
    done = gs(home, "init", "--san", "giot.example.lan", "--san", "10.9.8.7")
    assert done.returncode == 0, done.stderr
    for key in ("ca.key", "server.key"):
        assert (home / key).stat().st_mode & 0o777 == 0o600
    cert = x509.load_pem_x509_certificate((home / "server.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "giot.example.lan"} <= set(san.get_values_for_type(x509.DNSName))
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    assert {"127.0.0.1", "10.9.8.7"} <= ips

    # A real handshake: an ssl server with the certificate, a client trusting only ca.pem.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(home / "server.pem", home / "server.key")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            for _ in range(3):
                conn, _addr = listener.accept()
                with (
                    contextlib.suppress(ssl.SSLError, OSError),
                    conn,
                    ctx.wrap_socket(conn, server_side=True) as tls,
                ):
                    tls.recv(1)

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        for name in ("localhost", "127.0.0.1"):  # the DNS and the IP SAN
            assert handshake(port, home / "ca.pem", name).startswith("TLS")
        with pytest.raises(ssl.SSLCertVerificationError):  # a name the certificate lacks
            handshake(port, home / "ca.pem", "elsewhere.example")
        server.join(timeout=5)

    before = {p.name: p.read_bytes() for p in home.iterdir()}
    again = gs(home, "init")
    assert again.returncode == 1
    assert "--force" in again.stderr
    assert {p.name: p.read_bytes() for p in home.iterdir()} == before
    forced = gs(home, "init", "--force")
    assert forced.returncode == 0, forced.stderr
    assert (home / "ca.pem").read_bytes() != before["ca.pem"]


def test_run_refuses_without_certificates(tmp_path: Path) -> None:
    done = gs(tmp_path / "home", "--port", "1", "--no-advertise")
    assert done.returncode == 2
    assert "giot-server init" in done.stderr
    assert not (tmp_path / "home" / "superlink.db").exists()


def _flwr_pids(home: Path) -> list[int]:
    return [p for p in procs.with_env("FLWR_HOME", str(home / "flwr")) if procs.alive(p)]


def _cmdlines(pids: list[int]) -> list[str]:
    out = []
    for pid in pids:
        try:
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return out


def test_insecure_warns_and_sigterm_stops_everything(tmp_path: Path, fed: Federation) -> None:
    home = tmp_path / "home"
    config = {**RUN_CONFIG, "min-nodes": 1}  # no SuperNode comes: the ServerApp waits for one
    fed.start(
        "server",
        "python",
        "-m",
        "giot_server",
        "--home",
        str(home),
        "--insecure",
        "--port",
        str(fed.port),
        "--no-advertise",
        "--run-config",
        run_config_arg(config),
        env=GS_ENV,
    )
    deadline = time.monotonic() + 90
    while not any("flwr-serverapp" in c for c in _cmdlines(_flwr_pids(home))):
        assert fed.procs["server"].poll() is None, fed.logs()
        assert time.monotonic() < deadline, f"no ServerApp started{fed.logs()}"
        time.sleep(0.3)
    started = _flwr_pids(home)
    assert any("flower-superlink" in c for c in _cmdlines(started)), _cmdlines(started)
    assert "WARNING: --insecure" in fed.log("server"), fed.logs()
    assert json.loads((home / "server.json").read_text())["insecure"] is True

    fed.kill("server", signal.SIGTERM)
    assert fed.procs["server"].wait(timeout=45) == 0, fed.logs()
    assert _flwr_pids(home) == [], _cmdlines(_flwr_pids(home))
    assert [p for p in started if procs.alive(p)] == []
    assert not (home / "server.json").exists()


def test_tls_run_trains_the_enrolled_node_and_refuses_a_revoked_one(
    tmp_path: Path, fed: Federation
) -> None:
    home = tmp_path / "home"
    assert gs(home, "init").returncode == 0
    good, revoked, late = (node_key(tmp_path / f"{n}.key") for n in ("good", "revoked", "late"))
    for key in (good, revoked):
        done = gs(home, "enrol", str(key.with_suffix(".pub")), "--name", key.stem)
        assert done.returncode == 0, done.stderr
    assert gs(home, "revoke", str(revoked.with_suffix(".pub"))).returncode == 0  # offline
    assert len(list((home / "enrolled").glob("*.pub"))) == 1

    config = {**RUN_CONFIG, "min-nodes": 1}
    fed.start(
        "server",
        "python",
        "-m",
        "giot_server",
        "--home",
        str(home),
        "--port",
        str(fed.port),
        "--no-advertise",
        "--run-config",
        run_config_arg(config),
        env=GS_ENV,
    )
    deadline = time.monotonic() + 60
    while not (home / "server.json").exists():
        assert fed.procs["server"].poll() is None, fed.logs()
        assert time.monotonic() < deadline, f"server not ready{fed.logs()}"
        time.sleep(0.3)
    assert handshake(fed.port, home / "ca.pem", "127.0.0.1").startswith("TLS")

    # Enrolled and revoked while the server runs: registered, then unregistered at once.
    assert gs(home, "enrol", str(late.with_suffix(".pub"))).returncode == 0
    assert len(json.loads(gs(home, "status").stdout)["nodes"]) == 2
    done = gs(home, "revoke", str(late.with_suffix(".pub")))
    assert "1 unregistered" in done.stderr, done.stderr
    status = json.loads(gs(home, "status").stdout)
    assert len(status["nodes"]) == 1
    assert status["running"]["insecure"] is False

    for i, (name, key) in enumerate((("good", good), ("revoked", revoked))):
        fed.start(
            name,
            "flower-supernode",
            "--superlink",
            fed.address,
            "--root-certificates",
            str(home / "ca.pem"),
            "--auth-supernode-private-key",
            str(key),
            "--port",
            str(fed.node_ports[i]),
            "--node-config",
            "partition-id=0 num-partitions=1",
        )
    try:
        rc = fed.procs["server"].wait(timeout=180)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the run did not finish{fed.logs()}")
    why = fed.logs()
    assert rc == 0, why
    assert fed.log("good").count("Sending: train message") == 2, why
    assert "Sending: train message" not in fed.log("revoked"), why
    assert "Failed to activate SuperNode" in fed.log("revoked"), why
    last = load_latest(home / "checkpoints")
    assert last is not None, why
    assert last.server_round == 2, why
    assert [h["accepted"] for h in last.meta["history"]] == [1, 1], why
    assert _flwr_pids(home) == [], _cmdlines(_flwr_pids(home))
    assert not (home / "server.json").exists()


def test_a_real_run_federates_the_model_home_assistant_runs() -> None:
    """The global model of ``giot-server run`` has exactly the shapes a hub accepts."""
    from fl_server.client_app import model_config
    from fl_server.run_config import RunConfig
    from giot_engine.model import GIoTModel
    from giot_engine.model_manager import ModelManager
    from giot_engine.tokenizer import Vocabulary
    from giot_server.server import hub_model_run_config

    overrides = dict(item.split("=", 1) for item in hub_model_run_config())
    cfg = RunConfig.load({k: int(v) for k, v in overrides.items()})
    server = GIoTModel.init(model_config(cfg), seed=0).params
    hub = ModelManager(None, Vocabulary.default()).model.params
    assert {k: v.shape for k, v in server.items()} == {k: v.shape for k, v in hub.items()}
