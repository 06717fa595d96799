"""Local training: AdamW, deterministic batching, clipping and exact resumption."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from giot_engine.model import GIoTConfig, GIoTModel
from giot_engine.train import AdamW, batch_indices, clip_grad_norm, train_windows

CONFIG = GIoTConfig(vocab_size=20, n_positions=16, n_embd=16, n_layer=2, n_head=2)


def _windows(n: int = 40, t: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, CONFIG.vocab_size, (n, t))


def test_adamw_matches_the_reference_update() -> None:
    opt = AdamW(lr=0.1, betas=(0.8, 0.9), eps=1e-8, weight_decay=0.5)
    w, b = np.array([[1.0, -2.0]], np.float32), np.array([0.5], np.float32)
    params = {"w": w, "b": b}
    m = v = np.zeros(3)
    ref = np.array([1.0, -2.0, 0.5])
    for step, g in enumerate(([0.3, -0.1, 0.2], [0.1, 0.4, -0.3]), start=1):
        grad = np.array(g)
        opt.step(
            params,
            {"w": grad[:2].reshape(1, 2).astype(np.float32), "b": grad[2:].astype(np.float32)},
        )
        m = 0.8 * m + 0.2 * grad
        v = 0.9 * v + 0.1 * grad**2
        ref[:2] *= 1 - 0.1 * 0.5  # decoupled decay on matrices only
        ref -= 0.1 * (m / (1 - 0.8**step)) / (np.sqrt(v / (1 - 0.9**step)) + 1e-8)
    np.testing.assert_allclose(np.concatenate([w.ravel(), b]), ref, rtol=1e-6)
    assert w.dtype == np.float32


def test_clip_grad_norm_scales_to_the_limit() -> None:
    grads = {"a": np.array([3.0], np.float32), "b": np.array([[4.0]], np.float32)}
    assert clip_grad_norm(grads, 1.0) == pytest.approx(5.0)
    total = math.sqrt(float(grads["a"][0]) ** 2 + float(grads["b"][0, 0]) ** 2)
    assert total == pytest.approx(1.0, rel=1e-5)
    assert grads["a"][0] / grads["b"][0, 0] == pytest.approx(0.75)
    small = {"a": np.array([0.1], np.float32)}
    clip_grad_norm(small, 1.0)
    assert small["a"][0] == np.float32(0.1)


def test_batches_cover_each_epoch_once_and_depend_on_seed() -> None:
    rows = np.concatenate([batch_indices(10, 4, seed=3, step=s) for s in range(5)])
    assert sorted(rows[:10]) == list(range(10))  # first epoch is a permutation
    assert sorted(rows[10:20]) == list(range(10))
    assert np.array_equal(batch_indices(10, 4, 3, 2), rows[8:12])
    assert not np.array_equal(batch_indices(10, 4, 4, 0), batch_indices(10, 4, 3, 0))


def test_training_is_deterministic_for_a_seed() -> None:
    runs = []
    for _ in range(2):
        model = GIoTModel.init(CONFIG, 1)
        report = train_windows(model, _windows(), steps=4, batch_size=8, seed=5)
        runs.append((model, report))
    (m1, r1), (m2, r2) = runs
    assert r1.final_loss == r2.final_loss
    assert all(np.array_equal(m1.params[k], m2.params[k]) for k in m1.params)
    assert r1.steps == 4
    assert r1.tokens == 4 * 8 * 15
    assert r1.tokens_per_second > 0
    m3 = GIoTModel.init(CONFIG, 1)
    train_windows(m3, _windows(), steps=4, batch_size=8, seed=6)
    assert not np.array_equal(
        m1.params["transformer.wte.weight"], m3.params["transformer.wte.weight"]
    )


def test_resumed_training_equals_uninterrupted_training(tmp_path: Path) -> None:
    windows = _windows()
    mask = np.random.default_rng(9).random((40, 15)) < 0.8
    straight = GIoTModel.init(CONFIG, 2)
    opt = AdamW(lr=3e-3)
    train_windows(straight, windows, steps=7, batch_size=6, seed=11, optimizer=opt, loss_mask=mask)

    first = GIoTModel.init(CONFIG, 2)
    opt1 = AdamW(lr=3e-3)
    train_windows(first, windows, steps=3, batch_size=6, seed=11, optimizer=opt1, loss_mask=mask)
    first.save_pretrained(tmp_path / "model")
    np.savez(tmp_path / "opt.npz", **opt1.state_dict())

    resumed = GIoTModel.from_pretrained(tmp_path / "model")
    opt2 = AdamW()
    with np.load(tmp_path / "opt.npz") as state:
        opt2.load_state_dict(dict(state))
    assert opt2.lr == 3e-3
    assert opt2.step_count == 3
    train_windows(resumed, windows, steps=4, batch_size=6, seed=11, optimizer=opt2, loss_mask=mask)
    for name, p in straight.params.items():
        assert np.array_equal(resumed.params[name], p), name
    assert opt2.step_count == opt.step_count == 7
    for name in opt.m:
        assert np.array_equal(opt2.m[name], opt.m[name])
        assert np.array_equal(opt2.v[name], opt.v[name])


def test_loss_decreases_on_a_repeating_sequence() -> None:
    pattern = np.array([4, 7, 1, 9, 3, 3, 12, 5])
    seq = np.tile(pattern, 10)
    windows = np.stack([seq[i : i + 16] for i in range(len(seq) - 16)])
    model = GIoTModel.init(CONFIG, 0)
    before = float(model.token_nll(windows).mean())
    report = train_windows(model, windows, steps=60, batch_size=8, seed=0, optimizer=AdamW(lr=1e-2))
    after = float(model.token_nll(windows).mean())
    assert before > 2.5  # ~log(20) for an untrained model
    assert after < 0.3
    assert report.final_loss < report.mean_loss


def test_bad_arguments_are_rejected() -> None:
    model = GIoTModel.init(CONFIG, 0)
    with pytest.raises(ValueError, match="windows"):
        train_windows(model, np.zeros((0, 16), np.int64), steps=1, batch_size=2, seed=0)
    with pytest.raises(ValueError, match="loss_mask"):
        train_windows(
            model, _windows(), steps=1, batch_size=2, seed=0, loss_mask=np.ones((40, 16), bool)
        )
