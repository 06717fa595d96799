"""GSFS client codec: byte budget, exact error feedback, wire form, SecAgg mode, persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from giot_engine import gsfs_codec

SHAPES: dict[str, tuple[int, ...]] = {
    "wte": (96, 16),
    "ln.weight": (16,),
    "ln.bias": (16,),
    "attn.w": (16, 48),
    "big": (300, 240),  # > 65,536 elements: uint32 indices
}


def _model(seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    weights = {n: (rng.standard_normal(s) * 0.05).astype(np.float32) for n, s in SHAPES.items()}
    weights["ln.weight"] = np.ones(16, np.float32)
    weights["ln.bias"] = np.zeros(16, np.float32)
    update = {
        n: (rng.standard_normal(s) * 10.0 ** rng.uniform(-5, -1)).astype(np.float32)
        for n, s in SHAPES.items()
    }
    return weights, update


@pytest.mark.parametrize("budget", [0, 1, 4, 6, 7, 50, 333, 1000, 5000, 20_000, 10**6])
def test_payload_never_exceeds_budget(budget: int) -> None:
    weights, update = _model(budget)
    res = gsfs_codec.encode(update, weights, budget)
    assert res.nbytes <= budget
    assert gsfs_codec.payload_nbytes(res.payload) == res.nbytes
    if budget >= 7:  # one uint16 index + one int8 value + scale
        assert res.sent, "a budget that fits one coordinate must send one"


def test_budget_is_used_nearly_fully() -> None:
    weights, update = _model(1)
    res = gsfs_codec.encode(update, weights, 5000)
    assert 5000 - 8 <= res.nbytes <= 5000


def test_large_budget_sends_everything_dense() -> None:
    weights, update = _model(2)
    total = sum(int(np.prod(s)) for s in SHAPES.values())
    res = gsfs_codec.encode(update, weights, 10 * total)
    assert res.sent == {n: int(np.prod(s)) for n, s in SHAPES.items()}
    assert not any(k.endswith(".idx") for k in res.payload)
    assert res.nbytes == total + 4 * len(SHAPES)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("budget", [0, 9, 700, 4000, 300_000])
def test_decode_plus_residual_is_exact(seed: int, budget: int) -> None:
    """fl32(decode(payload) + new_residual) == fl32(u + old_residual), bit for bit."""
    weights, update = _model(seed)
    rng = np.random.default_rng(100 + seed)
    old = {n: (rng.standard_normal(s) * 1e-3).astype(np.float32) for n, s in SHAPES.items()}
    old["wte"][0, :3] = [1e-38, -3e-39, 0.0]  # subnormal corner
    res = gsfs_codec.encode(update, weights, budget, residual=old)
    decoded = gsfs_codec.decode(res.payload, SHAPES)
    for name in SHAPES:
        v = (update[name] + old[name]).astype(np.float32)
        back = (decoded[name] + res.residual[name]).astype(np.float32)
        assert back.dtype == np.float32
        assert np.array_equal(back, v), name


def test_wire_form_types_and_indices() -> None:
    weights, update = _model(3)
    res = gsfs_codec.encode(update, weights, 3000)
    for name in gsfs_codec.sent_tensors(res.payload):
        val = res.payload[f"{name}.val"]
        assert val.dtype == np.int8
        assert res.payload[f"{name}.scale"].dtype == np.float32
        idx = res.payload.get(f"{name}.idx")
        numel = int(np.prod(SHAPES[name]))
        if idx is not None:
            assert idx.dtype == (np.uint16 if numel <= 65536 else np.uint32)
            assert idx.shape == val.shape
            assert np.all(np.diff(idx.astype(np.int64)) > 0)
            assert int(idx.max()) < numel
        else:
            assert val.size == numel


@pytest.mark.parametrize("budget", [0, 9, 700, 4000, 50_000, 300_000])
def test_pack_unpack_roundtrip_in_at_most_five_arrays(budget: int) -> None:
    weights, update = _model(budget)
    payload = gsfs_codec.encode(update, weights, budget).payload
    packed = gsfs_codec.pack(payload, SHAPES)
    assert set(packed) <= set(gsfs_codec.PACKED_KEYS)
    assert len(packed) <= 5
    back = gsfs_codec.unpack(packed, SHAPES)
    assert back.keys() == payload.keys()
    for key, arr in payload.items():
        assert back[key].dtype == arr.dtype
        np.testing.assert_array_equal(back[key], arr)
    dense = gsfs_codec.decode(back, SHAPES)
    for name, arr in gsfs_codec.decode(payload, SHAPES).items():
        np.testing.assert_array_equal(dense[name], arr)
    # framing: 12 bytes of head per sent tensor, nothing else beyond the per-tensor data
    assert gsfs_codec.payload_nbytes(packed) == gsfs_codec.payload_nbytes(payload) + 12 * len(
        gsfs_codec.sent_tensors(payload)
    )


def _mixed_payload() -> gsfs_codec.Payload:
    """A payload with sparse tensors of both index widths (updates on one scale everywhere)."""
    rng = np.random.default_rng(5)
    weights = {n: np.full(s, 0.05, np.float32) for n, s in SHAPES.items()}
    update = {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}
    return gsfs_codec.encode(update, weights, 6000).payload


def test_pack_keeps_both_index_widths_apart() -> None:
    payload = _mixed_payload()
    assert "big.idx" in payload  # uint32
    assert any(k.endswith(".idx") and k != "big.idx" for k in payload)  # uint16
    packed = gsfs_codec.pack(payload, SHAPES)
    assert packed["gsfs.idx32"].dtype == np.uint32
    assert packed["gsfs.idx16"].dtype == np.uint16
    assert packed["gsfs.idx32"].size == payload["big.idx"].size


@pytest.mark.parametrize(
    "damage",
    ["extra key", "head dtype", "position out of range", "repeated position", "short values",
     "short indices", "extra indices", "bad flag", "missing scale"],
)  # fmt: skip
def test_unpack_rejects_malformed_framing(damage: str) -> None:
    p = dict(gsfs_codec.pack(_mixed_payload(), SHAPES))
    head = p["gsfs.head"].copy()
    if damage == "extra key":
        p["gsfs.evil"] = np.zeros(1, np.int8)
    elif damage == "head dtype":
        p["gsfs.head"] = head.astype(np.int64)
    elif damage == "position out of range":
        head[0, 0] = len(SHAPES)
        p["gsfs.head"] = head
    elif damage == "repeated position":
        head[1, 0] = head[0, 0]
        p["gsfs.head"] = head
    elif damage == "short values":
        p["gsfs.val"] = p["gsfs.val"][:-1]
    elif damage == "short indices":
        p["gsfs.idx16"] = p["gsfs.idx16"][:-1]
    elif damage == "extra indices":
        p["gsfs.idx32"] = np.concatenate([p["gsfs.idx32"], np.zeros(1, np.uint32)])
    elif damage == "bad flag":
        head[0, 2] = 2
        p["gsfs.head"] = head
    else:
        del p["gsfs.scale"]
    with pytest.raises(ValueError, match="gsfs"):
        gsfs_codec.unpack(p, SHAPES)


def test_uint32_indices_for_big_tensor() -> None:
    weights, update = _model(4)
    update = {n: np.zeros_like(u) for n, u in update.items()}
    update["big"][-1, -1] = 1.0
    res = gsfs_codec.encode(update, weights, 100)
    assert res.payload["big.idx"].dtype == np.uint32
    assert res.payload["big.idx"].tolist() == [300 * 240 - 1]
    assert res.nbytes == 4 + 1 + 4


def test_selection_prefers_sensitive_tensor_per_byte() -> None:
    """Same absolute update; the tensor with the small weight norm moves relatively more."""
    weights = {"a": np.full(64, 10.0, np.float32), "b": np.full(64, 0.01, np.float32)}
    update = {"a": np.full(64, 1e-3, np.float32), "b": np.full(64, 1e-3, np.float32)}
    res = gsfs_codec.encode(update, weights, 40)
    assert set(res.sent) == {"b"}
    sens = gsfs_codec.tensor_sensitivity(update, weights)
    assert sens["b"] > sens["a"]


def test_taylor_measure_uses_gradient() -> None:
    weights = {"a": np.ones(8, np.float32), "b": np.ones(8, np.float32)}
    update = {"a": np.full(8, 1e-2, np.float32), "b": np.full(8, 1e-2, np.float32)}
    grads = {"a": np.zeros(8, np.float32), "b": np.ones(8, np.float32)}
    res = gsfs_codec.encode(update, weights, 20, grads=grads)
    assert set(res.sent) == {"b"}


def test_min_tensor_sensitivity_skips_tensors() -> None:
    weights = {"a": np.ones(8, np.float32), "b": np.ones(8, np.float32)}
    update = {"a": np.full(8, 1.0, np.float32), "b": np.full(8, 1e-3, np.float32)}
    res = gsfs_codec.encode(update, weights, 10_000, min_tensor_sensitivity=0.01)
    assert set(res.sent) == {"a"}
    assert np.array_equal(res.residual["b"], update["b"])


def test_error_feedback_delivers_everything_eventually() -> None:
    """With a constant update and a small budget, the running sum sent tracks the true sum."""
    weights, update = _model(5)
    shapes = {n: u.shape for n, u in update.items()}
    residual: dict[str, np.ndarray] = {}
    sent_total = {n: np.zeros(s, np.float64) for n, s in shapes.items()}
    rounds = 30
    for _ in range(rounds):
        res = gsfs_codec.encode(update, weights, 20_000, residual=residual)
        residual = dict(res.residual)
        for n, d in gsfs_codec.decode(res.payload, shapes).items():
            sent_total[n] += d
    for n in shapes:
        truth = update[n].astype(np.float64) * rounds
        # What was not sent is exactly the residual: sum(sent) + residual == sum(update).
        np.testing.assert_allclose(sent_total[n] + residual[n], truth, rtol=1e-4, atol=1e-6)


def test_non_finite_update_is_refused() -> None:
    weights, update = _model(6)
    update["wte"][0, 0] = np.nan
    with pytest.raises(ValueError, match="not finite"):
        gsfs_codec.encode(update, weights, 1000)


def test_shared_mode_fills_exactly_the_shared_set() -> None:
    _, update = _model(7)
    rng = np.random.default_rng(7)
    shared = {
        "wte": np.sort(rng.choice(96 * 16, 50, replace=False)).astype(np.uint32),
        "ln.bias": np.arange(16, dtype=np.uint32),
    }
    clip = {n: float(np.max(np.abs(update[n]))) * 1.01 for n in shared}
    scales = gsfs_codec.shared_scales(clip)
    res = gsfs_codec.encode_shared(update, shared, scales)
    assert set(res.payload) == {"wte.val", "ln.bias.val"}
    assert res.payload["wte.val"].shape == (50,)
    assert res.nbytes == 50 + 16
    decoded = gsfs_codec.decode_shared(res.payload, shared, scales, SHAPES)
    for name in SHAPES:  # no clipping happened: exact
        back = (decoded[name] + res.residual[name]).astype(np.float32)
        assert np.array_equal(back, update[name])
    # Sums of shared payloads decode to the sum of the clients' contributions (what SecAgg needs).
    other = gsfs_codec.encode_shared({n: -u for n, u in update.items()}, shared, scales)
    summed = {
        k: res.payload[k].astype(np.int32) + other.payload[k].astype(np.int32) for k in res.payload
    }
    assert all(np.all(s == 0) for s in summed.values())


def test_shared_mode_clipping_keeps_residual() -> None:
    update = {"a": np.array([10.0, 0.5, -0.25], np.float32)}
    shared = {"a": np.array([0, 1, 2], np.uint32)}
    scales = gsfs_codec.shared_scales({"a": 1.0})
    res = gsfs_codec.encode_shared(update, shared, scales)
    decoded = gsfs_codec.decode_shared(res.payload, shared, scales, {"a": (3,)})
    assert decoded["a"][0] == pytest.approx(1.0)
    assert res.residual["a"][0] == pytest.approx(9.0)
    np.testing.assert_allclose(decoded["a"] + res.residual["a"], update["a"], rtol=1e-7)


def test_residual_roundtrip_npz(tmp_path: Path) -> None:
    _, update = _model(8)
    path = tmp_path / "residual.npz"
    assert gsfs_codec.load_residual(path) == {}
    gsfs_codec.save_residual(path, update)
    back = gsfs_codec.load_residual(path)
    assert set(back) == set(update)
    assert all(np.array_equal(back[n], update[n]) for n in update)
    assert [p.name for p in tmp_path.iterdir()] == ["residual.npz"]
