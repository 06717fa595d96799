"""GSFS client codec: send the part of a model update that matters most, within a byte budget.

The Gradient-Sensing Federated Strategy asks every home hub for a model update that fits a byte
budget the server picked from that hub's measured link. This module is the hub's half, numpy only,
so the same code runs inside Home Assistant, in the Flower simulation and in benchmarks.

Pipeline for one round (``encode``):

1. Error feedback (Stich et al., 2018; Deep Gradient Compression, Lin et al., 2018): the part of
   earlier updates that was not sent (the residual) is added to this round's update before
   anything is chosen, ``v = fl32(u + e)``. Dropped coordinates are thus delayed, never lost,
   which is what keeps top-k at the convergence rate of uncompressed training.
2. Sensitivity: every coordinate gets a score. ``"relative"`` (default) scores
   ``|v_i| / rms(w_t)``, the coordinate's change relative to the typical weight of its tensor;
   the RMS of these scores over a tensor is FedLAMA's layer discrepancy ``||v_t|| / ||w_t||``
   (``tensor_sensitivity``). Relative, because LayerNorm gains (~1) and embeddings (~0.02) live on
   scales two orders apart and an absolute measure would only ever send the large ones; per RMS
   rather than per norm, so that a coordinate is not penalised for living in a large tensor. The
   RMS has a floor (``RMS_FLOOR``, the GPT-2 init scale) so zero-initialised biases do not get
   infinite sensitivity. ``"taylor"`` scores ``|g_i v_i|``, the
   first-order estimate of the loss change if the coordinate were dropped (pruning literature,
   a Fisher-style importance), when the caller can afford one more gradient evaluation.
3. Selection by sensitivity per byte: a coordinate of tensor ``t`` costs one int8 value plus its
   index (2 bytes below 65,537 elements, else 4), and the first coordinate of a tensor also costs
   its 4-byte scale. Coordinates are taken greedily by score per byte until the budget is spent.
   Tensor selection is the coarse consequence: a tensor whose coordinates never beat others per
   byte is not sent at all, and tensors whose sensitivity is below ``min_tensor_sensitivity``
   times the largest are skipped outright (LAG/Gaia-style skipping of insensitive layers). Inside
   a chosen tensor this is top-k sparsification. A tensor where the sparse form would cost at
   least the dense one is sent dense (no index array), and the bytes saved are refilled.
4. Quantisation: the chosen values of a tensor are rounded to int8 with one float32 scale
   (``max |v| / 127``, symmetric), QSGD-style but deterministic.

Wire form (``payload``): per sent tensor ``<name>.val`` (int8, 1-D), ``<name>.scale`` (float32,
shape (1,)), and, when sparse, ``<name>.idx`` (uint16 or uint32, strictly increasing flat
indices). ``pack`` / ``unpack`` carry the same content in at most five arrays, for carriers that
frame each array (Flower's ``ArrayRecord``: the per-tensor form is ~70 arrays for GIoT). The
byte size of a payload is ``payload_nbytes``: the sum of those arrays' ``nbytes``;
``encode`` guarantees ``payload_nbytes(payload) <= budget`` for every budget, 0 included.

Exactness (tested): with ``d = decode(payload)`` (zeros for what was not sent) and the new
residual ``e = fl32(v - d)``, ``fl32(d + e) == v`` bit for bit. It holds because every sent value
``d_i`` is within a factor of two of ``v_i`` (or zero), so ``v_i - d_i`` is exact in float32
(Sterbenz's lemma); coordinates with ``|v_i| < TINY`` are never sent, which keeps scales normal.

SecAgg-compatible mode (``encode_shared``): secure aggregation sums masked vectors, so all clients
must send the same coordinates on the same fixed-point grid. The server supplies one index set and
one scale per tensor for the round; the client fills exactly those coordinates (dense over the
shared set, no index array), clipping to +-127 steps; the residual keeps what was not sent.
Exactness holds on every coordinate that was not clipped.

The residual is state of the caller (Home Assistant keeps it per config entry, the simulation in
the Flower context); ``save_residual`` / ``load_residual`` persist it as ``.npz``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from .persist import atomic_write

Arrays = dict[str, npt.NDArray[np.float32]]
Payload = dict[str, npt.NDArray[np.generic]]
Measure = Literal["relative", "taylor"]

SCALE_BYTES = 4
QMAX = 127
TINY = np.float32(1e-30)
"""Coordinates smaller than this are never sent: not worth a byte, and it keeps scales normal."""
RMS_FLOOR = 0.01
"""Floor of a tensor's RMS weight (about GPT-2's init scale 0.02), for zero-initialised biases."""


def index_dtype(numel: int) -> np.dtype[Any]:
    """Smallest unsigned integer type that addresses every element of a tensor."""
    return np.dtype(np.uint16) if numel <= 1 << 16 else np.dtype(np.uint32)


def payload_nbytes(payload: Mapping[str, np.ndarray]) -> int:
    """Byte size of a payload on the wire (array data only; names and framing are the carrier's)."""
    return int(sum(int(a.nbytes) for a in payload.values()))


def _f32(x: np.ndarray) -> npt.NDArray[np.float32]:
    return np.asarray(x, dtype=np.float32)


def tensor_sensitivity(
    update: Mapping[str, np.ndarray],
    weights: Mapping[str, np.ndarray],
    grads: Mapping[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """Per-tensor sensitivity: ``||u_t|| / ||w_t||`` (relative) or ``|sum g_t u_t|`` (Taylor).

    The relative form is FedLAMA's layer discrepancy; the Taylor form estimates how much the local
    loss would move if the tensor's update were dropped. The server reports these to pick
    downlink tensors and the client uses the same measure to gate uploads.
    """
    out: dict[str, float] = {}
    for name, u in update.items():
        u64 = np.asarray(u, dtype=np.float64)
        if grads is not None and name in grads:
            out[name] = float(abs(np.sum(np.asarray(grads[name], dtype=np.float64) * u64)))
        else:
            w = np.asarray(weights[name], dtype=np.float64)
            denom = np.sqrt(np.sum(w * w) + w.size * RMS_FLOOR**2)
            out[name] = float(np.sqrt(np.sum(u64 * u64)) / denom)
    return out


def _coordinate_scores(
    v: npt.NDArray[np.float32],
    w: np.ndarray,
    g: np.ndarray | None,
) -> npt.NDArray[np.float64]:
    flat = np.abs(v.reshape(-1).astype(np.float64))
    if g is not None:
        score = flat * np.abs(np.asarray(g, dtype=np.float64).reshape(-1))
    else:
        w64 = np.asarray(w, dtype=np.float64)
        score = flat / np.sqrt(np.mean(w64 * w64) + RMS_FLOOR**2)
    score[flat < TINY] = 0.0
    return np.asarray(score, dtype=np.float64)


def quantize(values: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.int8], np.float32]:
    """Symmetric int8 with one scale; deterministic rounding (half to even)."""
    peak = np.float32(np.max(np.abs(values))) if values.size else np.float32(0.0)
    if peak == 0:
        return np.zeros(values.shape, np.int8), np.float32(1.0)
    scale = np.float32(peak / np.float32(QMAX))
    q = np.clip(np.rint(values / scale), -QMAX, QMAX).astype(np.int8)
    return q, scale


def dequantize(q: np.ndarray, scale: np.floating[Any] | float) -> npt.NDArray[np.float32]:
    """Inverse of ``quantize`` in float32 (the one definition encoder and decoder share)."""
    return q.astype(np.float32) * np.float32(scale)


@dataclass
class EncodeResult:
    """What one round of encoding produced."""

    payload: Payload
    residual: Arrays
    sent: dict[str, int] = field(default_factory=dict)
    """Coordinates sent per tensor (tensors not sent are absent)."""
    sensitivity: dict[str, float] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Payload size on the wire."""
        return payload_nbytes(self.payload)


def compensate(
    update: Mapping[str, np.ndarray], residual: Mapping[str, np.ndarray] | None
) -> Arrays:
    """Error feedback: ``v = fl32(u + e)``; a residual of the wrong shape is dropped, not fatal."""
    out: Arrays = {}
    for name, u in update.items():
        v = _f32(u)
        if not np.all(np.isfinite(v)):
            raise ValueError(f"update {name!r} is not finite")
        e = None if residual is None else residual.get(name)
        if e is not None and np.shape(e) == v.shape:
            v = v + _f32(e)
        out[name] = v
    return out


def _select(
    scores: list[npt.NDArray[np.float64]],
    unit_cost: list[int],
    numel: list[int],
    budget: int,
    max_passes: int = 4,
) -> tuple[list[npt.NDArray[np.int64]], list[bool]]:
    """Greedy selection by score per byte with per-tensor scale costs and dense switching."""
    n_t = len(scores)
    chosen: list[npt.NDArray[np.int64]] = [np.zeros(0, np.int64) for _ in range(n_t)]
    dense = [False] * n_t
    if n_t == 0:
        return chosen, dense
    offsets = np.concatenate([[0], np.cumsum(numel)]).astype(np.int64)
    all_scores = np.concatenate(scores) if n_t else np.zeros(0)
    owner = np.repeat(np.arange(n_t), numel)
    cost_of = np.asarray(unit_cost, dtype=np.int64)
    per_byte = all_scores / cost_of[owner]
    taken = np.zeros(all_scores.size, bool)

    def spent() -> int:
        total = 0
        for t in range(n_t):
            if dense[t]:
                total += numel[t] + SCALE_BYTES
            elif chosen[t].size:
                total += chosen[t].size * unit_cost[t] + SCALE_BYTES
        return total

    for _ in range(max_passes):
        left = budget - spent()
        if left < int(cost_of.min()):
            break
        open_t = np.array([not dense[t] for t in range(n_t)])
        candidate = (~taken) & (all_scores > 0) & open_t[owner]
        m = min(int(candidate.sum()), left // int(cost_of.min()) + 1)
        if m == 0:
            break
        cand_idx = np.flatnonzero(candidate)
        vals = per_byte[cand_idx]
        if m < cand_idx.size:
            part = np.argpartition(-vals, m - 1)[:m]
            cand_idx, vals = cand_idx[part], vals[part]
        order = np.lexsort((cand_idx, -vals))  # ties broken by position: deterministic
        cand_idx = cand_idx[order]
        own = owner[cand_idx]
        costs = cost_of[own].copy()
        started = np.array([chosen[t].size > 0 for t in range(n_t)])
        first = np.zeros(cand_idx.size, bool)
        _, first_pos = np.unique(own, return_index=True)
        first[first_pos] = True
        costs[first & ~started[own]] += SCALE_BYTES
        fits = np.cumsum(costs) <= left
        keep = cand_idx[fits] if fits.all() else cand_idx[: int(np.argmin(fits))]
        if keep.size == 0:
            break
        taken[keep] = True
        for t in np.unique(owner[keep]):
            mine = keep[owner[keep] == t] - offsets[t]
            chosen[t] = np.union1d(chosen[t], mine)
            if chosen[t].size * unit_cost[t] >= numel[t]:
                dense[t] = True
                chosen[t] = np.arange(numel[t], dtype=np.int64)
                taken[offsets[t] : offsets[t + 1]] = True
    return chosen, dense


def encode(
    update: Mapping[str, np.ndarray],
    weights: Mapping[str, np.ndarray],
    budget: int,
    residual: Mapping[str, np.ndarray] | None = None,
    *,
    grads: Mapping[str, np.ndarray] | None = None,
    min_tensor_sensitivity: float = 0.0,
) -> EncodeResult:
    """Encode ``update`` (``w_local - w_global``) into at most ``budget`` bytes.

    ``weights`` are the global weights the update is relative to (for the relative measure);
    ``grads`` switches to the Taylor measure. Returns the payload, the new residual (to be stored
    by the caller and passed back next round) and what was sent.
    """
    v = compensate(update, residual)
    names = list(v)
    sens = tensor_sensitivity(v, weights, grads)
    top = max(sens.values(), default=0.0)
    scores: list[npt.NDArray[np.float64]] = []
    for name in names:
        g = None if grads is None else grads.get(name)
        s = _coordinate_scores(v[name], weights[name], g)
        if top > 0 and sens[name] < min_tensor_sensitivity * top:
            s = np.zeros_like(s)
        scores.append(s)
    numel = [int(v[n].size) for n in names]
    unit = [1 + index_dtype(n).itemsize for n in numel]
    chosen, dense = _select(scores, unit, numel, max(int(budget), 0))

    payload: Payload = {}
    new_residual: Arrays = {}
    sent: dict[str, int] = {}
    for t, name in enumerate(names):
        flat = v[name].reshape(-1)
        idx = chosen[t]
        if idx.size:
            q, scale = quantize(flat[idx])
            payload[f"{name}.val"] = q
            payload[f"{name}.scale"] = np.array([scale], np.float32)
            if not dense[t]:
                payload[f"{name}.idx"] = idx.astype(index_dtype(flat.size))
            d = np.zeros_like(flat)
            d[idx] = dequantize(q, scale)
            sent[name] = int(idx.size)
            new_residual[name] = (flat - d).reshape(v[name].shape)
        else:
            new_residual[name] = v[name].copy()
    assert payload_nbytes(payload) <= max(int(budget), 0)
    return EncodeResult(payload, new_residual, sent, sens)


def sent_tensors(payload: Mapping[str, np.ndarray]) -> list[str]:
    """Names of the tensors a payload carries, in payload order."""
    return [k[: -len(".val")] for k in payload if k.endswith(".val")]


def decode_sparse(
    payload: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]:
    """Flat indices and float32 values per sent tensor (what sparse aggregation needs)."""
    out: dict[str, tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]] = {}
    for name in sent_tensors(payload):
        numel = int(np.prod(shapes[name], dtype=np.int64))
        q = np.asarray(payload[f"{name}.val"])
        scale = np.asarray(payload[f"{name}.scale"]).reshape(-1)[0]
        idx_key = f"{name}.idx"
        if idx_key in payload:
            idx = np.asarray(payload[idx_key]).astype(np.int64)
        else:
            idx = np.arange(numel, dtype=np.int64)
        out[name] = (idx, dequantize(q, scale))
    return out


def decode(payload: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]]) -> Arrays:
    """Dense float32 tensors for every tensor in ``shapes`` (zeros where nothing was sent)."""
    sparse = decode_sparse(payload, shapes)
    out: Arrays = {}
    for name, shape in shapes.items():
        dense = np.zeros(int(np.prod(shape, dtype=np.int64)), np.float32)
        if name in sparse:
            idx, vals = sparse[name]
            dense[idx] = vals
        out[name] = dense.reshape(shape)
    return out


PACKED_KEYS = ("gsfs.head", "gsfs.scale", "gsfs.val", "gsfs.idx16", "gsfs.idx32")
"""Keys of a packed payload (``pack``); ``gsfs.head`` alone marks a payload as packed."""


def pack(payload: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]]) -> Payload:
    """Carry a payload in at most five arrays, for carriers that frame every array.

    A per-tensor payload is about three arrays per sent tensor, and a carrier such as Flower's
    ``ArrayRecord`` adds a name and an npy header (~100 bytes) to each: at a few kB of data that
    framing is a third of the message. Packed: ``gsfs.head`` (int32, one row per sent tensor:
    position of the tensor in ``sorted(shapes)``, number of values, 1 if it has indices),
    ``gsfs.scale`` (float32 per row), ``gsfs.val`` (int8, all values in row order) and the
    indices concatenated by width, ``gsfs.idx16`` / ``gsfs.idx32`` (``index_dtype`` of each
    tensor; an empty one is left out). ``unpack(pack(p, s), s) == p`` for every ``encode``
    payload ``p``.
    """
    order = {name: i for i, name in enumerate(sorted(shapes))}
    names = sent_tensors(payload)
    head = np.array(
        [[order[n], int(np.size(payload[f"{n}.val"])), int(f"{n}.idx" in payload)] for n in names],
        np.int32,
    ).reshape(len(names), 3)
    out: Payload = {
        "gsfs.head": head,
        "gsfs.scale": np.array(
            [np.asarray(payload[f"{n}.scale"]).reshape(-1)[0] for n in names], np.float32
        ),
        "gsfs.val": np.concatenate(
            [np.asarray(payload[f"{n}.val"]).reshape(-1) for n in names] or [np.zeros(0, np.int8)]
        ),
    }
    for key, dtype in (("gsfs.idx16", np.uint16), ("gsfs.idx32", np.uint32)):
        parts = [
            np.asarray(payload[f"{n}.idx"])
            for n in names
            if f"{n}.idx" in payload and index_dtype(_numel(shapes[n])) == dtype
        ]
        if parts:
            out[key] = np.concatenate(parts).astype(dtype, copy=False)
    return out


def unpack(packed: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]]) -> Payload:
    """Per-tensor payload from a packed one; ``ValueError`` says what is malformed.

    Only the framing is checked here (keys, head, lengths add up); dtypes, index ranges, scales
    and norms are the per-tensor validator's, which sees exactly what an unpacked sender sends.
    """
    if set(packed) - set(PACKED_KEYS) or not {"gsfs.head", "gsfs.scale", "gsfs.val"} <= set(packed):
        raise ValueError(f"packed payload keys {sorted(packed)}")
    head = np.asarray(packed["gsfs.head"])
    if head.dtype != np.int32 or head.ndim != 2 or head.shape[1] != 3:
        raise ValueError(f"gsfs.head: expected int32 (n, 3), got {head.dtype} {head.shape}")
    names = sorted(shapes)
    pos, count, has_idx = (head[:, i].astype(np.int64) for i in range(3))
    if np.any((pos < 0) | (pos >= len(names))) or np.unique(pos).size != pos.size:
        raise ValueError("gsfs.head: tensor positions out of range or repeated")
    if np.any(count < 1) or np.any((has_idx != 0) & (has_idx != 1)):
        raise ValueError("gsfs.head: counts must be >= 1 and index flags 0 or 1")
    scale, val = np.asarray(packed["gsfs.scale"]), np.asarray(packed["gsfs.val"])
    if scale.shape != (len(pos),) or val.ndim != 1 or val.size != int(count.sum()):
        raise ValueError("gsfs.scale / gsfs.val: lengths do not match gsfs.head")
    idx = {
        k: np.asarray(packed[k]).reshape(-1) for k in ("gsfs.idx16", "gsfs.idx32") if k in packed
    }
    at = dict.fromkeys(idx, 0)
    out: Payload = {}
    start = 0
    for p, c, flag, sc in zip(pos.tolist(), count.tolist(), has_idx.tolist(), scale, strict=True):
        name = names[p]
        out[f"{name}.val"] = val[start : start + c]
        out[f"{name}.scale"] = np.array([sc], dtype=scale.dtype)
        start += c
        if flag:
            key = "gsfs.idx16" if index_dtype(_numel(shapes[name])) == np.uint16 else "gsfs.idx32"
            if key not in idx or at[key] + c > idx[key].size:
                raise ValueError(f"{key}: fewer indices than gsfs.head declares")
            out[f"{name}.idx"] = idx[key][at[key] : at[key] + c]
            at[key] += c
    if any(at[k] != idx[k].size for k in idx):
        raise ValueError("gsfs.idx16 / gsfs.idx32: more indices than gsfs.head declares")
    return out


def _numel(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64))


def shared_scales(clip: Mapping[str, float]) -> dict[str, float]:
    """Fixed-point step per tensor for SecAgg mode: a per-coordinate clip bound over 127 steps."""
    return {name: float(np.float32(c) / np.float32(QMAX)) for name, c in clip.items()}


def encode_shared(
    update: Mapping[str, np.ndarray],
    shared_idx: Mapping[str, np.ndarray],
    scales: Mapping[str, float],
    residual: Mapping[str, np.ndarray] | None = None,
) -> EncodeResult:
    """SecAgg-compatible encoding: fill the server's shared coordinates on its shared grid.

    Every client sends ``<name>.val`` (int8, one value per shared index, in the index order); no
    index or scale travels, since the server chose both. Sums of these vectors are meaningful,
    which is what secure aggregation needs.
    """
    v = compensate(update, residual)
    payload: Payload = {}
    new_residual: Arrays = {}
    sent: dict[str, int] = {}
    for name, val in v.items():
        flat = val.reshape(-1)
        idx = shared_idx.get(name)
        if idx is None or np.size(idx) == 0:
            new_residual[name] = val.copy()
            continue
        idx64 = np.asarray(idx, dtype=np.int64)
        scale = np.float32(scales[name])
        q = np.clip(np.rint(flat[idx64] / scale), -QMAX, QMAX).astype(np.int8)
        d = np.zeros_like(flat)
        d[idx64] = dequantize(q, scale)
        payload[f"{name}.val"] = q
        sent[name] = int(idx64.size)
        new_residual[name] = (flat - d).reshape(val.shape)
    return EncodeResult(payload, new_residual, sent, {})


def decode_shared(
    payload: Mapping[str, np.ndarray],
    shared_idx: Mapping[str, np.ndarray],
    scales: Mapping[str, float],
    shapes: Mapping[str, tuple[int, ...]],
) -> Arrays:
    """Dense float32 tensors from a shared-index payload (or from a SecAgg sum of them)."""
    out: Arrays = {}
    for name, shape in shapes.items():
        dense = np.zeros(int(np.prod(shape, dtype=np.int64)), np.float32)
        key = f"{name}.val"
        if key in payload and name in shared_idx:
            idx = np.asarray(shared_idx[name], dtype=np.int64)
            dense[idx] = dequantize(np.asarray(payload[key]), scales[name])
        out[name] = dense.reshape(shape)
    return out


def save_residual(path: str | os.PathLike[str], residual: Mapping[str, np.ndarray]) -> None:
    """Persist the error-feedback state atomically (a crash leaves the old file or the new one)."""
    arrays: dict[str, Any] = {k: _f32(a) for k, a in residual.items()}
    atomic_write(Path(path), partial(np.savez, allow_pickle=False, **arrays))


def load_residual(path: str | os.PathLike[str]) -> Arrays:
    """Load the error-feedback state; a missing file means no residual yet."""
    if not os.path.exists(path):
        return {}
    with np.load(path, allow_pickle=False) as data:
        return {k: _f32(data[k]) for k in data.files}
