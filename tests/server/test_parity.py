"""One set of weights, three runtimes: numpy GIoT == transformers GPT-2 == ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2LMHeadModel

from fl_server.hf import (
    OnnxLogits,
    export_onnx,
    from_transformers,
    nll_from_logits,
    to_transformers,
)
from giot_engine.model import GIoTConfig, GIoTModel

CONFIG = GIoTConfig(vocab_size=61, n_positions=20, n_embd=32, n_layer=2, n_head=4)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def model() -> GIoTModel:
    """Non-trivial weights: LayerNorm gains and all biases moved off 1/0."""
    m = GIoTModel.init(CONFIG, 0)
    rng = np.random.default_rng(1)
    for name, p in m.params.items():
        m.params[name] = p + rng.normal(0.0, 0.1, p.shape).astype(np.float32)
    return m


@pytest.fixture(scope="module")
def ids() -> np.ndarray:
    return np.random.default_rng(2).integers(0, CONFIG.vocab_size, (4, CONFIG.n_positions))


def test_logits_match_transformers(model: GIoTModel, ids: np.ndarray) -> None:
    hf = to_transformers(model)
    assert isinstance(hf, GPT2LMHeadModel)
    with torch.no_grad():
        ref = hf(torch.from_numpy(ids)).logits.numpy()
    ours = model.logits(ids)
    assert ours.dtype == np.float32
    assert _rel(ours, ref) < 1e-5
    # the fast scoring path agrees with transformers as well
    assert _rel(model.token_nll(ids), nll_from_logits(ref, ids)) < 1e-5


def test_grads_match_torch_autograd(model: GIoTModel, ids: np.ndarray) -> None:
    mask = np.random.default_rng(3).random((ids.shape[0], ids.shape[1] - 1)) < 0.6
    loss, grads = model.loss_and_grads(ids, mask)
    hf = to_transformers(model)
    t_ids = torch.from_numpy(ids)
    logits = hf(t_ids).logits[:, :-1]
    t_mask = torch.from_numpy(mask)
    ref = torch.nn.functional.cross_entropy(logits[t_mask], t_ids[:, 1:][t_mask])
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-5)
    named = dict(hf.named_parameters())  # lm_head is tied: wte's grad includes the head's
    assert set(named) == set(grads)
    for name, g in grads.items():
        t_grad = named[name].grad
        assert t_grad is not None
        assert _rel(g, t_grad.numpy()) < 1e-4, name


def test_round_trip_through_transformers(model: GIoTModel) -> None:
    back = from_transformers(to_transformers(model))
    assert back.config == model.config
    assert all(np.array_equal(back.params[k], p) for k, p in model.params.items())


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.export internals
def test_onnx_runtime_matches_numpy(model: GIoTModel, ids: np.ndarray, tmp_path: Path) -> None:
    session = OnnxLogits(export_onnx(model, tmp_path / "giot.onnx"))
    for sub in (ids, ids[:1, :7], ids[:, :1]):  # dynamic batch and sequence length
        assert _rel(session(sub), model.logits(sub)) < 1e-4
    np.testing.assert_allclose(session.token_nll(ids), model.token_nll(ids), rtol=1e-4, atol=1e-4)


def test_save_pretrained_loads_with_automodel(
    model: GIoTModel, ids: np.ndarray, tmp_path: Path
) -> None:
    model.save_pretrained(tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(hf, GPT2LMHeadModel)
    assert hf.config.use_cache is False
    hf.eval()
    with torch.no_grad():
        ref = hf(torch.from_numpy(ids)).logits.numpy()
    assert _rel(model.logits(ids), ref) < 1e-5
    # and back: a directory written by transformers loads in the numpy engine, bit-exact
    hf.save_pretrained(tmp_path / "hf")
    again = GIoTModel.from_pretrained(tmp_path / "hf")
    assert all(np.array_equal(again.params[k], p) for k, p in model.params.items())
