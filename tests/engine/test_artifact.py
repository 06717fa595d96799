"""Model directories checked before use: manifests, the head file, a hub's base model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from giot_engine import node_protocol as proto
from giot_engine.artifact import (
    HEAD_FILE,
    MANIFEST,
    META_FILE,
    ArtifactError,
    arrays_digest,
    check_manifest,
    load_base,
    model_message,
    read_head,
    write_head,
    write_manifest,
)
from giot_engine.model import GIoTConfig, GIoTModel
from giot_engine.model_manager import N_EMBD, N_HEAD, N_LAYER, N_POSITIONS, ModelManager
from giot_engine.safetensors import load_safetensors, save_safetensors
from giot_engine.signature import FAMILIES, FEATURE_NAMES, SignatureHead
from giot_engine.tokenizer import Vocabulary

VOCAB = Vocabulary.default()


def _head() -> SignatureHead:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, len(FEATURE_NAMES)))
    fams = ["benign"] * 30 + ["port_scan"] * 30
    x[30:, 0] += 3.0
    return SignatureHead.fit(x, fams, steps=50)


def _base(directory: Path, n_embd: int = N_EMBD, version: str = "base-test") -> GIoTModel:
    """A base model directory as the builder writes one (weights random: only loading counts)."""
    config = GIoTConfig(len(VOCAB), N_POSITIONS, n_embd, N_LAYER, N_HEAD)
    model = GIoTModel.init(config, seed=3)
    model.save_pretrained(directory, dtype="F16")
    write_head(directory / HEAD_FILE, _head())
    meta = {"version": version, "origin": "base", "vocab": VOCAB.version}
    (directory / META_FILE).write_text(json.dumps(meta))
    (directory / "README.md").write_text("card\n")
    write_manifest(directory, version)
    return model


def test_digest_fixes_names_dtypes_shapes_and_bytes() -> None:
    a = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2, np.float32)}
    d = arrays_digest(a)
    assert d == arrays_digest(dict(reversed(list(a.items()))))  # order of the mapping
    assert d == arrays_digest({**a, "x": a["x"].astype(">f4")})  # byte order
    assert d == arrays_digest({**a, "x": np.asfortranarray(a["x"])})  # layout
    assert d != arrays_digest({**a, "x": a["x"].reshape(3, 2)})
    assert d != arrays_digest({**a, "x": a["x"].astype(np.float64)})
    assert d != arrays_digest({**a, "y": a.pop("x")})
    changed = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2, np.float32)}
    changed["x"][1, 2] = np.nextafter(np.float32(5), np.float32(6))
    assert d != arrays_digest(changed)
    assert model_message("v", 3, d) != model_message("v", 4, d)
    assert model_message("v", 3, d).startswith(b"giot-global-model/1\n")


def test_manifest_catches_a_flipped_byte_and_a_missing_file(tmp_path: Path) -> None:
    _base(tmp_path)
    manifest = check_manifest(tmp_path)
    assert manifest["version"] == "base-test"
    assert set(manifest["files"]) >= {"config.json", "model.safetensors", HEAD_FILE, META_FILE}
    assert MANIFEST not in manifest["files"]
    weights = tmp_path / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 1
    weights.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="does not match"):
        check_manifest(tmp_path)
    raw[len(raw) // 2] ^= 1
    weights.write_bytes(bytes(raw))
    check_manifest(tmp_path)
    (tmp_path / "README.md").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        check_manifest(tmp_path)


def test_manifest_must_list_what_is_loaded(tmp_path: Path) -> None:
    _base(tmp_path)
    doc = json.loads((tmp_path / MANIFEST).read_text())
    del doc["files"][HEAD_FILE]
    (tmp_path / MANIFEST).write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match="does not list"):
        check_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text("[1, 2]")
    with pytest.raises(ArtifactError, match="not a"):
        check_manifest(tmp_path)


def test_head_file_round_trips_exactly_and_refuses_other_shapes(tmp_path: Path) -> None:
    head = _head()
    assert head.trained
    write_head(tmp_path / "h.json", head)
    again = read_head(tmp_path / "h.json")
    np.testing.assert_array_equal(again.weights, head.weights)
    np.testing.assert_array_equal(again.scale, head.scale)
    doc = json.loads((tmp_path / "h.json").read_text())
    doc["weights"] = doc["weights"][:-2]
    (tmp_path / "h.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="shape"):
        read_head(tmp_path / "h.json")
    (tmp_path / "h.json").write_text(json.dumps({"families": list(FAMILIES)}))
    with pytest.raises(ValueError, match="not a GIoT signature head"):
        read_head(tmp_path / "h.json")


def test_float16_weights_load_as_float32(tmp_path: Path) -> None:
    w = {"a": np.linspace(-1, 1, 7, dtype=np.float32)}
    save_safetensors(tmp_path / "w.safetensors", w, dtype="F16")
    back = load_safetensors(tmp_path / "w.safetensors")["a"]
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, w["a"], atol=1e-3)
    assert (tmp_path / "w.safetensors").stat().st_size < 8 + 200 + 7 * 4
    with pytest.raises(ValueError, match="cannot write"):
        save_safetensors(tmp_path / "x", w, dtype="I8")


def test_a_hub_without_a_model_starts_from_the_base(tmp_path: Path) -> None:
    model = _base(tmp_path / "base")
    manager = ModelManager(tmp_path / "hub" / "model", VOCAB, tmp_path / "base")
    manager.load()
    assert (manager.version, manager.origin, manager.active) == ("base-test", "base", "giot")
    assert manager.head.trained
    assert manager.info()["base"] == "base-test"
    f16 = {k: v.astype(np.float16).astype(np.float32) for k, v in model.params.items()}
    for name, value in f16.items():
        np.testing.assert_array_equal(manager.model.params[name], value)

    windows = np.random.default_rng(0).integers(3, 50, (8, N_POSITIONS))
    manager.train(windows, seed=1)  # local training continues from the base
    assert (manager.version, manager.origin) == ("giot-1", "local")
    again = ModelManager(tmp_path / "hub" / "model", VOCAB, tmp_path / "base")
    again.load()  # its own model now; the base's head still detects known attacks
    assert again.version == "giot-1"
    assert again.head.trained
    assert again.info()["base"] == "base-test"

    params = {k: np.array(v) for k, v in again.model.params.items()}
    again.load_global(params, windows, 4, 7, "base-test+run7.r4")
    info = again.info()
    assert (info["global_version"], info["previous_version"]) == ("base-test+run7.r4", "giot-1")


def test_a_damaged_or_foreign_base_is_not_used(tmp_path: Path) -> None:
    _base(tmp_path / "base")
    head = tmp_path / "base" / HEAD_FILE
    head.write_text(head.read_text().replace("0", "1", 1))
    manager = ModelManager(None, VOCAB, tmp_path / "base")
    manager.load()
    assert (manager.version, manager.active) == ("giot-untrained", "bigram")
    assert not manager.head.trained

    _base(tmp_path / "narrow", n_embd=16)  # not the hub's size: a global model would not fit
    manager = ModelManager(None, VOCAB, tmp_path / "narrow")
    manager.load()
    assert manager.version == "giot-untrained"
    assert manager.head.trained  # the head does not depend on the model's size

    _base(tmp_path / "other", version="base-other")
    meta = json.loads((tmp_path / "other" / META_FILE).read_text())
    (tmp_path / "other" / META_FILE).write_text(json.dumps({**meta, "vocab": "giot-vocab-0"}))
    write_manifest(tmp_path / "other", "base-other")
    with pytest.raises(ArtifactError, match="vocabulary"):
        load_base(tmp_path / "other", VOCAB)


def test_welcome_may_name_the_servers_key() -> None:
    body = {"node_id": "n", "protocol": 1, "superlink": "s:1", "connected": True}
    assert proto.decode(proto.encode("welcome", body)).body == body  # a node from before
    key = "ab" * 32
    assert (
        proto.decode(proto.encode("welcome", {**body, "server_key": key})).body["server_key"] == key
    )
    assert (
        proto.decode(proto.encode("welcome", {**body, "server_key": ""})).body["server_key"] == ""
    )
    for bad in ("ab" * 31, "zz" * 32, 5):
        with pytest.raises(proto.ProtocolError, match="server_key"):
            proto.encode("welcome", {**body, "server_key": bad})
    with pytest.raises(proto.ProtocolError, match="missing"):
        proto.encode("welcome", {"node_id": "n", "protocol": 1, "superlink": "s:1"})
