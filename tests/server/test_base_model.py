"""The base model builder, the server's signing key, signed global models, the node's --server-key.

The captures are generated here (a few hundred labelled Zeek rows): a test never reads
../shared/data.
"""

from __future__ import annotations

import argparse
import json
import stat
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import Message

from fl_server.base_model import TrainConfig, fit, pick_holdout
from fl_server.client_app import make_client_app, model_config
from fl_server.run_config import RunConfig
from fl_server.server_app import run_server
from fl_server.signing import (
    Publisher,
    create_key,
    load_private_key,
    load_public_key,
    public_hex,
    sign_artifact,
    verify_artifact,
    verify_model,
)
from fl_server.simulation.grid import LocalGrid
from giot_engine import node_protocol as proto
from giot_engine.artifact import (
    HEAD_FILE,
    META_FILE,
    ArtifactError,
    arrays_digest,
    load_base,
    write_head,
    write_manifest,
)
from giot_engine.model import GIoTModel
from giot_engine.signature import SignatureHead
from giot_engine.tokenizer import Vocabulary
from giot_node import cli as node_cli
from giot_node.link import Link
from giot_node.state import NodeState
from giot_server import cli

FIELDS = [
    "ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto", "service",
    "duration", "orig_bytes", "resp_bytes", "conn_state", "local_orig", "local_resp",
    "missed_bytes", "history", "orig_pkts", "orig_ip_bytes", "resp_pkts", "resp_ip_bytes",
    "tunnel_parents", "label", "detailed-label",
]  # fmt: skip


def _row(  # noqa: PLR0917 (one Zeek row)
    ts: float,
    uid: str,
    resp: str,
    port: int,
    proto_: str,
    state: str,
    label: str,
    detail: str = "-",
) -> str:
    vals = [f"{ts:.6f}", uid, "192.168.1.5", "40000", resp, str(port), proto_, "-", "0.1", "40",
            "40", state, "-", "-", "0", "Dd", "1", "68", "1", "68", "-", label, detail]  # fmt: skip
    return "\t".join(vals)


def _capture(path: Path, n: int, t0: float, attack: bool) -> None:
    rows = [
        _row(t0 + 20 * i, f"B{i}", f"192.168.1.{1 + i % 3}", 53, "udp", "SF", "Benign")
        for i in range(n)
    ]
    if attack:
        t = t0 + 20 * n
        rows += [
            _row(t + 0.3 * i, f"A{i}", f"45.1.{i}.9", 23, "tcp", "S0", "Malicious",
                 "PartOfAHorizontalPortScan")
            for i in range(30)
        ]  # fmt: skip
    head = ["#separator \\x09", "#path\tconn", "#fields\t" + "\t".join(FIELDS)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(head + rows) + "\n", encoding="utf-8")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """Three small labelled captures in the development data's layout."""
    root = tmp_path / "data"
    zeek = root / "iot23" / "zeek"
    _capture(zeek / "CTU-IoT-Malware-Capture-1-1.conn.log.labeled", 80, 1.6e9, attack=True)
    _capture(zeek / "CTU-IoT-Malware-Capture-2-1.conn.log.labeled", 40, 1.7e9, attack=True)
    _capture(zeek / "CTU-Honeypot-Capture-3-1.conn.log.labeled", 30, 1.8e9, attack=False)
    return root


def test_builder_writes_a_signed_model_with_its_card(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home, out = tmp_path / "home", tmp_path / "out"
    assert cli.main(["init", "--home", str(home)]) == 0
    assert stat.S_IMODE((home / "signing.key").stat().st_mode) == 0o600
    key = load_private_key(home / "signing.key")
    assert public_hex(load_public_key(home / "signing.pub")) == public_hex(key)
    argv = ["base-model", "--home", str(home), "--data", str(data), "--out", str(out)]
    assert cli.main([*argv, "--steps", "3", "--max-flows", "100"]) == 0

    names = {p.name for p in out.iterdir()}
    assert names == {
        "config.json", "model.safetensors", "tokenizer.json", HEAD_FILE, META_FILE,
        "README.md", "MANIFEST.json", "MANIFEST.sig",
    }  # fmt: skip
    manifest = verify_artifact(out, key.public_key())
    base = load_base(out, Vocabulary.default())  # what a hub loads
    assert base.version == manifest["version"]
    assert base.version.startswith("base-")
    assert base.head.trained
    assert base.model.config == model_config(RunConfig.load({}, _hub_size()))

    meta = json.loads((out / META_FILE).read_text())
    assert meta["origin"] == "base"
    assert meta["evaluation"]["held_out"] == "CTU-IoT-Malware-Capture-2-1.conn.log.labeled"
    assert meta["train"]["steps"] == 3
    assert {s["name"]: s["records"] for s in meta["sources"]} == {
        "CTU-IoT-Malware-Capture-1-1.conn.log.labeled": 100,  # --max-flows
        "CTU-IoT-Malware-Capture-2-1.conn.log.labeled": 70,
        "CTU-Honeypot-Capture-3-1.conn.log.labeled": 30,
    }
    card = (out / "README.md").read_text()
    front = card.split("---")[1]
    assert "license: cc-by-4.0" in front
    assert "- iot-23" in front
    for section in ("## Intended use", "## Training data", "## Evaluation", "## Limitations"):
        assert section in card
    for fact in ("Garcia", "Parmisano", "Erquiaga", "CC BY 4.0", "10.5281/zenodo.4743746"):
        assert fact in card
    assert "167,552 parameters" in card
    assert f"`model.safetensors` {(out / 'model.safetensors').stat().st_size:,}" in card
    assert "`CTU-IoT-Malware-Capture-2-1.conn.log.labeled`" in card
    assert "window precision / recall / F1" in card
    assert str(tmp_path) not in card + (out / META_FILE).read_text()  # no path of this machine

    weights = out / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-5] ^= 0x10
    weights.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match=r"model\.safetensors"):
        verify_artifact(out, key.public_key())
    raw[-5] ^= 0x10
    weights.write_bytes(bytes(raw))
    (tmp_path / "other").mkdir()
    other = create_key(tmp_path / "other")
    with pytest.raises(ArtifactError, match="not signed by this server"):
        verify_artifact(out, other.public_key())
    (out / "MANIFEST.sig").unlink()
    verify_artifact(out, None)  # hashes alone hold
    with pytest.raises(ArtifactError, match=r"MANIFEST\.sig"):
        verify_artifact(out, key.public_key())

    assert cli.main(["init", "--home", str(home)]) == 1  # certificates exist; the key is kept
    assert load_private_key(home / "signing.key").private_bytes_raw() == key.private_bytes_raw()
    capsys.readouterr()


def test_base_model_needs_a_key_or_unsigned(tmp_path: Path, data: Path) -> None:
    argv = ["base-model", "--home", str(tmp_path / "h"), "--data", str(data)]
    argv += ["--out", str(tmp_path / "out"), "--steps", "2", "--holdout", "none"]
    assert cli.main(argv) == 1
    assert not (tmp_path / "out").exists()
    assert cli.main([*argv, "--unsigned", "--float16"]) == 0
    assert not (tmp_path / "out" / "MANIFEST.sig").exists()
    meta = json.loads((tmp_path / "out" / META_FILE).read_text())
    assert (meta["dtype"], meta["evaluation"]) == ("F16", None)
    assert "Not measured" in (tmp_path / "out" / "README.md").read_text()
    size = (tmp_path / "out" / "model.safetensors").stat().st_size
    assert size < 167_552 * 2 + 4096  # float16: two bytes a parameter
    assert cli.main([*argv[:-2], "--holdout", "nothing-like-it", "--unsigned"]) == 1


def test_holdout_choice(data: Path) -> None:
    paths = sorted((data / "iot23" / "zeek").iterdir())
    assert (
        pick_holdout(paths, None)
        == data / "iot23/zeek/CTU-IoT-Malware-Capture-2-1.conn.log.labeled"
    )
    assert pick_holdout(paths, "honeypot") == paths[0]
    assert pick_holdout(paths, "none") is None
    assert pick_holdout(paths[:1], None) is None
    with pytest.raises(ValueError, match="matches 3"):
        pick_holdout(paths, "Capture")


def test_fit_learns_events_of_home_logs_too(tmp_path: Path, data: Path) -> None:
    home = tmp_path / "ordonez"
    home.mkdir()
    (home / "OrdonezA_Sensors.txt").write_text(
        "Start time\t\tEnd time\t\tLocation\tType\tPlace\n"
        "----------\t\t--------\t\t--------\t----\t-----\n"
        + "".join(
            f"2011-11-28 10:{m:02d}:00\t\t2011-11-28 10:{m:02d}:30\t\tBed\tPressure\tBedroom\n"
            for m in range(40)
        )
    )
    paths = sorted((data / "iot23" / "zeek").iterdir())
    flows_only = fit(paths, TrainConfig(model="bigram"))
    with_home = fit(paths, TrainConfig(model="bigram"), homes=[home])
    assert with_home.windows > flows_only.windows
    assert with_home.sources[-1].kind == "ordonez"
    assert with_home.sources[-1].records > 0


def _hub_size() -> dict[str, Any]:
    return {"vocab-size": 990, "n-positions": 64, "n-embd": 64, "n-layer": 2, "n-head": 2}


SMALL: dict[str, Any] = {
    "num-server-rounds": 2,
    "local-steps": 1,
    "gsfs-min-steps": 1,
    "gsfs-max-steps": 1,
    "windows-per-node": 8,
    "batch-size": 4,
    "n-embd": 16,
    "fraction-evaluate": 1.0,
    "min-nodes": 2,
}


def _tiny_base(directory: Path, cfg: RunConfig, key: Any, version: str = "base-tiny") -> GIoTModel:
    model = GIoTModel.init(model_config(cfg), seed=9)
    model.save_pretrained(directory)
    write_head(directory / HEAD_FILE, SignatureHead.untrained())
    (directory / META_FILE).write_text(json.dumps({"version": version, "origin": "base"}))
    write_manifest(directory, version)
    if key is not None:
        sign_artifact(directory, key)
    return model


class RecordingGrid(LocalGrid):
    """The in-process grid, keeping every message the ServerApp sent for evaluation."""

    evaluations: list[Message]

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> Any:
        self.evaluations = [*getattr(self, "evaluations", []), *messages]
        return super().send_and_receive(messages, timeout=timeout)


def test_server_app_starts_from_the_base_and_signs_every_global_model(tmp_path: Path) -> None:
    key = create_key(tmp_path)
    cfg = RunConfig.load({}, {**SMALL, "signing-key": str(tmp_path / "signing.key")})
    base = _tiny_base(tmp_path / "base", cfg, key)
    cfg = cfg.with_overrides({"base-model": str(tmp_path / "base")})
    grid = RecordingGrid(make_client_app(cfg), 2, cfg, run_id=5)
    run_server(grid, cfg, run_id=5)

    rounds = [int(m.content.config_records["config"]["server-round"]) for m in grid.evaluations]
    assert rounds == [0, 0, 1, 1, 2, 2]  # round 0, the base, published before round 1
    public = key.public_key()
    for message in grid.evaluations:
        config = dict(message.content.config_records["config"])
        arrays = {k: a.numpy() for k, a in message.content.array_records["arrays"].items()}
        assert verify_model(public, arrays, config) is None
        rnd = config["server-round"]
        assert config["model-version"] == ("base-tiny" if rnd == 0 else f"base-tiny+run5.r{rnd}")
        if rnd == 0:
            for name, value in base.params.items():
                np.testing.assert_array_equal(arrays[name], value)
        tampered = {**arrays, "lm_head.weight": arrays["transformer.wte.weight"] + 1}
        assert verify_model(public, tampered, config) in {"digest mismatch", "bad signature"}
        assert verify_model(public, arrays, {**config, "server-round": rnd + 1}) == "bad signature"


def test_server_app_refuses_a_base_it_cannot_trust(tmp_path: Path) -> None:
    key = create_key(tmp_path)
    cfg = RunConfig.load({}, {**SMALL, "signing-key": str(tmp_path / "signing.key")})
    grid = LocalGrid(make_client_app(cfg), 2, cfg)
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    _tiny_base(tmp_path / "foreign", cfg, create_key(stranger))
    with pytest.raises(ArtifactError, match="not signed by this server"):
        run_server(grid, cfg.with_overrides({"base-model": str(tmp_path / "foreign")}))
    _tiny_base(tmp_path / "unsigned", cfg, None)
    with pytest.raises(ArtifactError, match=r"MANIFEST\.sig"):
        run_server(grid, cfg.with_overrides({"base-model": str(tmp_path / "unsigned")}))
    _tiny_base(tmp_path / "wide", cfg.with_overrides({"n-embd": 32}), key)
    with pytest.raises(ValueError, match="base model"):
        run_server(grid, cfg.with_overrides({"base-model": str(tmp_path / "wide")}))


def test_publisher_without_key_names_but_does_not_sign() -> None:
    arrays = {"w": np.ones(3, np.float32)}
    stamp = Publisher("init-seed0", 3).stamp(arrays, 2)
    assert stamp == {"model-version": "init-seed0+run3.r2", "model-sha256": arrays_digest(arrays)}


def test_node_passes_the_server_key_in_welcome(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    create_key(tmp_path)
    public = public_hex(load_public_key(tmp_path / "signing.pub"))
    parser = node_cli.build_parser()
    args = parser.parse_args(
        [
            "run",
            "--superlink",
            "s:9092",
            "--insecure",
            "--server-key",
            str(tmp_path / "signing.pub"),
        ]
    )
    assert args.server_key == public
    assert parser.parse_args(["run", "--superlink", "s:9092", "--insecure"]).server_key == ""
    ec_pub = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (tmp_path / "ec.pub").write_bytes(ec_pub)
    with pytest.raises(argparse.ArgumentTypeError, match="not an Ed25519"):
        node_cli.server_key(str(tmp_path / "ec.pub"))
    capsys.readouterr()


async def test_link_welcome_carries_the_key(tmp_path: Path) -> None:
    state = NodeState(tmp_path / "node")
    state.init()
    link = Link(state, "superlink.example:9092", "cd" * 32)
    await link.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(f"http://127.0.0.1:{link.port}/giot")
            challenge = proto.decode(await ws.receive_bytes(timeout=5))
            proof = proto.proof(state.token(), challenge.body["nonce"])
            await ws.send_bytes(proto.encode("auth", {"proof": proof, "protocol": 1, "hub": "t"}))
            welcome = proto.decode(await ws.receive_bytes(timeout=5))
            assert welcome.body["server_key"] == "cd" * 32
            await ws.close()
    finally:
        await link.close()
