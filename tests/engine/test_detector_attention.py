"""Attention-based explanations: the helper matches the model's own forward pass."""

import numpy as np

from giot_engine.detector import Detector, DetectorConfig
from giot_engine.model import GIoTConfig, GIoTModel
from giot_engine.records import FlowRecord
from giot_engine.tokenizer import Vocabulary


def tiny() -> GIoTModel:
    return GIoTModel.init(GIoTConfig(vocab_size=len(Vocabulary.default()), n_embd=16, n_head=2), 3)


def _reference_attention(model: GIoTModel, ids: np.ndarray) -> np.ndarray:
    """GPT-2's attention written out plainly in float64 (the detector's helper before
    ``GIoTModel.attention``): the model's folded, base-2 pass must give the same maps.
    """
    params, cfg = model.params, model.config
    t, hd = len(ids), cfg.head_dim
    x = (params["transformer.wte.weight"][ids] + params["transformer.wpe.weight"][:t]).astype(
        np.float64
    )
    mask = np.triu(np.full((t, t), -np.inf), 1)

    def ln(z: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
        zc = z - z.mean(axis=1, keepdims=True)
        out: np.ndarray = zc / np.sqrt((zc * zc).mean(axis=1, keepdims=True) + 1e-5) * w + b
        return out

    maps = []
    for i in range(cfg.n_layer):
        h = f"transformer.h.{i}."
        h1 = ln(x, params[h + "ln_1.weight"], params[h + "ln_1.bias"])
        qkv = h1 @ params[h + "attn.c_attn.weight"] + params[h + "attn.c_attn.bias"]
        q, k, v = qkv.reshape(t, 3, cfg.n_head, hd).transpose(1, 2, 0, 3)  # (H, T, hd) each
        s = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        att = s / s.sum(axis=-1, keepdims=True)
        maps.append(att)
        y = (att @ v).transpose(1, 0, 2).reshape(t, -1)
        x = x + y @ params[h + "attn.c_proj.weight"] + params[h + "attn.c_proj.bias"]
        h2 = ln(x, params[h + "ln_2.weight"], params[h + "ln_2.bias"])
        a = h2 @ params[h + "mlp.c_fc.weight"] + params[h + "mlp.c_fc.bias"]
        g = 0.5 * a * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (a + 0.044715 * a**3)))
        x = x + g @ params[h + "mlp.c_proj.weight"] + params[h + "mlp.c_proj.bias"]
    return np.stack(maps)


def test_attention_maps_match_plain_gpt2() -> None:
    model = tiny()
    rng = np.random.default_rng(0)
    for name, p in model.params.items():  # biases and gains off 0/1: the folding shows
        model.params[name] = p + rng.normal(0.0, 0.2, p.shape).astype(np.float32)
    ids = rng.integers(0, model.config.vocab_size, size=20)
    maps = model.attention(ids)
    assert maps.shape == (2, 2, 20, 20)
    np.testing.assert_allclose(maps, _reference_attention(model, ids), atol=1e-5)
    np.testing.assert_allclose(maps.sum(axis=-1), 1.0, atol=1e-6)
    assert np.all(np.triu(maps[0, 0], 1) == 0)  # causal


def test_alarm_explanation_names_attended_context() -> None:
    det = Detector(tiny(), config=DetectorConfig(warmup=3, floor_nats=0.0, margin_nats=-50.0,
                                                   k_on=1))  # fmt: skip
    flows = [
        FlowRecord(1e9 + i, "192.168.1.5", 40000, "8.8.8.8", 53, "udp", f"u{i}", None, 0.01,
                   40, 90, "SF", "Dd", 1, 1)
        for i in range(6)
    ]  # fmt: skip
    verdicts = [det.process(f) for f in flows]
    v = next(v for v in verdicts if v.alarm)  # the record that switched the device on
    assert v.explanation is not None
    att = v.explanation.attention
    assert 1 <= len(att) <= 5
    n_ctx = 7 * verdicts.index(v)  # flows before it, 7 tokens each
    assert all(0 <= pos < n_ctx for pos, _ in att)
    later = [u for u in verdicts[verdicts.index(v) + 1 :] if u.alarm]
    assert all(u.explanation is not None and u.explanation.attention == [] for u in later)
    assert [w for _, w in att] == sorted((w for _, w in att), reverse=True)
