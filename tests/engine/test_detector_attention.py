"""Attention-based explanations: the helper matches the model's own forward pass."""

import numpy as np

from giot_engine.detector import Detector, DetectorConfig, attention_maps
from giot_engine.model import GIoTConfig, GIoTModel
from giot_engine.records import FlowRecord
from giot_engine.tokenizer import Vocabulary


def tiny() -> GIoTModel:
    return GIoTModel.init(GIoTConfig(vocab_size=len(Vocabulary.default()), n_embd=16, n_head=2), 3)


def test_attention_maps_match_model_forward() -> None:
    model = tiny()
    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, size=20)
    maps = attention_maps(model.params, model.config, ids)
    _, caches = model._forward(ids[None, :], True)
    for layer, cache in enumerate(caches[:-1]):
        np.testing.assert_allclose(maps[layer], cache["att"][0], atol=1e-4)
    assert maps.shape == (2, 2, 20, 20)
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
