"""The hub's scorer (GIoT model mixed with bigram counts) on the engine's KV-cached path."""

import numpy as np

from giot_engine.context import CachedScorer, ContextScorer
from giot_engine.detector import BigramModel
from giot_engine.model import GIoTConfig, GIoTModel
from giot_engine.model_manager import BlendScorer

VOCAB = 40


class _WindowsOnly:
    """The same scorer seen through ``token_nll`` alone: whole sliding windows, no cache."""

    def __init__(self, inner: BlendScorer) -> None:
        self.inner = inner

    def token_nll(self, ids: np.ndarray) -> np.ndarray:
        return self.inner.token_nll(ids)


def _blend() -> BlendScorer:
    rng = np.random.default_rng(3)
    model = GIoTModel.init(GIoTConfig(VOCAB, n_positions=32, n_embd=16, n_layer=1, n_head=2), 0)
    for name, p in model.params.items():
        model.params[name] = p + rng.normal(0.0, 0.1, p.shape).astype(np.float32)
    return BlendScorer(model, BigramModel(rng.random((VOCAB, VOCAB)) * 4))


def _requests() -> list[tuple[str, list[int], list[int]]]:
    rng = np.random.default_rng(4)
    return [
        (f"d{int(rng.integers(0, 3))}", [], [int(x) for x in rng.integers(4, VOCAB, 5)])
        for _ in range(40)
    ]


def test_cached_mixture_equals_the_mixture_of_whole_windows() -> None:
    blend = _blend()
    assert isinstance(blend, CachedScorer)
    assert not isinstance(_WindowsOnly(blend), CachedScorer)
    cached = ContextScorer(blend, 32, 26, 26).score(_requests())  # carry = keep: sliding
    windows = ContextScorer(_WindowsOnly(blend), 32, 26, 26).score(_requests())
    for c, w in zip(cached, windows, strict=True):
        np.testing.assert_allclose(c, w, rtol=1e-4, atol=1e-4)


def test_bigram_alone_offers_no_cache() -> None:
    bigram = _blend().bigram  # what the hub scores with until the model beats the counts
    assert not isinstance(bigram, CachedScorer)
    got = ContextScorer(bigram, 32, 26, 26).score(_requests())
    assert all(np.isfinite(g).all() for g in got)
