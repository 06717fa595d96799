"""Every incoming update is checked before it counts; optional robust and private aggregation.

One malformed or hostile reply must cost its sender the round, never the round itself: each check
returns a reason instead of raising, the strategy logs it with the node id and drops the reply.
Robust aggregation (norm clipping + coordinate-wise trimmed mean) bounds what a node that passes
validation can still do; client-level DP (clip + Gaussian noise, DP-FedAvg of McMahan et al. 2018)
bounds what the aggregate reveals about any one home, with the privacy spent tracked by Flower's
own RDP accountant (``flwr.serverapp.RdpAccountant``, new in 1.41, backed by ``dp_accounting``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from flwr.app import Array
from flwr.serverapp import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    PrivacySpent,
    RdpAccountant,
    SamplingMethod,
)

from giot_engine import gsfs_codec

LOG = logging.getLogger(f"flwr.{__name__}")  # shown where Flower shows its own log
F32 = npt.NDArray[np.float32]
Sparse = dict[str, tuple[npt.NDArray[np.int64], F32]]
_SUFFIXES = (".val", ".idx", ".scale")
_SUFFIX_SET = frozenset(x[1:] for x in _SUFFIXES)


@dataclass(frozen=True)
class Limits:
    """Bounds an update must respect to count."""

    max_norm: float = 1e3
    max_examples: int = 10_000_000


_NPY_MAGIC = b"\x93NUMPY\x01\x00"


def array_numpy(array: Array) -> np.ndarray:
    """``Array.numpy()`` without its cost: Flower's parses every npy header with ``ast``.

    The npy header is only compared with the one numpy writes for the Array's declared dtype and
    shape (version 1.0, C order); when it is exactly that, the data are read in place (read
    only), else Flower's own decoder runs and its result must match what the Array declares.
    Object dtypes are refused, as ``allow_pickle=False`` refuses them.
    """
    if array.stype != "numpy.ndarray":
        raise TypeError(f"unsupported serialization {array.stype!r}")
    dtype = np.dtype(array.dtype)
    if dtype.hasobject:
        raise ValueError("object arrays are not accepted")
    shape = tuple(int(d) for d in array.shape)
    data = array.data
    n = math.prod(shape) * dtype.itemsize
    start = len(data) - n
    if start > 10 and data[:8] == _NPY_MAGIC:
        expected = f"{{'descr': {dtype.str!r}, 'fortran_order': False, 'shape': {shape!r}, }}"
        if data[10:start].decode("latin1").strip() == expected:
            return np.frombuffer(data, dtype, count=math.prod(shape), offset=start).reshape(shape)
    out = array.numpy()
    if out.dtype != dtype or out.shape != shape:
        raise ValueError(f"array declares {dtype} {shape} but holds {out.dtype} {out.shape}")
    return out


def log_rejection(node_id: int, reason: str) -> None:
    """One line per rejected update, with who and why (the audit trail of a round)."""
    LOG.warning("rejected update from node %d: %s", node_id, reason)


def check_num_examples(value: object, limits: Limits) -> str | None:
    """Check the declared number of examples: a positive whole number below the cap."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "num-examples missing or not a number"
    if not math.isfinite(value) or value != int(value):
        return f"num-examples not a whole number: {value}"
    if value <= 0 or value > limits.max_examples:
        return f"num-examples out of range: {value}"
    return None


def _norm(sparse: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> float:
    return math.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for _, v in sparse.values()))


def _check_tensor(name: str, payload: Mapping[str, np.ndarray], numel: int) -> str | None:
    val = payload.get(f"{name}.val")
    scale = payload.get(f"{name}.scale")
    idx = payload.get(f"{name}.idx")
    problem: str | None = None
    if val is None or scale is None:
        problem = ".val and .scale are both required"
    elif val.dtype != np.int8 or val.ndim != 1:
        problem = f".val: expected 1-D int8, got {val.dtype} {val.shape}"
    elif scale.dtype != np.float32 or scale.shape != (1,):
        problem = f".scale: expected float32 (1,), got {scale.dtype} {scale.shape}"
    elif not (math.isfinite(float(scale[0])) and float(scale[0]) > 0):
        problem = ".scale not finite and positive"
    elif idx is None:
        if val.size != numel:
            problem = f"dense value count {val.size} != {numel}"
    elif idx.dtype not in (np.uint16, np.uint32) or idx.shape != val.shape:
        problem = f".idx: expected uint16/uint32 of shape {val.shape}"
    elif idx.size and int(idx.max()) >= numel:
        problem = f".idx out of range (numel {numel})"
    elif idx.size > 1 and not bool((idx[1:] > idx[:-1]).all()):
        problem = ".idx not strictly increasing (duplicates or unsorted)"
    return None if problem is None else f"{name}{problem}"


def validate_sparse(
    payload: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]], limits: Limits
) -> tuple[Sparse | None, str | None]:
    """Check a GSFS payload against the model's tensors; return it decoded, or why not."""
    names: set[str] = set()
    for key in payload:
        base, _, suffix = key.rpartition(".")
        if suffix not in _SUFFIX_SET or base not in shapes:
            return None, f"unknown key {key!r}"
        names.add(base)
    sparse: Sparse = {}
    sq = 0.0
    for name in sorted(names):
        numel = math.prod(shapes[name])
        problem = _check_tensor(name, payload, numel)
        if problem is not None:
            return None, problem
        # Decode as gsfs_codec.decode_sparse does; int8 times a finite scale can only overflow to
        # inf, which the norm bound below catches, so no separate finiteness pass is needed.
        vals = gsfs_codec.dequantize(payload[f"{name}.val"], payload[f"{name}.scale"][0])
        idx = payload.get(f"{name}.idx")
        sparse[name] = (
            np.arange(numel, dtype=np.int64) if idx is None else idx.astype(np.int64),
            vals,
        )
        sq += float(np.dot(vals.astype(np.float64), vals.astype(np.float64)))
    norm = math.sqrt(sq)
    if not math.isfinite(norm) or norm > limits.max_norm:
        return None, f"update norm {norm:.3g} above bound {limits.max_norm:.3g}"
    return sparse, None


def validate_shared(
    payload: Mapping[str, np.ndarray],
    shared_idx: Mapping[str, np.ndarray],
    scales: Mapping[str, float],
    limits: Limits,
) -> tuple[Sparse | None, str | None]:
    """Check a SecAgg-mode payload: exactly the shared tensors, one int8 per shared index."""
    expected = {f"{n}.val" for n in shared_idx}
    if set(payload) != expected:
        odd = sorted(set(payload) ^ expected)[:3]
        return None, f"shared-mode keys differ from the shared set: {odd}"
    out: Sparse = {}
    for name, idx in shared_idx.items():
        val = payload[f"{name}.val"]
        if val.dtype != np.int8 or val.shape != (len(idx),):
            return None, f"{name}.val: expected int8 ({len(idx)},), got {val.dtype} {val.shape}"
        out[name] = (np.asarray(idx, np.int64), gsfs_codec.dequantize(val, scales[name]))
    norm = _norm(out)
    if norm > limits.max_norm:
        return None, f"update norm {norm:.3g} above bound {limits.max_norm:.3g}"
    return out, None


def validate_dense(
    arrays: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], limits: Limits
) -> str | None:
    """Check full model weights (baselines): same keys and shapes, float32, finite, bounded change.

    The reference may be float64 (Flower's FedAdam returns float64 globals); replies are float32.
    """
    if set(arrays) != set(reference):
        extra, missing = set(arrays) - set(reference), set(reference) - set(arrays)
        return f"keys differ (unknown {sorted(extra)[:3]}, missing {sorted(missing)[:3]})"
    sq = 0.0
    for name, ref in reference.items():
        a = arrays[name]
        if a.shape != ref.shape or a.dtype != np.float32:
            return f"{name}: expected float32 {ref.shape}, got {a.dtype} {a.shape}"
        if not np.all(np.isfinite(a)):
            return f"{name}: non-finite values"
        sq += float(np.sum((a.astype(np.float64) - ref) ** 2))
    if math.sqrt(sq) > limits.max_norm:
        return f"update norm {math.sqrt(sq):.3g} above bound {limits.max_norm:.3g}"
    return None


def clip_sparse(update: Sparse, bound: float) -> Sparse:
    """Scale a whole update down to norm ``bound`` (direction kept)."""
    norm = _norm(update)
    if norm <= bound or norm == 0:
        return update
    f = np.float32(bound / norm)
    return {k: (i, (v * f).astype(np.float32)) for k, (i, v) in update.items()}


def trimmed_mean(
    updates: Sequence[Sparse], shapes: Mapping[str, tuple[int, ...]], beta: float
) -> dict[str, F32]:
    """Coordinate-wise trimmed mean over the clients that sent each coordinate.

    Per coordinate with ``c`` senders, the ``floor(beta * c)`` largest and smallest values are
    dropped and the rest averaged (unweighted: weights are what a poisoner would inflate).
    """
    out: dict[str, F32] = {}
    for name, shape in shapes.items():
        n = int(np.prod(shape, dtype=np.int64))
        stack = np.full((len(updates), n), np.nan, np.float64)
        for row, upd in enumerate(updates):
            if name in upd:
                idx, vals = upd[name]
                stack[row, idx] = vals
        count = np.sum(~np.isnan(stack), axis=0)
        k = np.floor(beta * count).astype(np.int64)
        srt = np.sort(stack, axis=0)  # NaN sorts last
        csum = np.vstack([np.zeros((1, n)), np.cumsum(np.nan_to_num(srt), axis=0)])
        hi = np.take_along_axis(csum, (count - k)[None, :], axis=0)[0]
        lo = np.take_along_axis(csum, k[None, :], axis=0)[0]
        kept = count - 2 * k
        mean = np.divide(hi - lo, kept, out=np.zeros(n), where=kept > 0)
        out[name] = mean.astype(np.float32).reshape(shape)
    return out


class GaussianDP:
    """Client-level DP: clip each update to ``clip``, average over the sample, add noise.

    Noise ``N(0, (noise_multiplier * clip / m)^2)`` on every coordinate of the mean over ``m``
    sampled clients (a fixed denominator, as in Flower's server-side fixed clipping); rounds are
    composed in an RDP accountant as sampling without replacement from ``population`` homes.
    """

    def __init__(
        self, clip: float, noise_multiplier: float, population: int, target_delta: float, seed: int
    ) -> None:
        self.clip = clip
        self.noise_multiplier = noise_multiplier
        self.population = population
        self.rng = np.random.default_rng(seed)
        self.accountant = RdpAccountant(
            PrivacyConfig(
                target_delta=target_delta,
                population_size=population,
                neighboring_relation=NeighboringRelation.REPLACE_ONE,
                sampling_method=SamplingMethod.WITHOUT_REPLACEMENT,
            )
        )

    def release(
        self, updates: Sequence[Sparse], num_sampled: int, shapes: Mapping[str, tuple[int, ...]]
    ) -> dict[str, F32]:
        """Noisy mean of clipped updates; composes one event in the accountant."""
        m = max(num_sampled, len(updates), 1)
        std = self.noise_multiplier * self.clip / m
        out: dict[str, F32] = {}
        clipped = [clip_sparse(u, self.clip) for u in updates]
        for name, shape in shapes.items():
            total = np.zeros(int(np.prod(shape, dtype=np.int64)), np.float64)
            for upd in clipped:
                if name in upd:
                    idx, vals = upd[name]
                    total[idx] += vals
            noisy = total / m + self.rng.normal(0.0, std, total.size)
            out[name] = noisy.astype(np.float32).reshape(shape)
        self.accountant.compose(
            GaussianPrivacyEvent(
                noise_multiplier=self.noise_multiplier,
                sample_size=min(m, self.population),
                population_size=self.population,
            )
        )
        return out

    def spent(self) -> PrivacySpent:
        """Cumulative privacy spent so far."""
        return self.accountant.get_privacy_spent()
