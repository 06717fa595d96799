"""GIoT numpy model: gradients, causality, the KV-cached scorer and the HF file layout."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from giot_engine.model import GIoTConfig, GIoTModel, param_shapes
from giot_engine.safetensors import load_safetensors, save_safetensors

TINY = GIoTConfig(vocab_size=13, n_positions=8, n_embd=8, n_layer=2, n_head=2)
SMALL = GIoTConfig(vocab_size=50, n_positions=24, n_embd=32, n_layer=2, n_head=4)


def _perturbed(config: GIoTConfig, seed: int, scale: float = 0.3) -> GIoTModel:
    """A model whose LayerNorm gains/biases and biases are not trivially 1/0."""
    model = GIoTModel.init(config, seed)
    rng = np.random.default_rng(seed + 1)
    for name, p in model.params.items():
        model.params[name] = p + rng.normal(0.0, scale, p.shape).astype(np.float32)
    return model


def _ids(config: GIoTConfig, b: int, t: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, config.vocab_size, (b, t))


def _nll_from_logits(model: GIoTModel, ids: np.ndarray) -> np.ndarray:
    logits = model.logits(ids).astype(np.float64)
    m = logits.max(-1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
    return -np.take_along_axis(logp[:, :-1], ids[:, 1:, None], axis=2)[..., 0]


def test_param_names_and_shapes_follow_gpt2() -> None:
    model = GIoTModel.init(SMALL, 0)
    assert list(model.params)[:3] == [
        "transformer.wte.weight",
        "transformer.wpe.weight",
        "transformer.h.0.ln_1.weight",
    ]
    assert model.params["transformer.h.1.attn.c_attn.weight"].shape == (32, 96)  # Conv1D [in, out]
    assert model.params["transformer.h.0.mlp.c_proj.weight"].shape == (128, 32)
    assert "lm_head.weight" not in model.params
    assert all(p.dtype == np.float32 for p in model.params.values())
    c, v, p, n = 32, 50, 24, 2
    assert model.num_parameters() == v * c + p * c + n * (12 * c * c + 13 * c) + 2 * c


def test_init_is_deterministic_per_seed() -> None:
    a, b, c = GIoTModel.init(SMALL, 7), GIoTModel.init(SMALL, 7), GIoTModel.init(SMALL, 8)
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert not np.array_equal(
        a.params["transformer.wte.weight"], c.params["transformer.wte.weight"]
    )


def test_gradients_match_finite_differences() -> None:
    model = _perturbed(TINY, 3)
    model.params = {k: v.astype(np.float64) for k, v in model.params.items()}  # float64 copy
    ids = _ids(TINY, 3, 7, seed=1)
    mask = np.random.default_rng(2).random((3, 6)) < 0.7
    loss, grads = model.loss_and_grads(ids, mask)
    assert np.isfinite(loss)
    rng = np.random.default_rng(4)
    eps = 1e-6
    for name, p in model.params.items():
        assert grads[name].shape == p.shape
        for flat in rng.choice(p.size, size=min(p.size, 6), replace=False):
            idx = np.unravel_index(flat, p.shape)
            old = p[idx]
            p[idx] = old + eps
            up = model.loss_and_grads(ids, mask)[0]
            p[idx] = old - eps
            down = model.loss_and_grads(ids, mask)[0]
            p[idx] = old
            numeric = (up - down) / (2 * eps)
            assert grads[name][idx] == pytest.approx(numeric, rel=1e-5, abs=1e-8), name
    # one directional derivative over all parameters at once, including every wte/wpe row
    base = {k: p.copy() for k, p in model.params.items()}
    direction = {k: rng.normal(size=p.shape) for k, p in base.items()}
    losses = []
    for sign in (1, -1):
        model.params = {k: base[k] + sign * eps * direction[k] for k in base}
        losses.append(model.loss_and_grads(ids, mask)[0])
    analytic = sum(float((grads[k] * direction[k]).sum()) for k in grads)
    assert analytic == pytest.approx((losses[0] - losses[1]) / (2 * eps), rel=1e-6)


def test_float32_grads_and_tied_head() -> None:
    model = _perturbed(SMALL, 0, scale=0.05)
    loss, grads = model.loss_and_grads(_ids(SMALL, 4, 24))
    assert all(g.dtype == np.float32 for g in grads.values())
    assert 0 < loss < 10
    # a token that never occurs still gets a wte gradient through the tied head
    ids = np.zeros((2, 10), np.int64)
    _, grads = model.loss_and_grads(ids)
    assert np.abs(grads["transformer.wte.weight"][SMALL.vocab_size - 1]).sum() > 0
    assert np.abs(grads["transformer.wpe.weight"][10:]).sum() == 0


def test_empty_loss_mask_gives_zero_loss_and_grads() -> None:
    model = GIoTModel.init(TINY, 0)
    loss, grads = model.loss_and_grads(_ids(TINY, 2, 5), np.zeros((2, 4), bool))
    assert loss == 0.0
    assert all(not g.any() for g in grads.values())


def test_changing_a_future_token_leaves_earlier_outputs_unchanged() -> None:
    model = _perturbed(SMALL, 1, scale=0.1)
    ids = _ids(SMALL, 3, 20)
    changed = ids.copy()
    changed[:, 12] = (changed[:, 12] + 1) % SMALL.vocab_size
    a, b = model.logits(ids), model.logits(changed)
    np.testing.assert_allclose(a[:, :12], b[:, :12], rtol=0, atol=1e-6)
    assert np.abs(a[:, 12:] - b[:, 12:]).max() > 1e-3
    na, nb = model.token_nll(ids), model.token_nll(changed)
    np.testing.assert_allclose(na[:, :11], nb[:, :11], rtol=0, atol=1e-6)
    assert np.abs(na[:, 11] - nb[:, 11]).max() > 1e-3


def test_token_nll_matches_log_softmax_of_logits() -> None:
    model = _perturbed(SMALL, 2, scale=0.1)
    assert model._fused().exp_safe  # the fast head path: no max subtraction
    ids = _ids(SMALL, 5, 24)
    nll = model.token_nll(ids)
    assert nll.dtype == np.float32
    assert nll.shape == (5, 23)
    np.testing.assert_allclose(nll, _nll_from_logits(model, ids), rtol=1e-5, atol=1e-5)


def test_incremental_scoring_equals_whole_window() -> None:
    model = _perturbed(SMALL, 4, scale=0.1)
    ids = _ids(SMALL, 70, 24)  # 70 rows: several chunks inside score_append
    whole = model.token_nll(ids)
    cache = model.new_cache(70)
    parts = [model.score_append(cache, ids[:, a:b]) for a, b in ((0, 6), (6, 7), (7, 16), (16, 24))]
    inc = np.concatenate(parts, axis=1)
    assert np.isnan(inc[:, 0]).all()
    np.testing.assert_allclose(inc[:, 1:], whole, rtol=1e-5, atol=1e-5)
    assert cache.length == 24
    with pytest.raises(ValueError, match="capacity"):
        model.score_append(cache, ids[:, :1])
    # a copy scores a candidate without touching the original context
    cache.reset()
    model.score_append(cache, ids[:, :6])
    trial = cache.copy()
    trial_nll = model.score_append(trial, ids[:, 6:10])
    assert cache.length == 6
    assert trial.length == 10
    np.testing.assert_array_equal(model.score_append(cache, ids[:, 6:10]), trial_nll)
    np.testing.assert_allclose(trial_nll, whole[:, 5:9], rtol=1e-5, atol=1e-5)


def test_pool_rows_score_contexts_of_different_lengths_like_whole_windows() -> None:
    """score_rows: each pool row keeps its own length, so devices batch whatever their context."""
    model = _perturbed(SMALL, 5, scale=0.1)
    rng = np.random.default_rng(9)
    n_rows = 90  # more tokens than one chunk: several chunks in one call
    ids = _ids(SMALL, n_rows, 24, seed=3)
    whole = model.token_nll(ids)
    pool = model.new_cache(n_rows + 5)
    slots = rng.permutation(n_rows + 5)[:n_rows]  # devices sit in arbitrary pool rows
    length = np.zeros(n_rows, np.intp)
    got = np.full((n_rows, 24), np.nan)
    while (length < 24).any():
        todo = np.flatnonzero(length < 24)
        todo = todo[rng.random(len(todo)) < 0.7] if len(todo) > 3 else todo  # not all each time
        for t in (1, 3, 5):
            pick = todo[length[todo] + t <= 24]
            if t != 5:
                pick = pick[rng.random(len(pick)) < 0.5]
            todo = np.setdiff1d(todo, pick)
            if not len(pick):
                continue
            cols = length[pick][:, None] + np.arange(t)
            new = ids[pick[:, None], cols]
            nll = model.score_rows(pool, slots[pick], length[pick], new)
            got[pick[:, None], cols] = nll
            length[pick] += t
        for r in todo:  # the tails that fit no chunk size
            t = 24 - int(length[r])
            nll = model.score_rows(pool, slots[[r]], length[[r]], ids[[r], length[r] :])
            got[r, length[r] :] = nll[0]
            length[r] += t
    assert np.isnan(got[:, 0]).all()
    np.testing.assert_allclose(got[:, 1:], whole, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="capacity"):
        model.score_rows(pool, slots[:1], np.array([20]), ids[:1, :5])
    with pytest.raises(ValueError, match="distinct rows"):
        model.score_rows(pool, np.array([1, 1]), np.array([0, 0]), ids[:2, :2])


def test_every_use_of_the_forward_pass_gives_the_same_scores() -> None:
    """Training's forward, whole windows, streaming and padded pool rows: one pass, one answer."""
    model = _perturbed(SMALL, 8, scale=0.2)
    rng = np.random.default_rng(10)
    ids = _ids(SMALL, 12, 24, seed=11)
    reference = _nll_from_logits(model, ids)  # logits: the training forward, no cache, no tricks
    mask = rng.random((12, 23)) < 0.6
    loss, _ = model.loss_and_grads(ids, mask)
    assert loss == pytest.approx(float(reference[mask].mean()), rel=1e-5)
    np.testing.assert_allclose(model.token_nll(ids), reference, rtol=1e-5, atol=1e-5)
    cache = model.new_cache(12)
    stream = [model.score_append(cache, ids[:, a : a + 5]) for a in range(0, 24, 5)]
    np.testing.assert_allclose(np.hstack(stream)[:, 1:], reference, rtol=1e-5, atol=1e-5)
    # pool rows: arbitrary slots, each row its own context length and number of real tokens
    pool, slots = model.new_cache(20), rng.permutation(20)[:12]
    length, got = np.zeros(12, np.intp), np.full((12, 24), np.nan)
    while (length < 24).any():
        lens = np.minimum(rng.integers(1, 7, 12), 24 - length)
        rows = np.flatnonzero(lens)
        new = rng.integers(0, SMALL.vocab_size, (len(rows), 6))  # padding: any ids
        for r, i in enumerate(rows):
            new[r, : lens[i]] = ids[i, length[i] : length[i] + lens[i]]
        nll = model.score_rows(pool, slots[rows], length[rows], new, lens[rows])
        for r, i in enumerate(rows):
            got[i, length[i] : length[i] + lens[i]] = nll[r, : lens[i]]
        length += lens
    np.testing.assert_allclose(got[:, 1:], reference, rtol=1e-5, atol=1e-5)


def test_scoring_stays_exact_with_large_weights() -> None:
    """Large logits and attention scores take the max-subtracting fallbacks."""
    model = _perturbed(SMALL, 5, scale=0.1)
    for name in model.params:
        if "c_attn.weight" in name or "wte" in name or "ln_f" in name:
            model.params[name] *= 12.0
    assert not model._fused().exp_safe  # the head takes its max-subtracting path too
    ids = _ids(SMALL, 4, 24)
    nll = model.token_nll(ids)
    ref = _nll_from_logits(model, ids)
    assert ref.max() > 100  # the model is confidently wrong somewhere: logits are large
    np.testing.assert_allclose(nll, ref, rtol=1e-4, atol=1e-3)


def test_save_and_load_round_trip_is_bit_exact(tmp_path: Path) -> None:
    model = _perturbed(SMALL, 6)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "gpt2"
    assert config["architectures"] == ["GPT2LMHeadModel"]
    assert config["activation_function"] == "gelu_new"
    assert config["use_cache"] is False
    assert config["tie_word_embeddings"] is True
    loaded = GIoTModel.from_pretrained(tmp_path)
    assert loaded.config == model.config
    for name, p in model.params.items():
        assert loaded.params[name].dtype == np.float32
        assert np.array_equal(loaded.params[name], p), name
    ids = _ids(SMALL, 2, 24)
    assert np.array_equal(loaded.logits(ids), model.logits(ids))


def test_safetensors_layout(tmp_path: Path) -> None:
    tensors = {"b": np.arange(6, dtype=np.float32).reshape(2, 3), "a": np.ones(3, np.float32)}
    path = tmp_path / "t.safetensors"
    save_safetensors(path, tensors)
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0
    header = json.loads(raw[8 : 8 + n])
    assert header["__metadata__"] == {"format": "pt"}
    assert header["b"] == {"dtype": "F32", "shape": [2, 3], "data_offsets": [12, 36]}
    assert len(raw) == 8 + n + 36
    loaded = load_safetensors(path)
    assert np.array_equal(loaded["b"], tensors["b"])
    # other dtypes written by torch are read as float32
    bf16 = (np.array([1.5, -2.0], np.float32).view(np.uint32) >> 16).astype("<u2")
    f16 = np.array([0.25, 4.0], "<f2")
    header = {
        "x": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]},
        "y": {"dtype": "F16", "shape": [2], "data_offsets": [4, 8]},
    }
    raw_h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw_h)) + raw_h + bf16.tobytes() + f16.tobytes())
    loaded = load_safetensors(path)
    assert loaded["x"].tolist() == [1.5, -2.0]
    assert loaded["y"].tolist() == [0.25, 4.0]


def test_config_round_trip_and_rejects_other_variants() -> None:
    assert GIoTConfig.from_hf_dict(SMALL.to_hf_dict()) == SMALL
    bad = SMALL.to_hf_dict() | {"activation_function": "relu"}
    with pytest.raises(ValueError, match="activation_function"):
        GIoTConfig.from_hf_dict(bad)
    with pytest.raises(ValueError, match="n_inner"):
        GIoTConfig.from_hf_dict(SMALL.to_hf_dict() | {"n_inner": 7})
    with pytest.raises(ValueError, match="multiple"):
        GIoTConfig(vocab_size=10, n_embd=30, n_head=4)


def test_bad_inputs_are_rejected() -> None:
    model = GIoTModel.init(TINY, 0)
    with pytest.raises(ValueError, match="vocabulary"):
        model.logits(np.array([[0, TINY.vocab_size]]))
    with pytest.raises(ValueError, match="n_positions"):
        model.logits(np.zeros((1, TINY.n_positions + 1), np.int64))
    with pytest.raises(ValueError, match="2-D"):
        model.token_nll(np.zeros(4, np.int64))
    params = {k: np.zeros(s, np.float32) for k, s in param_shapes(TINY).items()}
    params["transformer.wpe.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(ValueError, match="shape"):
        GIoTModel(TINY, params)


def test_frozen_model_scores_alike_and_refuses_changes() -> None:
    """Freezing folds the weights once: same scores, and no later change can make them stale."""
    cfg = GIoTConfig(vocab_size=40, n_positions=32, n_embd=16, n_layer=2, n_head=2)
    live = GIoTModel.init(cfg, 3)
    frozen = GIoTModel(cfg, {k: v.copy() for k, v in live.params.items()}).freeze()
    ids = np.random.default_rng(0).integers(0, 40, (3, 12))
    a, b = live.new_cache(3), frozen.new_cache(3)
    for k in range(0, 12, 4):
        np.testing.assert_array_equal(
            live.score_append(a, ids[:, k : k + 4]), frozen.score_append(b, ids[:, k : k + 4])
        )
    with pytest.raises(ValueError, match="read-only"):
        frozen.params["transformer.wte.weight"] *= 2.0
    with pytest.raises(TypeError, match="frozen"):
        frozen.params["transformer.wte.weight"] = live.params["transformer.wte.weight"]
    copy = GIoTModel(cfg, {k: v.copy() for k, v in frozen.params.items()})
    copy.params["transformer.wte.weight"] *= 2.0  # a copy trains as before
    assert not np.array_equal(copy.token_nll(ids), frozen.token_nll(ids))
