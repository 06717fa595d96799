"""Units of the GSFS server: sparse aggregation, validation, robust/DP aggregation, sensing,
downlink tracking, server optimiser and checkpoints."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from fl_server.checkpoint import Checkpoint, load_latest, save_checkpoint
from fl_server.strategy.aggregate import ServerAdam, aggregate_sparse
from fl_server.strategy.downlink import DownlinkTracker
from fl_server.strategy.sensing import ConditionSensor, PlannerConfig
from fl_server.validation import (
    GaussianDP,
    Limits,
    check_num_examples,
    log_rejection,
    trimmed_mean,
    validate_dense,
    validate_sparse,
)
from giot_engine import gsfs_codec


def _sp(idx: list[int], vals: list[float]) -> tuple[np.ndarray, np.ndarray]:
    return np.array(idx, np.int64), np.array(vals, np.float32)


def test_sparse_aggregation_weights_per_coordinate() -> None:
    """Hand-made: 3 clients, weights 1, 2, 3; each coordinate averaged over its senders only."""
    shapes = {"t": (5,)}
    a = {"t": _sp([0, 1], [1.0, 10.0])}  # weight 1
    b = {"t": _sp([1, 2], [4.0, 6.0])}  # weight 2
    c = {"t": _sp([2, 3], [3.0, -3.0])}  # weight 3
    mean, cover = aggregate_sparse([a, b, c], [1.0, 2.0, 3.0], shapes)
    expected = [
        1.0,  # only a: 1*1/1
        (1 * 10 + 2 * 4) / 3,  # a, b
        (2 * 6 + 3 * 3) / 5,  # b, c
        -3.0,  # only c
        0.0,  # nobody
    ]
    np.testing.assert_allclose(mean["t"], expected, rtol=1e-6)
    assert cover["t"].tolist() == [1, 3, 5, 3, 0]


def test_sparse_aggregation_of_dense_equals_weighted_mean() -> None:
    rng = np.random.default_rng(0)
    ups = [rng.standard_normal(6).astype(np.float32) for _ in range(3)]
    w = [5.0, 1.0, 2.0]
    sparse = [{"t": (np.arange(6), u)} for u in ups]
    mean, _ = aggregate_sparse(sparse, w, {"t": (2, 3)})
    np.testing.assert_allclose(
        mean["t"].ravel(),
        sum(wi * u.astype(np.float64) for wi, u in zip(w, ups, strict=True)) / 8,
        rtol=1e-6,
        atol=1e-7,
    )


def test_server_sgd_with_unit_lr_is_fedavg_on_deltas() -> None:
    p = {"t": np.ones(3, np.float32)}
    d = {"t": np.array([0.5, -1.0, 0.0], np.float32)}
    assert ServerAdam(eta=1.0, kind="sgd").step(p, d)["t"].tolist() == [1.5, 0.0, 1.0]


def test_server_adam_first_step_is_eta_sign() -> None:
    p = {"t": np.zeros(3, np.float32)}
    d = {"t": np.array([0.5, -2.0, 0.0], np.float32)}
    opt = ServerAdam(eta=0.1, tau=1e-9)
    out = opt.step(p, d)["t"]
    np.testing.assert_allclose(out, [0.1, -0.1, 0.0], atol=1e-6)
    assert opt.t == 1
    restored = ServerAdam(eta=0.1, tau=1e-9)
    restored.load_arrays(opt.arrays(), opt.t)
    np.testing.assert_array_equal(restored.step(p, d)["t"], opt.step(p, d)["t"])


def test_damped_server_momentum_steps_eta_times_delta_and_smooths_alternation() -> None:
    """``ema``: a bias-corrected average of deltas, so a steady update is applied at gain eta
    from round 1 on (no FedAvgM amplification), and halves that pull apart are averaged."""
    opt = ServerAdam(eta=1.0, beta1=0.5, kind="ema")
    x = {"w": np.zeros(2, np.float32)}
    for _ in range(4):
        before = x["w"].copy()
        x = opt.step(x, {"w": np.array([0.5, -1.0], np.float32)})
        np.testing.assert_allclose(x["w"] - before, [0.5, -1.0], rtol=1e-6)
    alt = ServerAdam(eta=1.0, beta1=0.5, kind="ema")
    y = {"w": np.zeros(1, np.float32)}
    y = alt.step(y, {"w": np.array([1.0], np.float32)})
    y = alt.step(y, {"w": np.array([-1.0], np.float32)})  # m = 0.5 * 0.5 - 0.5 = -0.25
    assert y["w"].tolist() == pytest.approx([1.0 - 0.25 / 0.75])
    restored = ServerAdam(eta=1.0, beta1=0.5, kind="ema")
    restored.load_arrays(alt.arrays(), alt.t)
    d = {"w": np.array([0.3], np.float32)}
    np.testing.assert_array_equal(restored.step(y, d)["w"], alt.step(y, d)["w"])


SHAPES = {"a": (16, 16), "b": (8,)}
LIM = Limits(max_norm=10.0, max_examples=1000)


def _payload() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    update = {n: (rng.standard_normal(s) * 0.01).astype(np.float32) for n, s in SHAPES.items()}
    weights = {n: np.ones(s, np.float32) for n, s in SHAPES.items()}
    return gsfs_codec.encode(update, weights, 60).payload


def test_valid_payload_passes() -> None:
    payload = _payload()
    assert any(k.endswith(".idx") for k in payload)
    sparse, why = validate_sparse(payload, SHAPES, LIM)
    assert why is None
    assert sparse is not None


def _tampered(kind: str) -> dict[str, np.ndarray]:
    p = dict(_payload())
    name = next(k for k in p if k.endswith(".idx"))[: -len(".idx")]
    if kind == "unknown-key":
        p["evil.val"] = np.zeros(3, np.int8)
    elif kind == "nan-scale":
        p[f"{name}.scale"] = np.array([np.nan], np.float32)
    elif kind == "huge-norm":
        p[f"{name}.scale"] = np.array([1e6], np.float32)
    elif kind == "wrong-dtype":
        p[f"{name}.val"] = p[f"{name}.val"].astype(np.float32)
    elif kind == "wrong-shape":
        del p[f"{name}.idx"]  # now claims to be dense with too few values
    elif kind == "out-of-range":
        idx = p[f"{name}.idx"].copy()
        idx[-1] = 40_000
        p[f"{name}.idx"] = idx
    elif kind == "duplicate-index":
        idx = p[f"{name}.idx"].copy()
        idx[1] = idx[0]
        p[f"{name}.idx"] = idx
    elif kind == "missing-scale":
        del p[f"{name}.scale"]
    return p


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("unknown-key", "unknown key"),
        ("nan-scale", "not finite"),
        ("huge-norm", "norm"),
        ("wrong-dtype", "int8"),
        ("wrong-shape", "dense value count"),
        ("out-of-range", "out of range"),
        ("duplicate-index", "strictly increasing"),
        ("missing-scale", "required"),
    ],
)
def test_poisoned_payload_is_rejected_with_reason(kind: str, reason: str) -> None:
    sparse, why = validate_sparse(_tampered(kind), SHAPES, LIM)
    assert sparse is None
    assert why is not None
    assert reason in why


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (10, True),
        (10.0, True),
        (0, False),
        (-3, False),
        (1001, False),
        (2.5, False),
        (float("nan"), False),
        (None, False),
        (True, False),
        ("7", False),
    ],
)
def test_num_examples_sanity(value: object, ok: bool) -> None:
    assert (check_num_examples(value, LIM) is None) is ok


def test_validate_dense() -> None:
    ref = {"a": np.zeros((2, 2), np.float64)}
    assert validate_dense({"a": np.zeros((2, 2), np.float32)}, ref, LIM) is None
    assert "keys" in (validate_dense({"x": np.zeros((2, 2), np.float32)}, ref, LIM) or "")
    assert "float32" in (validate_dense({"a": np.zeros((2, 3), np.float32)}, ref, LIM) or "")
    nan = np.full((2, 2), np.nan, np.float32)
    assert "non-finite" in (validate_dense({"a": nan}, ref, LIM) or "")
    big = np.full((2, 2), 1e3, np.float32)
    assert "norm" in (validate_dense({"a": big}, ref, LIM) or "")


def test_rejection_is_logged_with_node_and_reason(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        log_rejection(42, "update norm 1e9 above bound 10")
    assert "node 42" in caplog.text
    assert "norm 1e9" in caplog.text


def test_trimmed_mean_drops_extremes_per_coordinate() -> None:
    ups = [{"t": _sp([0, 1], [v, 1.0])} for v in (1.0, 2.0, 3.0, 1000.0)]
    ups.append({"t": _sp([0], [-1000.0])})
    out = trimmed_mean(ups, {"t": (3,)}, beta=0.2)
    # coordinate 0: 5 senders, trim 1 each side -> mean(1, 2, 3); coordinate 1: 4 senders -> mean
    np.testing.assert_allclose(out["t"], [2.0, 1.0, 0.0])


def test_gaussian_dp_clips_adds_noise_and_accounts() -> None:
    dp = GaussianDP(clip=1.0, noise_multiplier=1.0, population=10, target_delta=1e-5, seed=0)
    ups = [{"t": (np.arange(4), np.full(4, 100.0, np.float32))} for _ in range(5)]
    out = dp.release(ups, 5, {"t": (4,)})
    # clipped to norm 1 -> 0.5 per coordinate; noise std 1*1/5 = 0.2
    assert np.all(np.abs(out["t"] - 0.5) < 1.0)
    eps1 = dp.spent().epsilon
    dp.release(ups, 5, {"t": (4,)})
    assert dp.spent().epsilon > eps1 > 0


def test_sensor_plans_from_observations_and_backs_off_after_misses() -> None:
    s = ConditionSensor(PlannerConfig(target_round_s=10.0, comm_share=0.5, max_steps=100))
    assert s.plan(1, 0).budget == PlannerConfig().default_budget
    # 2 s of compute for 10 steps, 1 s moving 100 kB: 100 kB/s, 0.2 s/step
    s.observe_reply(1, rtt_s=3.0, compute_s=2.0, steps=10, bytes_moved=100_000)
    plan = s.plan(1, 0)
    assert plan.budget == 500_000  # 100 kB/s * 0.5 * 10 s
    assert plan.steps == 25  # 5 s / 0.2 s
    s.observe_miss(1)
    backed = s.plan(1, 0)
    assert backed.budget == 250_000
    assert backed.steps == 12
    assert s.deadline([None]) == PlannerConfig().max_deadline_s
    assert s.deadline([1.0, 2.0, 100.0]) == pytest.approx(200.0)
    restored = ConditionSensor()
    restored.load_state_dict(s.state_dict())
    assert restored.nodes == s.nodes


def test_downlink_skips_small_changes_and_resets_on_mismatch() -> None:
    tr = DownlinkTracker(threshold=0.01, max_age=5)
    g1 = {"a": np.ones(10, np.float32), "b": np.ones(10, np.float32)}
    send, base, st = tr.offer(7, 1, g1)
    assert send == ["a", "b"]
    assert base == -1
    tr.confirm(7, st)
    g2 = {"a": g1["a"] * 1.5, "b": g1["b"] * 1.0001}
    send, base, st2 = tr.offer(7, 2, g2)
    assert send == ["a"]
    assert base == st
    tr.confirm(7, st2)
    assert tr.committed[7].versions == {"a": 2, "b": 1}
    tr.collect()
    assert set(tr.snapshots) == {("a", 2), ("b", 1)}
    # drift is measured against the version the node holds, so it accumulates
    g3 = {"a": g2["a"], "b": g1["b"] * 1.02}
    assert tr.offer(7, 3, g3)[0] == ["b"]
    tr.confirm(7, 999)  # node says it holds something else: full model next time
    assert tr.offer(7, 4, g3)[1] == -1
    meta, arrays = tr.state()
    back = DownlinkTracker()
    back.load_state(meta, arrays)
    assert back.pending == tr.pending
    assert set(back.snapshots) == set(tr.snapshots)


def test_checkpoint_atomic_roundtrip_and_pruning(tmp_path: Path) -> None:
    assert load_latest(tmp_path / "none") is None
    for rnd in (1, 2, 3):
        save_checkpoint(
            tmp_path,
            Checkpoint(
                rnd,
                {"w": np.full(3, rnd, np.float32)},
                {"opt/m": np.ones(2)},
                {"history": [rnd], "sensor": {"1": {"rtt_s": 0.5}}},
            ),
        )
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["round-000002.npz", "round-000003.npz"]  # keep=2, no temp files left
    ck = load_latest(tmp_path)
    assert ck is not None
    assert ck.server_round == 3
    assert ck.arrays["w"].tolist() == [3, 3, 3]
    assert ck.extra["opt/m"].tolist() == [1, 1]
    assert ck.meta == {"history": [3], "sensor": {"1": {"rtt_s": 0.5}}}


def test_validate_shared_mode_payload() -> None:
    from fl_server.validation import validate_shared

    idx = {"a": np.array([1, 5, 9], np.uint16)}
    scales = {"a": 0.01}
    ok, why = validate_shared({"a.val": np.array([1, -2, 127], np.int8)}, idx, scales, LIM)
    assert why is None
    assert ok is not None
    np.testing.assert_allclose(ok["a"][1], [0.01, -0.02, 1.27], rtol=1e-6)
    for bad, reason in [
        ({"a.val": np.array([1, 2], np.int8)}, "expected int8 (3,)"),
        ({"a.val": np.array([1, 2, 3], np.int16)}, "expected int8"),
        ({"a.val": np.zeros(3, np.int8), "a.idx": np.arange(3, dtype=np.uint16)}, "keys differ"),
        ({}, "keys differ"),
    ]:
        got, why = validate_shared(bad, idx, scales, LIM)
        assert got is None
        assert why is not None
        assert reason in why
