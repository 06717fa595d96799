"""A hub's side of a GSFS round: the simulation's round, saved state, refusals, calibration."""

from __future__ import annotations

import errno
import json
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any
from unittest.mock import patch

import numpy as np
import pytest

from giot_engine import federated, gsfs_codec
from giot_engine.detector import BigramModel
from giot_engine.detector_process import ProcessDetector
from giot_engine.federated import (
    HubFederation,
    Trained,
    gsfs_client_round,
    model_bytes_limit,
    validate_global,
    validate_shared,
)
from giot_engine.hub_detector import InProcessDetector, hub_local_train
from giot_engine.model import GIoTModel, param_shapes
from giot_engine.model_manager import MIN_STEPS

from .test_detector import DEV, benign

Params = dict[str, np.ndarray]
FULL: dict[str, int | float | str | bool] = {
    "base-state": -1,
    "new-state": 1,
    "local-steps": 2,
    "gsfs-budget": 3000,
    "server-round": 1,
}


def _windows(hub: InProcessDetector, n: int = 40, seed: int = 0) -> np.ndarray:
    """[BOS] and tokens 3..12: a home that uses few tokens."""
    rng = np.random.default_rng(seed)
    body = rng.integers(3, 13, (n, hub.WINDOW_TOKENS))
    windows: np.ndarray = np.concatenate([np.full((n, 1), 2), body], axis=1).astype(np.int32)
    return windows


def _global(hub: InProcessDetector, seed: int = 1, *, sharp: bool = True) -> Params:
    """A global model; ``sharp``: one that has learnt the home's tokens 3..12 (beats counts)."""
    params = {k: np.array(v) for k, v in GIoTModel.init(hub.models.config, seed).params.items()}
    if sharp:  # every position's output is 10 e_0, and only tokens 3..12 point along e_0
        params["transformer.ln_f.weight"][:] = 0.0
        params["transformer.ln_f.bias"][:] = 0.0
        params["transformer.ln_f.bias"][0] = 10.0
        params["transformer.wte.weight"][3:13, 0] = 1.0
    return params


def _files(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


# -- the round itself ----------------------------------------------------------------------------


def _fake_train(params: Mapping[str, np.ndarray], steps: int, seed: int) -> Trained:
    """Deterministic stand-in for training: a seeded step per tensor."""
    rng = np.random.default_rng([seed, steps])
    new = {k: (v + rng.normal(0, 0.01, v.shape)).astype(np.float32) for k, v in params.items()}
    return Trained(new, 1.5, steps, steps * 8, 42.0)


def _reference(  # noqa: PLR0917 (the simulation's train_gsfs as it was before the refactor)
    held: Params, held_id: int, received: Params, conf: dict[str, Any], residual: Params, seed: int
) -> tuple[dict[str, np.ndarray], Params, Params, int]:
    base, new_state = conf.get("base-state", -1), conf.get("new-state", -1)
    if base not in (-1, held_id):
        return {}, held, residual, held_id
    held = received if base == -1 else {**held, **received}
    trained = _fake_train(held, conf["local-steps"], seed)
    update = {k: np.asarray(trained.params[k], np.float32) - held[k] for k in held}
    if conf.get("gsfs-mode") == "shared":
        idx = {k[:-4]: v for k, v in conf["shared"].items() if k.endswith(".idx")}
        scales = {k[:-6]: float(v[0]) for k, v in conf["shared"].items() if k.endswith(".scale")}
        enc = gsfs_codec.encode_shared(update, idx, scales, residual=residual)
        return enc.payload, held, enc.residual, new_state
    enc = gsfs_codec.encode(update, held, conf["gsfs-budget"], residual=residual)
    return (
        gsfs_codec.pack(enc.payload, {k: v.shape for k, v in held.items()}),
        held,
        enc.residual,
        new_state,
    )


@pytest.mark.parametrize("mode", ["sparse", "shared"])
def test_round_is_the_simulations_round(mode: str) -> None:
    """Full downlink, then a partial one on the held copy with the residual: same as train_gsfs."""
    rng = np.random.default_rng(3)
    shapes = {"a": (40, 8), "b": (8,), "c": (300, 240)}
    model = {k: rng.normal(0, 0.05, s).astype(np.float32) for k, s in shapes.items()}
    shared: Params = {
        "a.idx": np.arange(0, 320, 7, dtype=np.uint16),
        "a.scale": np.array([1e-3], np.float32),
    }
    held: Params = {}
    residual: Params = {}
    ref_held: Params = {}
    ref_residual: Params = {}
    held_id = ref_id = -1
    rounds: list[tuple[dict[str, Any], Params]] = [
        ({"base-state": -1, "new-state": 1, "local-steps": 3, "gsfs-budget": 900}, model),
        (
            {"base-state": 1, "new-state": 2, "local-steps": 2, "gsfs-budget": 700},
            {"b": model["b"] * 2},
        ),
        (
            {"base-state": 9, "new-state": 3, "local-steps": 2, "gsfs-budget": 700},
            {"b": model["b"]},
        ),
    ]
    for seed, (task, received) in enumerate(rounds):
        conf = {**task, "gsfs-mode": "shared"} if mode == "shared" else task
        out = gsfs_client_round(
            held, held_id, received, conf, _fake_train, residual,
            seed=seed, default_steps=5, shared=shared if mode == "shared" else None,
        )  # fmt: skip
        payload, ref_held, ref_residual, ref_id = _reference(
            ref_held, ref_id, received, {**conf, "shared": shared}, ref_residual, seed
        )
        assert out.downlink_ok == (seed < 2)
        assert out.payload.keys() == payload.keys()
        for key, value in payload.items():
            assert out.payload[key].dtype == value.dtype
            np.testing.assert_array_equal(out.payload[key], value)
        assert out.held_id == ref_id
        for name in ref_held:
            np.testing.assert_array_equal(out.held[name], ref_held[name])
        for name in ref_residual:
            np.testing.assert_array_equal(out.residual[name], ref_residual[name])
        if out.downlink_ok:
            assert out.metrics["payload-bytes"] == gsfs_codec.payload_nbytes(
                gsfs_codec.unpack(out.payload, shapes) if mode == "sparse" else out.payload
            )
            assert {k: v for k, v in out.metrics.items() if k != "compute-s"} == {
                "num-examples": conf["local-steps"] * 8,
                "train-loss": 1.5,
                "local-steps": conf["local-steps"],
                "state-id": conf["new-state"],
                "downlink-ok": 1,
                "payload-bytes": out.metrics["payload-bytes"],
                "compute-flops": 42.0,
            }
        else:
            assert out.metrics == {"num-examples": 0, "downlink-ok": 0, "state-id": 2}
        held, held_id, residual = out.held, out.held_id, out.residual


def test_hub_round_is_the_shared_round(tmp_path: Path) -> None:
    """The hub's answer is ``gsfs_client_round`` with the hub's training, packed, state saved."""
    hub = InProcessDetector(tmp_path)
    windows, model = _windows(hub), _global(hub)
    answer = hub.federated_train(FULL, model, windows, 7)
    assert answer.status == "ok", answer
    train = partial(hub_local_train, hub.models.config, windows.astype(np.int64))
    out = gsfs_client_round({}, -1, model, FULL, train, {}, seed=7, default_steps=MIN_STEPS)
    assert (
        answer.arrays.keys() == out.payload.keys() == set(gsfs_codec.PACKED_KEYS) - {"gsfs.idx32"}
    )
    for key, value in out.payload.items():
        np.testing.assert_array_equal(answer.arrays[key], value)
    assert {k: v for k, v in answer.metrics.items() if k != "compute-s"} == {
        k: v for k, v in out.metrics.items() if k != "compute-s"
    }
    assert answer.metrics["num-examples"] == 2 * 32
    assert answer.metrics["payload-bytes"] <= 3000
    assert hub.federation.held_id == 1
    saved = json.loads((tmp_path / "federation" / "state.json").read_text())
    assert saved == {
        "format": 1, "held_id": 1, "run_id": None, "train_round": 1, "global_round": None,
    }  # fmt: skip


def test_restart_resumes_with_the_saved_residual_and_held_copy(tmp_path: Path) -> None:
    """A new detector on the same directory answers the next round as the first one would have."""
    hub = InProcessDetector(tmp_path)
    windows, model = _windows(hub), _global(hub)
    assert hub.federated_train({**FULL, "run-id": 4}, model, windows, 7).status == "ok"
    residual = {k: v.copy() for k, v in hub.federation.residual.items()}
    assert any(np.any(v) for v in residual.values())

    again = InProcessDetector(tmp_path)
    assert again.federation.held_id == 1
    assert again.federation.run_id == 4
    for name, value in residual.items():
        np.testing.assert_array_equal(again.federation.residual[name], value)
    for name, value in model.items():
        np.testing.assert_array_equal(again.federation.held[name], value)

    nxt = {**FULL, "base-state": 1, "new-state": 2, "server-round": 2, "run-id": 4}
    downlink = {"transformer.ln_f.bias": model["transformer.ln_f.bias"] + 0.01}
    answer = again.federated_train(nxt, downlink, windows, 8)
    train = partial(hub_local_train, hub.models.config, windows.astype(np.int64))
    expected = gsfs_client_round(
        model, 1, downlink, nxt, train, residual, seed=8, default_steps=MIN_STEPS
    )
    assert answer.metrics["downlink-ok"] == 1
    for key, value in expected.payload.items():
        np.testing.assert_array_equal(answer.arrays[key], value)
    np.testing.assert_array_equal(
        again.federation.held["transformer.ln_f.bias"], downlink["transformer.ln_f.bias"]
    )


def test_unreadable_state_starts_clean_and_asks_for_the_full_model(tmp_path: Path) -> None:
    """A damaged state is counted and dropped; a downlink against it is answered downlink-ok 0."""
    hub = InProcessDetector(tmp_path)
    assert hub.federated_train(FULL, _global(hub), _windows(hub), 7).status == "ok"
    (tmp_path / "federation" / "residual.npz").write_bytes(b"not a zip")
    again = InProcessDetector(tmp_path)
    assert again.federation.held_id == -1
    assert again.federation.load_errors == 1
    answer = again.federated_train({**FULL, "base-state": 1}, {}, _windows(hub), 7)
    assert answer.status == "ok"
    assert answer.metrics == {"num-examples": 0, "downlink-ok": 0, "state-id": -1}
    assert answer.arrays == {}


def test_downlink_for_a_state_the_hub_does_not_hold(tmp_path: Path) -> None:
    """No training, nothing sent, nothing saved: the server sends the full model next time."""
    hub = InProcessDetector(tmp_path)
    part = {"transformer.ln_f.bias": np.zeros(64, np.float32)}
    answer = hub.federated_train({**FULL, "base-state": 5}, part, _windows(hub), 7)
    assert (answer.status, answer.metrics, answer.arrays) == (
        "ok",
        {"num-examples": 0, "downlink-ok": 0, "state-id": -1},
        {},
    )
    assert not (tmp_path / "federation").exists()


def test_no_windows_is_no_data(tmp_path: Path) -> None:
    """Nothing stored (or only padding): skipped; windows the model cannot read: refused."""
    hub = InProcessDetector(tmp_path)
    empty = np.zeros((0, 64), np.int32)
    padding = np.zeros((4, 64), np.int32)
    for windows in (empty, padding):
        answer = hub.federated_train(FULL, _global(hub), windows, 7)
        assert (answer.status, answer.reason) == ("skipped", "no_data")
    # a new hub takes the published model all the same: it has nothing better to score with
    answer = hub.federated_evaluate({"server-round": 1}, _global(hub), empty)
    assert (answer.status, answer.reason) == ("skipped", "no_data")
    assert answer.origin == "global round 1"
    assert hub.models.active == "giot"
    unreadable: list[np.ndarray] = [padding + len(hub.vocab), padding.astype(np.float32)]
    for windows in [*unreadable, np.ones((2, 65), np.int32)]:
        answer = hub.federated_evaluate({"server-round": 1}, _global(hub), windows)
        assert (answer.status, answer.reason) == ("refused", "failed")
        answer = hub.federated_train(FULL, _global(hub), windows, 7)
        assert (answer.status, answer.reason) == ("refused", "failed")
    assert hub.model_version == "giot-1-global-1"  # unreadable windows changed nothing


# -- what the hub accepts ------------------------------------------------------------------------


def _hostile(name: str, good: Params) -> Params:
    first = "transformer.h.0.ln_1.weight"
    bad = dict(good)
    if name == "wrong_shape":
        bad[first] = np.ones(65, np.float32)
    elif name == "extra":
        bad["lm_head.weight"] = np.ones((4, 4), np.float32)
    elif name == "missing":
        del bad[first]
    elif name == "nan":
        bad[first] = np.full(64, np.nan, np.float32)
    elif name == "inf":
        bad[first] = np.full(64, np.inf, np.float32)
    elif name == "overflows_float32":
        bad[first] = np.full(64, 1e300, np.float64)
    elif name == "huge_but_finite":  # overflows in the first forward pass: NaN scores
        bad = {k: v * np.float32(1e20) for k, v in good.items()}
    elif name == "too_large":
        bad["lm_head.weight"] = np.ones((2048, 1024), np.float32)
    elif name == "object":
        bad[first] = np.array([object()] * 64, dtype=object)
    elif name == "int":
        bad[first] = np.ones(64, np.int32)
    return bad


HOSTILE = {
    "wrong_shape": "incompatible_model",
    "extra": "incompatible_model",
    "missing": "incompatible_model",
    "nan": "invalid_model",
    "inf": "invalid_model",
    "overflows_float32": "invalid_model",
    "huge_but_finite": "invalid_model",
    "too_large": "invalid_model",
    "object": "incompatible_model",
    "int": "incompatible_model",
}


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[InProcessDetector, np.ndarray]:
    """A hub scoring with a global model (a trained-looking one: it beats the bigram)."""
    hub = InProcessDetector(tmp_path_factory.mktemp("hub"))
    windows = _windows(hub)
    answer = hub.federated_evaluate({"server-round": 3}, _global(hub), windows)
    assert answer.status == "ok"
    return hub, windows


@pytest.mark.parametrize(("name", "reason"), HOSTILE.items())
def test_hostile_global_model_is_refused_and_the_hub_keeps_scoring(
    published: tuple[InProcessDetector, np.ndarray], name: str, reason: str
) -> None:
    """Refused with the protocol's reason; same version, same scores, same files."""
    hub, windows = published
    assert hub.directory is not None
    version, files = hub.model_version, _files(hub.directory)
    scores = hub.engine.model.token_nll(windows[:2])
    answer = hub.federated_evaluate({"server-round": 4}, _hostile(name, _global(hub, 9)), windows)
    assert (answer.status, answer.reason) == ("refused", reason)
    assert answer.model_version == hub.model_version == version
    np.testing.assert_array_equal(hub.engine.model.token_nll(windows[:2]), scores)
    assert _files(hub.directory) == files


@pytest.mark.parametrize("name", ["wrong_shape", "extra", "nan", "int"])
def test_hostile_downlink_is_refused(tmp_path: Path, name: str) -> None:
    """A train task's arrays are checked as strictly (a partial downlink: a subset)."""
    hub = InProcessDetector(tmp_path)
    good = _global(hub)
    bad = _hostile(name, good)
    answer = hub.federated_train(FULL, bad, _windows(hub), 7)
    assert (answer.status, answer.reason) == ("refused", HOSTILE[name])
    part = {k: v for k, v in bad.items() if k not in good or v is not good[k]}
    answer = hub.federated_train({**FULL, "base-state": 1}, part, _windows(hub), 7)
    assert (answer.status, answer.reason) == ("refused", HOSTILE[name])
    assert not (tmp_path / "federation").exists()


def test_validate_global_and_shared() -> None:
    """Partial subsets, castable floats, the byte limit; shared indices in range."""
    shapes = {"w": (4, 3), "b": (3,)}
    good = {"w": np.ones((4, 3), np.float16), "b": np.zeros(3, np.float64)}
    assert model_bytes_limit(shapes) == 8 * 15
    assert validate_global(good, shapes, 1000) is None
    assert validate_global({"b": good["b"]}, shapes, 1000) == "incompatible_model"
    assert validate_global({"b": good["b"]}, shapes, 1000, partial=True) is None
    assert validate_global(good, shapes, 20) == "invalid_model"
    assert validate_global({"w": [[1.0] * 3] * 4, "b": good["b"]}, shapes, 1000) == (
        "incompatible_model"
    )
    ok = {"w.idx": np.array([0, 11], np.uint16), "w.scale": np.array([0.1], np.float32)}
    assert validate_shared(ok, shapes) is None
    for bad in (
        {"w.idx": np.array([12], np.uint16)},
        {"w.idx": np.array([-1], np.int32)},
        {"w.idx": np.array([0.5])},
        {"w.scale": np.array([0.0], np.float32)},
        {"w.scale": np.array([np.nan], np.float32)},
        {"x.idx": np.array([0], np.uint16)},
        {"w.other": np.array([0], np.uint16)},
    ):
        assert validate_shared(bad, shapes) == "incompatible_model", bad


def test_shared_mode_on_the_hub(tmp_path: Path) -> None:
    """SecAgg mode: the shared index set comes under SHARED_PREFIX; a bad one is refused."""
    hub = InProcessDetector(tmp_path)
    name = "transformer.wpe.weight"
    shared: Params = {
        f"{federated.SHARED_PREFIX}{name}.idx": np.arange(0, 4096, 5, dtype=np.uint16),
        f"{federated.SHARED_PREFIX}{name}.scale": np.array([1e-4], np.float32),
    }
    conf: dict[str, int | float | str | bool] = {**FULL, "gsfs-mode": "shared"}
    answer = hub.federated_train(conf, {**_global(hub), **shared}, _windows(hub), 7)
    assert answer.status == "ok"
    assert list(answer.arrays) == [f"{name}.val"]
    assert answer.arrays[f"{name}.val"].shape == (820,)
    shared[f"{federated.SHARED_PREFIX}{name}.idx"] = np.array([4096], np.uint16)
    answer = hub.federated_train(conf, {**_global(hub), **shared}, _windows(hub), 7)
    assert (answer.status, answer.reason) == ("refused", "incompatible_model")


# -- loading the published model -------------------------------------------------------------------


def _warm(hub: InProcessDetector) -> None:
    hub.observe_flows([("cam", f) for f in benign(80)])


def test_global_model_is_loaded_and_the_home_calibration_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """New version and origin, saved; thresholds as they were; the next round starts from it."""
    hub = InProcessDetector(tmp_path)
    hub.load_model()
    _warm(hub)
    calib = list(hub.engine.devices[DEV].calib)
    assert len(calib) > 20
    before = hub.state()["engine"]
    windows, model = _windows(hub), _global(hub, 5)

    answer = hub.federated_evaluate(
        {"server-round": 3, "run-id": 2, "new-state": 7}, model, windows
    )
    assert answer.status == "ok"
    assert answer.metrics["num-examples"] == len(windows)
    expected = float(GIoTModel(hub.models.config, model).token_nll(windows).mean())
    assert answer.metrics["eval-loss"] == pytest.approx(expected)
    assert answer.model_version == hub.model_version == "giot-1-global-3"
    assert answer.origin == hub.model_info["origin"] == "global round 3"
    assert hub.model_info["scorer"] == "giot"
    for name, value in model.items():
        np.testing.assert_array_equal(hub.models.model.params[name], value)
    assert list(hub.engine.devices[DEV].calib) == calib
    assert hub.engine.devices[DEV].ranked == sorted(calib)
    assert hub.state()["engine"]["devices"][DEV]["calib"] == before["devices"][DEV]["calib"]
    assert hub.federation.held_id == 7
    assert hub.federation.global_round == 3

    again = InProcessDetector(tmp_path)
    again.load_model()
    assert (again.model_version, again.model_info["origin"]) == (
        "giot-1-global-3",
        "global round 3",
    )
    assert again.federation.held_id == 7
    for name, value in model.items():
        np.testing.assert_array_equal(again.federation.held[name], value)

    monkeypatch.setattr("giot_engine.model_manager.MIN_STEPS", 1)
    monkeypatch.setattr("giot_engine.model_manager.MAX_STEPS", 1)
    hub.train(windows, 0)
    assert (hub.model_version, hub.model_info["origin"]) == ("giot-2", "local")


def test_global_model_scores_only_if_it_beats_the_homes_bigram(tmp_path: Path) -> None:
    """An untrained global model against the home's counts: loaded, but the counts score."""
    hub = InProcessDetector(tmp_path)
    windows = _windows(hub)
    hub.models.bigram = BigramModel.fit(windows, len(hub.vocab))
    answer = hub.federated_evaluate({"server-round": 1}, _global(hub, sharp=False), windows)
    assert answer.status == "ok"
    assert hub.model_info["scorer"] == "bigram"
    assert hub.engine.model is hub.models.bigram


def test_federated_train_leaves_the_scoring_model_alone(
    published: tuple[InProcessDetector, np.ndarray],
) -> None:
    """Version, weights, scorer and model files stay; only the federation's state moves."""
    hub, windows = published
    assert hub.directory is not None
    version, scorer = hub.model_version, hub.engine.model
    params = {k: v.copy() for k, v in hub.models.model.params.items()}
    files = {k: v for k, v in _files(hub.directory).items() if k.startswith("model")}
    answer = hub.federated_train(FULL, _global(hub, 11), windows, 7)
    assert answer.status == "ok"
    assert (hub.model_version, answer.model_version) == (version, version)
    assert hub.engine.model is scorer
    for name, value in params.items():
        np.testing.assert_array_equal(hub.models.model.params[name], value)
    assert {k: v for k, v in _files(hub.directory).items() if k.startswith("model")} == files


def test_a_failed_write_refuses_and_keeps_the_old_model(tmp_path: Path) -> None:
    """Full disk: evaluate refuses "failed" with model and files as they were; so does train."""
    hub = InProcessDetector(tmp_path)
    windows = _windows(hub)
    assert hub.federated_evaluate({"server-round": 1}, _global(hub, 1), windows).status == "ok"
    version, files = hub.model_version, _files(tmp_path)
    params = {k: v.copy() for k, v in hub.models.model.params.items()}
    full = OSError(errno.ENOSPC, "No space left on device")
    with patch.object(GIoTModel, "save_pretrained", side_effect=full):
        answer = hub.federated_evaluate({"server-round": 2}, _global(hub, 2), windows)
    assert (answer.status, answer.reason) == ("refused", "failed")
    assert hub.model_version == answer.model_version == version
    assert hub.model_info["disk_full"] is True
    for name, value in params.items():
        np.testing.assert_array_equal(hub.models.model.params[name], value)
    assert _files(tmp_path) == files
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    held_id, residual = hub.federation.held_id, dict(hub.federation.residual)
    with patch.object(federated, "atomic_write_dir", side_effect=full):
        answer = hub.federated_train(FULL, _global(hub, 3), windows, 7)
    assert (answer.status, answer.reason) == ("refused", "failed")
    assert (hub.federation.held_id, hub.federation.residual) == (held_id, residual)
    assert hub.federation.write_errors == 1
    assert _files(tmp_path) == files


# -- the federation's state alone ----------------------------------------------------------------


def _state(tmp_path: Path) -> HubFederation:
    fed = HubFederation(tmp_path / "federation", {"w": (30, 4)})
    fed.load()
    return fed


def _round(fed: HubFederation, conf: dict[str, Any], received: Params) -> federated.RoundOutcome:
    train: Callable[[Params, int, int], Trained] = _fake_train
    return fed.run_round(
        received, {"local-steps": 1, "gsfs-budget": 40, **conf}, train, seed=0, default_steps=1
    )


def test_a_new_run_drops_the_residual_and_old_rounds_do_not_roll_back(tmp_path: Path) -> None:
    """The residual belongs to its run; an evaluate of an older round leaves the held copy."""
    fed = _state(tmp_path)
    w = np.ones((30, 4), np.float32)
    assert _round(
        fed, {"base-state": -1, "new-state": 1, "run-id": 1, "server-round": 5}, {"w": w}
    ).downlink_ok
    assert np.any(fed.residual["w"])
    out = _round(fed, {"base-state": 1, "new-state": 2, "run-id": 2, "server-round": 1}, {})
    expected = _round(_state(tmp_path / "fresh"), {"base-state": -1, "new-state": 2}, {"w": w})
    np.testing.assert_array_equal(out.residual["w"], expected.residual["w"])
    assert (fed.run_id, fed.train_round) == (2, 1)

    fed.adopt({"w": w * 0}, {"server-round": 0, "run-id": 2})
    np.testing.assert_array_equal(fed.held["w"], w)  # round 0 is older than round 1
    fed.adopt({"w": w * 3}, {"server-round": 1, "run-id": 2})
    np.testing.assert_array_equal(fed.held["w"], w * 3)
    assert (fed.held_id, fed.global_round) == (2, 1)
    back = _state(tmp_path)
    np.testing.assert_array_equal(back.held["w"], w * 3)
    assert (back.held_id, back.run_id, back.train_round, back.global_round) == (2, 2, 1, 1)


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: (d / "state.json").write_text("{"),
        lambda d: (d / "state.json").write_text('{"format": 99}'),
        lambda d: (d / "held.npz").unlink(),
        lambda d: np.savez(d / "held.npz", w=np.ones((3, 3), np.float32)),
        lambda d: np.savez(d / "residual.npz", w=np.full((30, 4), np.nan, np.float32)),
    ],
)
def test_unreadable_state_is_counted_and_dropped(
    tmp_path: Path, damage: Callable[[Path], object]
) -> None:
    """Whatever is wrong with the files, the hub starts clean and says so."""
    fed = _state(tmp_path)
    assert _round(
        fed, {"base-state": -1, "new-state": 1}, {"w": np.ones((30, 4), np.float32)}
    ).downlink_ok
    damage(tmp_path / "federation")
    back = _state(tmp_path)
    assert (back.held_id, back.held, back.residual, back.load_errors) == (-1, {}, {}, 1)


# -- through the detector's process --------------------------------------------------------------


def test_both_tasks_through_the_detector_process(tmp_path: Path) -> None:
    """The child answers both tasks; the parent's cached version follows the loaded model."""
    local = InProcessDetector()
    windows, model = _windows(local), _global(local)
    detector = ProcessDetector(tmp_path)
    try:
        detector.load_model()
        assert detector.model_version == "giot-untrained"
        answer = detector.federated_evaluate({"server-round": 2}, model, windows)
        assert answer.status == "ok"
        assert detector.model_version == answer.model_version == "giot-1-global-2"
        assert detector.model_info["origin"] == "global round 2"
        bad = detector.federated_evaluate({"server-round": 3}, _hostile("nan", model), windows)
        assert (bad.status, bad.reason) == ("refused", "invalid_model")
        assert detector.model_version == "giot-1-global-2"
        answer = detector.federated_train(FULL, model, windows, 7)
        assert answer.status == "ok"
        assert answer.metrics["downlink-ok"] == 1
        assert "gsfs.head" in answer.arrays
        shapes = param_shapes(local.models.config)
        assert gsfs_codec.payload_nbytes(gsfs_codec.unpack(answer.arrays, shapes)) <= 3000
    finally:
        detector.close()
    assert InProcessDetector(tmp_path).federation.held_id == 1
