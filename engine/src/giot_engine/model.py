"""GIoT: a compact causal transformer with the GPT-2 architecture, in numpy (forward and backward).

The math is that of transformers' ``GPT2LMHeadModel`` (learned positions, pre-LN blocks, gelu_new,
causal attention scaled by 1/sqrt(head_dim), final ln_f, LM head tied to ``wte``, Conv1D weights
stored [in, out]) so that one set of weights runs here, in torch and in ONNX Runtime, and so that a
saved directory loads with ``AutoModelForCausalLM.from_pretrained``. Inside Home Assistant only
numpy exists, hence the hand-written backward pass (and ``safetensors.py``).

One forward pass (``_forward``) serves training, ``logits``, attention maps and the detector's
hot path alike: new tokens appended to a KV cache (training and whole windows start from an
empty one), so each token is computed once and devices are batched into one GEMM. It is built
for that hot path: LayerNorm affines and the attention scale are folded into GEMM weights, the
key bias (which cancels in the softmax) is dropped and the value bias moves behind the
projection, exp() is exp2() on base-2 scores (twice as fast in numpy), reusable work buffers
avoid page faults, and the LM head runs only on rows whose prediction is scored. The backward
pass differentiates through the folded weights. Same math as GPT-2, float32 rounding aside.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .safetensors import load_safetensors, save_safetensors

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.integer[Any]]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_K = _GELU_C * 0.044715
_LOG2E = 1.0 / math.log(2.0)
_EXP_SAFE = 85.0  # |logit| + log(V) below this: a float32 sum of exp() neither overflows nor hits 0
_CHUNK_TOKENS = 1024  # rows per scoring chunk: amortises Python overhead, activations stay in L2/L3


@dataclass(frozen=True)
class GIoTConfig:
    """Hyper-parameters; the subset of ``GPT2Config`` that GIoT varies."""

    vocab_size: int
    n_positions: int = 64
    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 4
    layer_norm_epsilon: float = 1e-5

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not a multiple of n_head {self.n_head}")
        if min(self.vocab_size, self.n_positions, self.n_embd, self.n_layer, self.n_head) < 1:
            raise ValueError(f"sizes must be positive: {self}")

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.n_embd // self.n_head

    def to_hf_dict(self) -> dict[str, object]:
        """Return a ``GPT2Config`` dict that makes transformers build exactly this network."""
        return {
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "vocab_size": self.vocab_size,
            "n_positions": self.n_positions,
            "n_embd": self.n_embd,
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "n_inner": None,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
            "initializer_range": 0.02,
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
            "tie_word_embeddings": True,
            "use_cache": False,
            "bos_token_id": None,
            "eos_token_id": None,
            "pad_token_id": None,
            "dtype": "float32",
        }

    @classmethod
    def from_hf_dict(cls, d: Mapping[str, object]) -> GIoTConfig:
        """Read a GPT2Config dict, refusing variants whose math this engine does not implement."""
        if d.get("model_type", "gpt2") != "gpt2":
            raise ValueError(f"not a GPT-2 config: model_type={d.get('model_type')!r}")
        wanted: dict[str, object] = {
            "activation_function": ("gelu_new", "gelu_pytorch_tanh"),
            "scale_attn_weights": (True,),
            "scale_attn_by_inverse_layer_idx": (False,),
            "tie_word_embeddings": (True,),
            "add_cross_attention": (False,),
        }
        for key, allowed in wanted.items():
            if key in d and d[key] not in allowed:  # type: ignore[operator]
                raise ValueError(f"unsupported GPT-2 variant: {key}={d[key]!r}")
        n_embd = int(d.get("n_embd", 64))  # type: ignore[call-overload]
        if d.get("n_inner") not in (None, 4 * n_embd):
            raise ValueError(f"unsupported n_inner {d.get('n_inner')!r}: GIoT uses 4 * n_embd")
        return cls(
            vocab_size=int(d["vocab_size"]),  # type: ignore[call-overload]
            n_positions=int(d.get("n_positions", 64)),  # type: ignore[call-overload]
            n_embd=n_embd,
            n_layer=int(d.get("n_layer", 2)),  # type: ignore[call-overload]
            n_head=int(d.get("n_head", 4)),  # type: ignore[call-overload]
            layer_norm_epsilon=float(d.get("layer_norm_epsilon", 1e-5)),  # type: ignore[arg-type]
        )


def param_shapes(config: GIoTConfig) -> dict[str, tuple[int, ...]]:
    """Names and shapes exactly as ``GPT2LMHeadModel.state_dict()`` (the tied lm_head left out)."""
    c, v, p = config.n_embd, config.vocab_size, config.n_positions
    shapes: dict[str, tuple[int, ...]] = {
        "transformer.wte.weight": (v, c),
        "transformer.wpe.weight": (p, c),
    }
    for i in range(config.n_layer):
        h = f"transformer.h.{i}."
        shapes |= {
            h + "ln_1.weight": (c,), h + "ln_1.bias": (c,),
            h + "attn.c_attn.weight": (c, 3 * c), h + "attn.c_attn.bias": (3 * c,),
            h + "attn.c_proj.weight": (c, c), h + "attn.c_proj.bias": (c,),
            h + "ln_2.weight": (c,), h + "ln_2.bias": (c,),
            h + "mlp.c_fc.weight": (c, 4 * c), h + "mlp.c_fc.bias": (4 * c,),
            h + "mlp.c_proj.weight": (4 * c, c), h + "mlp.c_proj.bias": (c,),
        }  # fmt: skip
    return shapes | {"transformer.ln_f.weight": (c,), "transformer.ln_f.bias": (c,)}


# --------------------------------------------------------------------------- building blocks
def _buf(
    scratch: dict[str, FloatArray] | None, name: str, shape: tuple[int, ...], dtype: np.dtype[Any]
) -> FloatArray:
    """Return a work array reused across calls: fresh big arrays per op cost page faults (~30%).

    Without ``scratch`` the array is fresh: the backward pass keeps every layer's activations.
    """
    if scratch is None:
        return np.empty(shape, dtype)
    n = math.prod(shape)
    buf = scratch.get(name)
    if buf is None or buf.size < n or buf.dtype != dtype:
        buf = scratch[name] = np.empty(n, dtype)
    return buf[:n].reshape(shape)


def _layernorm(
    x: FloatArray, eps: float, out: FloatArray | None = None
) -> tuple[FloatArray, FloatArray]:
    """Normalise rows of a 2-D array; returns (xhat, 1/std) for the affine and the backward."""
    c = x.shape[1]
    mean = x @ np.full(c, 1.0 / c, x.dtype)  # GEMV: 7x faster than x.mean(axis=1) on short rows
    xc = np.subtract(x, mean[:, None], out=out)
    rstd = np.einsum("ij,ij->i", xc, xc)
    rstd *= 1.0 / c
    rstd += eps
    np.sqrt(rstd, out=rstd)
    np.reciprocal(rstd, out=rstd)
    xc *= rstd[:, None]
    return xc, rstd[:, None]


def _layernorm_backward(
    dy: FloatArray, xhat: FloatArray, rstd: FloatArray, w: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray]:
    dxhat = dy * w
    proj = np.einsum("ij,ij->i", dxhat, xhat)[:, None] / np.float32(xhat.shape[1])
    dx = rstd * (dxhat - dxhat.mean(axis=1, keepdims=True) - xhat * proj)
    return dx, np.einsum("ij,ij->j", dy, xhat), dy.sum(axis=0)


def _gelu(a: FloatArray, out: FloatArray | None = None) -> FloatArray:
    """Compute gelu_new(a) = 0.5 a (1 + tanh z) as a / (1 + 2^(-2 z log2 e)): exp2 is 2x tanh."""
    u = np.multiply(a, a, out=out)
    u *= np.float32(-2 * _LOG2E * _GELU_K)
    u += np.float32(-2 * _LOG2E * _GELU_C)
    u *= a
    with np.errstate(over="ignore"):  # 2^+large = inf gives a / inf = 0, the right limit
        np.exp2(u, out=u)
    u += np.float32(1.0)
    np.divide(a, u, out=u)
    return u


def _gelu_backward(dy: FloatArray, a: FloatArray) -> FloatArray:
    """Return dy * d gelu_new / da (dy is overwritten): 0.5 (1 + t + a (1 - t^2) dz/da).

    With z = C (a + 0.044715 a^3), t = tanh z and dz/da = C + 3 K a^2; few temporaries, as every
    fresh large array costs page faults.
    """
    t = a * a
    dz = t * np.float32(3 * _GELU_K)
    dz += np.float32(_GELU_C)
    dz *= a
    t *= np.float32(_GELU_K)
    t += np.float32(_GELU_C)
    t *= a
    np.tanh(t, out=t)
    dz -= dz * t * t  # a (1 - t^2) dz/da
    dz += t
    dz += np.float32(1.0)
    dy *= dz
    dy *= np.float32(0.5)
    return dy


def _softmax_rows(s: FloatArray) -> FloatArray:
    s -= s.max(axis=-1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)
    return s


def _attention(
    q: FloatArray,
    kt: FloatArray,
    v: FloatArray,
    mask: FloatArray,
    *,
    s: FloatArray,
    out: FloatArray,
) -> None:
    """Set out = softmax(q @ kt + mask) @ v for t new queries; scores are in base 2 (exp2).

    exp2() runs without the usual max subtraction (a max over short rows costs more than the
    GEMMs); if that over- or underflows, the chunk is redone the safe way.
    """
    total = s.shape[-1]
    np.matmul(q, kt, out=s)
    s += mask
    with np.errstate(over="ignore", under="ignore"):
        np.exp2(s, out=s)
    ones = np.ones(total, np.float32)
    den = s.reshape(-1, total) @ ones
    if not (den.min() > 1e-30 and den.max() < np.inf):
        np.matmul(q, kt, out=s)
        s += mask
        s -= s.max(axis=-1, keepdims=True)
        np.exp2(s, out=s)
        den = s.reshape(-1, total) @ ones
    np.reciprocal(den, out=den)
    s *= den.reshape(*s.shape[:-1], 1)
    np.matmul(s, v, out=out)


def _extend_kv(  # noqa: PLR0917 (one layer's step of _forward)
    cache: KVCache,
    i: int,
    rows: slice | IntArray,
    pos: IntArray,
    lengths: IntArray,
    k: FloatArray,
    v: FloatArray,
) -> tuple[FloatArray, FloatArray]:
    """Cache layer ``i``'s new keys/values (b, t, nh, hd); return the rows' keys and values.

    A slice of rows (one context length, no padding) is the cache itself, written with slices.
    Pool rows are gathered into work arrays (the attention GEMMs want them side by side) and only
    real tokens are written, to both.
    """
    if isinstance(rows, slice):
        kc, vc = cache.keys[i][rows], cache.values[i][rows]
        start, t = int(pos[0, 0]), pos.shape[1]
        kc[..., start : start + t] = k.transpose(0, 2, 3, 1)
        vc[:, start : start + t] = v
        return kc, vc
    b, t, nh, hd = k.shape
    cap, dt = cache.capacity, k.dtype
    # mode="clip": 3x faster than the default into ``out`` (rows were checked)
    kc = np.take(cache.keys[i], rows, 0, _buf(cache.scratch, "kc", (b, nh, hd, cap), dt), "clip")
    vc = np.take(cache.values[i], rows, 0, _buf(cache.scratch, "vc", (b, cap, nh, hd), dt), "clip")
    rr, jj = np.nonzero(np.arange(t) < lengths[:, None])  # the real tokens
    at = pos[rr, jj]
    kc[rr, :, :, at] = cache.keys[i][rows[rr], :, :, at] = k[rr, jj]
    vc[rr, at] = cache.values[i][rows[rr], at] = v[rr, jj]
    return kc, vc


def _nll_from_logits(logits: FloatArray, targets: IntArray, exp_safe: bool) -> FloatArray:
    """-log softmax[target] per row of base-2 logits (overwritten); two passes when exp is safe."""
    picked = logits[np.arange(len(targets)), targets]
    ones = np.ones(logits.shape[1], np.float32)
    if exp_safe:
        np.exp2(logits, out=logits)
        nll: FloatArray = np.log2(logits @ ones) - picked
    else:
        m = logits.max(axis=1)
        logits -= m[:, None]
        np.exp2(logits, out=logits)
        nll = np.log2(logits @ ones) + m - picked
    nll *= np.float32(math.log(2.0))
    return nll


@dataclass
class KVCache:
    """Keys/values of every layer for a batch of contexts, filled by ``GIoTModel``'s scoring.

    ``score_append`` keeps all rows at one length (``length``); ``score_rows`` treats the rows as
    a pool of devices' contexts, each its own length (kept by the caller). Keys are stored
    transposed so that attention scores are a plain GEMM against a prefix slice. The cached
    keys/values come from the weights at the time they were appended: after the weights change,
    start new windows. A cache also holds work buffers, so use one cache per thread.
    """

    keys: list[FloatArray]  # per layer (B, n_head, head_dim, capacity)
    values: list[FloatArray]  # per layer (B, capacity, n_head, head_dim)
    last: FloatArray  # (B, n_embd): final hidden state (after ln_f) of position length-1, * log2 e
    # (B,) the last token id appended to each row: lets a host mix in an n-gram model
    last_token: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    length: int = 0
    scratch: dict[str, FloatArray] = field(default_factory=dict, repr=False, compare=False)

    @property
    def capacity(self) -> int:
        """Positions the cache can hold (at most the model's n_positions)."""
        return self.keys[0].shape[-1] if self.keys else 0

    def copy(self) -> KVCache:
        """Return an independent copy, e.g. to score a candidate without committing it."""
        return KVCache(
            [k.copy() for k in self.keys],
            [v.copy() for v in self.values],
            self.last.copy(),
            self.last_token.copy(),
            self.length,
        )

    def reset(self) -> None:
        """Forget the context (start of a new window at position 0)."""
        self.length = 0


@dataclass
class _Fused:
    """Inference weights with LayerNorm affines and the (base-2) attention scale folded in."""

    qkv_w: list[FloatArray] = field(default_factory=list)
    q_b: list[FloatArray] = field(default_factory=list)  # the key bias cancels in the softmax
    # the value bias moves behind the projection: softmax rows sum to 1
    proj_b: list[FloatArray] = field(default_factory=list)
    v_b: list[FloatArray] = field(default_factory=list)  # for the backward pass
    fc_w: list[FloatArray] = field(default_factory=list)
    fc_b: list[FloatArray] = field(default_factory=list)
    exp_safe: bool = False  # |logits| bounded: exp() needs no max subtraction


class _ReadOnlyParams(dict[str, FloatArray]):
    """A frozen model's weights by name: replacing one is an error (its fold would go stale)."""

    def _refuse(self, *_args: object, **_kwargs: object) -> None:
        raise TypeError("a frozen GIoTModel's weights cannot change; train a copy")

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = _refuse  # type: ignore[assignment]


# --------------------------------------------------------------------------- the model
class GIoTModel:
    """GPT-2 in numpy; ``params`` holds float32 arrays named as GPT2LMHeadModel's state_dict."""

    def __init__(self, config: GIoTConfig, params: Mapping[str, np.ndarray]) -> None:
        shapes = param_shapes(config)
        if set(params) != set(shapes):
            diff = set(params) ^ set(shapes)
            raise ValueError(f"parameter names do not match the config: {sorted(diff)[:5]}")
        self.config = config
        self.params: dict[str, FloatArray] = {}
        for name, shape in shapes.items():
            if tuple(params[name].shape) != shape:
                raise ValueError(f"{name}: shape {params[name].shape}, expected {shape}")
            self.params[name] = np.ascontiguousarray(params[name], dtype=np.float32)
        self._folded: _Fused | None = None  # set by freeze()

    def freeze(self) -> GIoTModel:
        """Make the weights read-only and fold them once; returns the model.

        A scoring model's weights do not change (training works on a copy that replaces it), so
        the folding ``_fused`` does per call (tens of microseconds, most of a one-flow call's
        cost) is done here once. Read-only arrays and a read-only name table make any later
        change an error instead of a stale fold.
        """
        for array in self.params.values():
            array.flags.writeable = False
        self.params = _ReadOnlyParams(self.params)
        self._folded = self._fold()
        return self

    @classmethod
    def init(cls, config: GIoTConfig, seed: int) -> GIoTModel:
        """GPT-2 initialisation (N(0, 0.02), residual projections scaled by 1/sqrt(2 n_layer))."""
        rng = np.random.default_rng(seed)
        params: dict[str, FloatArray] = {}
        for name, shape in param_shapes(config).items():
            if name.endswith("bias"):
                params[name] = np.zeros(shape, np.float32)
            elif ".ln_" in name:
                params[name] = np.ones(shape, np.float32)
            else:
                std = (
                    0.02 / math.sqrt(2 * config.n_layer) if name.endswith("c_proj.weight") else 0.02
                )
                params[name] = rng.normal(0.0, std, shape).astype(np.float32)
        return cls(config, params)

    def num_parameters(self) -> int:
        """Count trainable scalars (the tied head once)."""
        return sum(p.size for p in self.params.values())

    def _p(self, i: int, name: str) -> FloatArray:
        return self.params[f"transformer.h.{i}.{name}"]

    def _check_ids(self, ids: IntArray) -> IntArray:
        ids = np.asarray(ids)
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"ids must be a 2-D integer array, got {ids.dtype} {ids.shape}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
            raise ValueError("token id outside the vocabulary")
        return ids

    # ----------------------------------------------------------------- the forward pass
    def _forward(  # noqa: PLR0917 (a chunk of new tokens and where they go)
        self,
        f: _Fused,
        cache: KVCache,
        rows: slice | IntArray,
        past: IntArray,
        ids: IntArray,
        lengths: IntArray,
        saved: list[dict[str, FloatArray]] | None = None,
    ) -> FloatArray:
        """Append ``ids`` (b, t) to the contexts in cache ``rows``; return ln_f's xhat (b, t, c).

        Every use is this one pass: training and whole windows append to an empty cache,
        streaming appends a flow to its device's context. Row r's context holds ``past[r]``
        tokens (``past`` may be (1,): all alike) and its first ``lengths[r]`` new tokens are
        real; the rest is padding, neither cached nor seen by real tokens. ``rows`` as a slice
        (consecutive rows, one context length, no padding) attends to the cache in place; as
        indices (pool rows, each its own length) the rows are gathered per layer. ``saved``
        receives each layer's activations and attention probabilities, in arrays of their own.
        ln_f's affine is left to the caller: scoring folds log2 e into it, on scored rows only.
        """
        cfg, p = self.config, self.params
        b, t = ids.shape
        n, c, nh, hd, eps = b * t, cfg.n_embd, cfg.n_head, cfg.head_dim, cfg.layer_norm_epsilon
        ws = cache.scratch if saved is None else None
        wte = p["transformer.wte.weight"]
        dt = wte.dtype
        pos = past[:, None] + np.arange(t)  # (b or 1, t) positions of the new tokens
        total = int((past + lengths).max())  # the keys that real tokens see
        x = np.take(wte, ids.reshape(-1), axis=0, out=_buf(ws, "x", (n, c), dt))
        x.reshape(b, t, c)[...] += np.take(p["transformer.wpe.weight"], pos, 0, mode="clip")
        visible = np.arange(total) <= pos[:, :, None]  # key j is visible to the new token at pos
        mask = np.where(visible, dt.type(0.0), dt.type(-np.inf))[:, None]  # (b or 1, 1, t, total)
        for i in range(cfg.n_layer):
            xhat1, rstd1 = _layernorm(x, eps, _buf(ws, "h", (n, c), dt))
            qkv = np.matmul(xhat1, f.qkv_w[i], out=_buf(ws, "qkv", (n, 3 * c), dt))
            qkv[:, :c] += f.q_b[i]
            q, k, v = qkv.reshape(b, t, 3, nh, hd).transpose(2, 0, 1, 3, 4)  # (b, t, nh, hd)
            kc, vc = _extend_kv(cache, i, rows, pos, lengths, k, v)
            y = _buf(ws, "y", (b, t, nh, hd), dt)  # heads merged in place: (n, c) for c_proj
            att = _buf(ws, "s", (b, nh, t, total), dt)
            _attention(
                q.transpose(0, 2, 1, 3),
                kc[..., :total],
                vc[:, :total].transpose(0, 2, 1, 3),
                mask,
                s=att,
                out=y.transpose(0, 2, 1, 3),
            )
            y2 = y.reshape(n, c)
            x += np.matmul(y2, self._p(i, "attn.c_proj.weight"), out=_buf(ws, "o", (n, c), dt))
            x += f.proj_b[i]
            xhat2, rstd2 = _layernorm(x, eps, _buf(ws, "h", (n, c), dt))
            a = np.matmul(xhat2, f.fc_w[i], out=_buf(ws, "a", (n, 4 * c), dt))
            a += f.fc_b[i]
            g = _gelu(a, _buf(ws, "g", (n, 4 * c), dt))
            x += np.matmul(g, self._p(i, "mlp.c_proj.weight"), out=_buf(ws, "o", (n, c), dt))
            x += self._p(i, "mlp.c_proj.bias")
            if saved is not None:
                saved.append({"xhat1": xhat1, "rstd1": rstd1, "qkv": qkv, "att": att, "y": y2,
                              "xhat2": xhat2, "rstd2": rstd2, "a": a, "g": g})  # fmt: skip
        xhat, rstd = _layernorm(x, eps, _buf(ws, "h", (n, c), dt))
        if saved is not None:
            saved.append({"xhat": xhat, "rstd": rstd})
        return xhat.reshape(b, t, c)

    def _windows(
        self, f: _Fused, ids: IntArray, saved: list[dict[str, FloatArray]] | None = None
    ) -> FloatArray:
        """``_forward`` on whole windows (B, T): an empty cache, all tokens real."""
        b, t = ids.shape
        if t > self.config.n_positions:
            raise ValueError(
                f"sequence of {t} tokens exceeds n_positions={self.config.n_positions}"
            )
        cache = self.new_cache(b, t)
        past = np.zeros(1, np.intp)
        return self._forward(f, cache, slice(None), past, ids, np.full(b, t, np.intp), saved)

    # ----------------------------------------------------------------- training
    def logits(self, ids: IntArray) -> FloatArray:
        """Next-token logits (B, T, V) for every position, as GPT2LMHeadModel returns them."""
        ids = self._check_ids(ids)
        xhat = self._windows(self._fused(), ids)
        p = self.params
        xf: FloatArray = xhat * p["transformer.ln_f.weight"] + p["transformer.ln_f.bias"]
        return xf @ p["transformer.wte.weight"].T

    def attention(self, ids: IntArray) -> FloatArray:
        """Attention probabilities (n_layer, n_head, T, T) of one window ``ids`` (T,).

        They explain an alarm: which earlier tokens the model looked at.
        """
        seq = self._check_ids(np.asarray(ids).reshape(1, -1))
        saved: list[dict[str, FloatArray]] = []
        self._windows(self._fused(), seq, saved)
        return np.stack([layer["att"][0] for layer in saved[:-1]])

    def loss_and_grads(
        self, ids: IntArray, loss_mask: npt.NDArray[np.bool_] | None = None
    ) -> tuple[float, dict[str, FloatArray]]:
        """Mean next-token NLL over targets where ``loss_mask`` (B, T-1) holds, and its grads."""
        saved: list[dict[str, FloatArray]]
        ids = self._check_ids(ids)
        b, t = ids.shape
        sel = np.ones((b, t - 1), bool) if loss_mask is None else np.asarray(loss_mask, bool)
        if sel.shape != (b, t - 1):
            raise ValueError(f"loss_mask shape {sel.shape}, expected {(b, t - 1)}")
        grads = {name: np.zeros_like(w) for name, w in self.params.items()}
        n = int(sel.sum())
        if n == 0:
            return 0.0, grads
        f, saved = self._fused(), []
        xhat = self._windows(f, ids, saved).reshape(b * t, -1)
        xf = xhat * self.params["transformer.ln_f.weight"] + self.params["transformer.ln_f.bias"]
        rows = np.concatenate([sel, np.zeros((b, 1), bool)], axis=1).reshape(-1)
        targets, wte = ids[:, 1:][sel], self.params["transformer.wte.weight"]
        xs = xf[rows]  # the tied LM head runs only on rows whose next token is scored
        logits = xs @ wte.T
        logits -= logits.max(axis=1, keepdims=True)
        lse = np.log(np.exp(logits).sum(axis=1))
        loss = float(np.mean(lse - logits[np.arange(n), targets], dtype=np.float64))
        dlogits = _softmax_rows(logits)
        dlogits[np.arange(n), targets] -= 1.0
        dlogits *= 1.0 / n
        grads["transformer.wte.weight"] += dlogits.T @ xs
        dxf = np.zeros_like(xf)
        dxf[rows] = dlogits @ wte
        dx = self._backward(f, dxf, saved, grads)
        np.add.at(grads["transformer.wte.weight"], ids.reshape(-1), dx)
        grads["transformer.wpe.weight"][:t] = dx.reshape(b, t, -1).sum(axis=0)
        return loss, grads

    def _backward(
        self,
        f: _Fused,
        dxf: FloatArray,
        saved: list[dict[str, FloatArray]],
        grads: dict[str, FloatArray],
    ) -> FloatArray:
        """Backpropagate from the final hidden states to the embeddings (returns d embedding).

        The forward ran on folded weights; its activations map back to GPT-2's: the LayerNorm
        outputs are xhat * w + b, y lacks the value bias (f.v_b), q carries the scale
        log2(e) / sqrt(head_dim), and k lacks its bias, which changes neither the softmax nor
        dq (each row of the softmax gradient sums to zero).
        """
        cfg = self.config
        nh, hd = cfg.n_head, cfg.head_dim
        b, _, t, _ = saved[0]["att"].shape
        last = saved[-1]
        dx, grads["transformer.ln_f.weight"], grads["transformer.ln_f.bias"] = _layernorm_backward(
            dxf, last["xhat"], last["rstd"], self.params["transformer.ln_f.weight"]
        )
        for i in reversed(range(cfg.n_layer)):
            cc, h = saved[i], f"transformer.h.{i}."
            # MLP: x += gelu(ln_2(x) @ Wfc + bfc) @ Wp + bp
            grads[h + "mlp.c_proj.weight"] = cc["g"].T @ dx
            grads[h + "mlp.c_proj.bias"] = dx.sum(axis=0)
            da = _gelu_backward(dx @ self._p(i, "mlp.c_proj.weight").T, cc["a"])
            h2: FloatArray = cc["xhat2"] * self._p(i, "ln_2.weight") + self._p(i, "ln_2.bias")
            grads[h + "mlp.c_fc.weight"] = h2.T @ da
            grads[h + "mlp.c_fc.bias"] = da.sum(axis=0)
            dh = da @ self._p(i, "mlp.c_fc.weight").T
            dln, grads[h + "ln_2.weight"], grads[h + "ln_2.bias"] = _layernorm_backward(
                dh, cc["xhat2"], cc["rstd2"], self._p(i, "ln_2.weight")
            )
            dx = dx + dln
            # attention: x += merge_heads(softmax(q k^T / sqrt(hd) + mask) v) @ Wp + bp
            y: FloatArray = cc["y"] + f.v_b[i]
            grads[h + "attn.c_proj.weight"] = y.T @ dx
            grads[h + "attn.c_proj.bias"] = dx.sum(axis=0)
            dy = (
                (dx @ self._p(i, "attn.c_proj.weight").T)
                .reshape(b, t, nh, hd)
                .transpose(0, 2, 1, 3)
            )
            q, k, v = cc["qkv"].reshape(b, t, 3, nh, hd).transpose(2, 0, 3, 1, 4)  # (b, nh, t, hd)
            att = cc["att"]
            datt = dy @ v.transpose(0, 1, 3, 2)
            dv = att.transpose(0, 1, 3, 2) @ dy
            ds = att * (datt - np.einsum("bhij,bhij->bhi", datt, att)[..., None])
            dq = (ds @ k) * (1.0 / math.sqrt(hd))
            dk = (ds.transpose(0, 1, 3, 2) @ q) * math.log(2.0)  # q is scaled by log2(e)/sqrt(hd)
            dqkv = np.stack([dq, dk, dv], axis=2).transpose(0, 3, 2, 1, 4).reshape(b * t, -1)
            h1 = cc["xhat1"] * self._p(i, "ln_1.weight") + self._p(i, "ln_1.bias")
            grads[h + "attn.c_attn.weight"] = h1.T @ dqkv
            grads[h + "attn.c_attn.bias"] = dqkv.sum(axis=0)
            dh = dqkv @ self._p(i, "attn.c_attn.weight").T
            dln, grads[h + "ln_1.weight"], grads[h + "ln_1.bias"] = _layernorm_backward(
                dh, cc["xhat1"], cc["rstd1"], self._p(i, "ln_1.weight")
            )
            dx = dx + dln
        return dx

    # ----------------------------------------------------------------- scoring (detector hot path)
    def token_nll(self, ids: IntArray) -> FloatArray:
        """(B, T) -> (B, T-1): -log p(ids[:, t+1] | ids[:, :t+1]) for every window."""
        ids = self._check_ids(ids)
        return self.score_append(self.new_cache(ids.shape[0], ids.shape[1]), ids)[:, 1:]

    def new_cache(self, batch: int, capacity: int | None = None) -> KVCache:
        """Return an empty KV cache for ``batch`` contexts of up to ``capacity`` tokens."""
        cfg = self.config
        cap = cfg.n_positions if capacity is None else capacity
        if not 0 < cap <= cfg.n_positions:
            raise ValueError(f"capacity {cap} outside 1..{cfg.n_positions}")
        nh, hd = cfg.n_head, cfg.head_dim
        dt = self.params["transformer.wte.weight"].dtype  # float64 weights: a float64 check
        # zeros, not empty: score_rows reads (masked) positions past a row's length, and
        # 0 * a stray NaN/inf in uninitialised memory would still poison the attention sum
        return KVCache(
            keys=[np.zeros((batch, nh, hd, cap), dt) for _ in range(cfg.n_layer)],
            values=[np.zeros((batch, cap, nh, hd), dt) for _ in range(cfg.n_layer)],
            last=np.zeros((batch, cfg.n_embd), dt),
            last_token=np.zeros(batch, np.int64),
        )

    def _fused(self) -> _Fused:
        """Return the folded weights: once for a frozen model, else per call (never stale)."""
        return self._folded if self._folded is not None else self._fold()

    def _fold(self) -> _Fused:
        """Fold affine constants into GEMM weights: O(params)."""
        cfg, p = self.config, self.params
        c = cfg.n_embd
        scale = _LOG2E / math.sqrt(cfg.head_dim)  # base-2 scores for exp2
        f = _Fused()
        for i in range(cfg.n_layer):
            w1, b1 = self._p(i, "ln_1.weight"), self._p(i, "ln_1.bias")
            wa, ba = self._p(i, "attn.c_attn.weight"), self._p(i, "attn.c_attn.bias")
            qkv_w: FloatArray = w1[:, None] * wa
            qkv_b: FloatArray = b1 @ wa + ba
            qkv_w[:, :c] *= scale
            f.qkv_w.append(qkv_w)
            f.q_b.append(qkv_b[:c] * scale)
            f.v_b.append(qkv_b[2 * c :])
            wp = self._p(i, "attn.c_proj.weight")
            proj_b: FloatArray = qkv_b[2 * c :] @ wp + self._p(i, "attn.c_proj.bias")
            f.proj_b.append(proj_b)
            w2, b2 = self._p(i, "ln_2.weight"), self._p(i, "ln_2.bias")
            wf, bf = self._p(i, "mlp.c_fc.weight"), self._p(i, "mlp.c_fc.bias")
            f.fc_w.append(w2[:, None] * wf)
            f.fc_b.append(b2 @ wf + bf)
        # after ln_f |h| <= sqrt(C) max|w_f| + |b_f|, so |logit| <= that * max_v |wte_v| always
        wte, w_f, b_f = (p[f"transformer.{n}"] for n in ("wte.weight", "ln_f.weight", "ln_f.bias"))
        h_max = math.sqrt(c) * float(np.abs(w_f).max()) + float(np.sqrt(b_f @ b_f))
        bound = h_max * math.sqrt(float(np.einsum("vc,vc->v", wte, wte).max()))
        f.exp_safe = bound + math.log(cfg.vocab_size) < _EXP_SAFE
        return f

    def score_append(self, cache: KVCache, new_ids: IntArray) -> FloatArray:
        """Append ``new_ids`` (B, t) to every context in ``cache`` and return their NLL (B, t).

        Column j is -log p(new_ids[:, j] | context, new_ids[:, :j]); column 0 is NaN when the
        cache is empty (a first token has nothing to be predicted from). The cache is updated in
        place. Each new token is computed once, attending to the cached keys/values, so scoring a
        device's flow as it arrives costs only that flow's tokens.
        """
        ids = self._check_ids(new_ids)
        b, t = ids.shape
        if b != cache.last.shape[0]:
            raise ValueError(f"batch {b} does not match the cache's {cache.last.shape[0]}")
        if cache.length + t > cache.capacity:
            raise ValueError(
                f"{cache.length} + {t} tokens exceed the cache capacity {cache.capacity}"
            )
        out = np.empty((b, t), np.float32)
        if t == 0:
            return out
        f = self._fused()
        past, lengths = np.array([cache.length], np.intp), np.full(b, t, np.intp)
        step = max(1, _CHUNK_TOKENS // t)
        for lo in range(0, b, step):
            hi = min(b, lo + step)
            out[lo:hi] = self._score(f, cache, slice(lo, hi), past, ids[lo:hi], lengths[lo:hi])
        cache.length += t
        return out

    def score_rows(
        self,
        cache: KVCache,
        rows: IntArray,
        past: IntArray,
        new_ids: IntArray,
        lengths: IntArray | None = None,
    ) -> FloatArray:
        """Append ``new_ids`` (b, t) to the contexts in cache ``rows`` (b,) of lengths ``past``.

        The pool form of ``score_append``: each row of ``cache`` is one device's context and
        keeps its own length (``cache.length`` is not used), so the devices that have a record
        waiting are scored in one batch whatever their context lengths. ``lengths`` (b,): how many
        of a row's ``new_ids`` are real (the rest is padding, neither cached nor scored; default
        all). Column j is -log p(new_ids[:, j] | context, new_ids[:, :j]), NaN in column 0 of rows
        whose context is empty, undefined in padding. Rows must be distinct. The new keys/values
        go into the rows at ``past .. past + length``; later positions are left as they were.
        """
        return self.score_groups(cache, [(rows, past, new_ids, lengths)])[0]

    def score_groups(
        self,
        cache: KVCache,
        groups: Sequence[tuple[IntArray, IntArray, IntArray, IntArray | None]],
    ) -> list[FloatArray]:
        """``score_rows`` for several (rows, past, new_ids, lengths) groups, each its own width.

        One call folds the weights once for all groups (it costs as much as a small batch).
        """
        f: _Fused | None = None
        outs: list[FloatArray] = []
        for rows_, past_, new_ids, lengths_ in groups:
            ids = self._check_ids(new_ids)
            rows, past = np.asarray(rows_, np.intp), np.asarray(past_, np.intp)
            b, t = ids.shape
            lengths = np.full(b, t, np.intp) if lengths_ is None else np.asarray(lengths_, np.intp)
            if rows.shape != (b,) or past.shape != (b,) or lengths.shape != (b,):
                raise ValueError(f"rows, past and lengths must be ({b},)")
            if b and (lengths.min() < 1 or lengths.max() > t):
                raise ValueError(f"lengths must be in 1..{t}")
            if b and (past.min() < 0 or (past + lengths).max() > cache.capacity):
                raise ValueError(
                    f"contexts + new tokens exceed the cache capacity {cache.capacity}"
                )
            if b and (len(np.unique(rows)) != b or rows.min() < 0 or rows.max() >= len(cache.last)):
                raise ValueError("rows must be distinct rows of the cache")
            out = np.empty((b, t), np.float32)
            outs.append(out)
            if t == 0 or b == 0:
                continue
            f = f or self._fused()
            step = max(1, _CHUNK_TOKENS // t)
            for lo in range(0, b, step):
                sl = slice(lo, min(b, lo + step))
                out[sl] = self._score(f, cache, rows[sl], past[sl], ids[sl], lengths[sl])
        return outs

    def _score(  # noqa: PLR0917 (one chunk of score_append or score_groups)
        self,
        f: _Fused,
        cache: KVCache,
        rows: slice | IntArray,
        past: IntArray,
        ids: IntArray,
        lengths: IntArray,
    ) -> FloatArray:
        """NLL of one chunk's new tokens (see ``_forward``); moves the rows' ``last`` on."""
        cfg, p, ws = self.config, self.params, cache.scratch
        b, t = ids.shape
        n, c = b * t, cfg.n_embd
        xhat = self._forward(f, cache, rows, past, ids, lengths)
        w_f = p["transformer.ln_f.weight"] * _LOG2E  # base-2 logits for exp2: (h log2 e) @ wte^T
        b_f = p["transformer.ln_f.bias"] * _LOG2E
        empty = (past == 0)[:, None]  # (b or 1, 1): a first token has nothing to predict it
        any_empty = bool(empty.any())
        # the row predicting new token j: the cached last position for j = 0, else token j - 1
        pred = _buf(ws, "rows", (b, t, c), xhat.dtype)
        pred[:, 0] = cache.last[rows]
        if any_empty:
            np.copyto(pred[:, 0], 0.0, where=empty)
        np.multiply(xhat[:, : t - 1], w_f, out=pred[:, 1:])
        pred[:, 1:] += b_f
        end = np.arange(0, n, t) + lengths - 1  # each row's last real token
        cache.last[rows] = xhat.reshape(n, c)[end] * w_f + b_f
        cache.last_token[rows] = ids.reshape(n)[end]
        logits = np.matmul(
            pred.reshape(n, c),
            p["transformer.wte.weight"].T,
            out=_buf(ws, "logits", (n, cfg.vocab_size), xhat.dtype),
        )
        nll = _nll_from_logits(logits, ids.reshape(-1), f.exp_safe).reshape(b, t)
        if any_empty:
            np.copyto(nll[:, :1], np.nan, where=empty)
        return nll

    # ----------------------------------------------------------------- persistence (HF layout)
    def save_pretrained(self, directory: str | os.PathLike[str], dtype: str = "F32") -> None:
        """Write config.json and model.safetensors so transformers' from_pretrained loads them.

        ``dtype`` "F16" stores the weights in half the bytes (``save_safetensors``).
        """
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_NAME).write_text(json.dumps(self.config.to_hf_dict(), indent=2) + "\n")
        save_safetensors(path / WEIGHTS_NAME, self.params, dtype=dtype)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str]) -> GIoTModel:
        """Load a directory written by ``save_pretrained`` here or by transformers."""
        path = Path(directory)
        config = GIoTConfig.from_hf_dict(json.loads((path / CONFIG_NAME).read_text()))
        tensors = load_safetensors(path / WEIGHTS_NAME)
        # checkpoints of the original GPT-2 (GPT2Model) name tensors without "transformer."
        tensors |= {
            "transformer." + k: v
            for k, v in tensors.items()
            if k.split(".")[0] in ("wte", "wpe", "h", "ln_f")
        }
        missing = [name for name in param_shapes(config) if name not in tensors]
        if missing:
            raise ValueError(f"{path / WEIGHTS_NAME} lacks {missing[:3]}")
        return cls(config, {name: tensors[name] for name in param_shapes(config)})
