"""Local training of the GIoT model on a hub's own token windows (numpy only).

Federated rounds stop and resume training between processes and restarts, so everything that
decides the next step (optimizer moments, step count, which windows come next) is state that
round-trips through plain ``dict[str, np.ndarray]`` (``np.savez``-compatible). Batches depend only
on (seed, global step): training N steps in one go equals k steps, save, load, N - k steps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from .model import FloatArray, GIoTModel, IntArray


@dataclass
class TrainReport:
    """What one call of ``train_windows`` did."""

    steps: int
    tokens: int  # scored target tokens seen
    final_loss: float
    mean_loss: float
    tokens_per_second: float
    seconds: float


@dataclass
class AdamW:
    """Adam with decoupled weight decay (Loshchilov & Hutter), as ``torch.optim.AdamW``.

    Weight decay applies to matrices only (embeddings and Conv1D weights), not to biases and
    LayerNorm gains, the usual GPT-2 recipe.
    """

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.01
    step_count: int = 0
    m: dict[str, FloatArray] = field(default_factory=dict, repr=False)
    v: dict[str, FloatArray] = field(default_factory=dict, repr=False)

    def step(self, params: Mapping[str, FloatArray], grads: Mapping[str, FloatArray]) -> None:
        """Update ``params`` in place from ``grads`` (same names)."""
        self.step_count += 1
        b1, b2 = self.betas
        bias1 = 1.0 - b1**self.step_count
        bias2_sqrt = math.sqrt(1.0 - b2**self.step_count)
        for name, g in grads.items():
            p = params[name]
            m = self.m.setdefault(name, np.zeros_like(p))
            v = self.v.setdefault(name, np.zeros_like(p))
            m *= b1
            m += (1.0 - b1) * g
            v *= b2
            v += (1.0 - b2) * g * g
            if self.weight_decay and p.ndim >= 2:
                p *= 1.0 - self.lr * self.weight_decay
            denom = np.sqrt(v)
            denom /= bias2_sqrt
            denom += self.eps
            p -= (self.lr / bias1) * m / denom

    def state_dict(self) -> dict[str, np.ndarray]:
        """Return everything needed to resume, as arrays (``np.savez(path, **state)`` works)."""
        state: dict[str, np.ndarray] = {
            "step": np.array(self.step_count, np.int64),
            "lr": np.array(self.lr),
            "betas": np.array(self.betas),
            "eps": np.array(self.eps),
            "weight_decay": np.array(self.weight_decay),
        }
        state |= {f"m.{k}": a.copy() for k, a in self.m.items()}
        state |= {f"v.{k}": a.copy() for k, a in self.v.items()}
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore what ``state_dict`` returned (also an ``np.load``-ed npz file)."""
        self.step_count = int(state["step"])
        self.lr = float(state["lr"])
        b1, b2 = (float(b) for b in state["betas"])
        self.betas = (b1, b2)
        self.eps = float(state["eps"])
        self.weight_decay = float(state["weight_decay"])
        self.m = {k[2:]: np.array(state[k], np.float32) for k in state if k.startswith("m.")}
        self.v = {k[2:]: np.array(state[k], np.float32) for k in state if k.startswith("v.")}


def clip_grad_norm(grads: Mapping[str, FloatArray], max_norm: float) -> float:
    """Scale ``grads`` in place so their global L2 norm is at most ``max_norm``; return the norm."""
    norm = math.sqrt(sum(float(np.vdot(g, g)) for g in grads.values()))
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0:
        for g in grads.values():
            np.multiply(g, np.float32(coef), out=g)
    return norm


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> npt.NDArray[np.int64]:
    """Rows of global step ``step``: consecutive slices of one seeded permutation per epoch."""
    start = step * batch_size
    pos = np.arange(start, start + batch_size)
    out = np.empty(batch_size, np.int64)
    for epoch in np.unique(pos // n):
        sel = pos // n == epoch
        out[sel] = np.random.default_rng([seed, int(epoch)]).permutation(n)[pos[sel] % n]
    return out


def train_windows(  # noqa: PLR0917 (positional order agreed in docs/dev/interfaces.md)
    model: GIoTModel,
    windows: IntArray,
    steps: int,
    batch_size: int,
    seed: int,
    optimizer: AdamW | None = None,
    loss_mask: npt.NDArray[np.bool_] | None = None,
    *,
    clip_norm: float | None = 1.0,
) -> TrainReport:
    """Train ``model`` in place for ``steps`` AdamW steps on rows of ``windows`` (N, T).

    The batch of each step is a function of (seed, optimizer.step_count), so passing the same
    optimizer (or one restored from ``state_dict``) continues exactly where training stopped.
    ``loss_mask`` (N, T-1) selects the target positions that count (e.g. skip padding).
    """
    windows = np.asarray(windows)
    if windows.ndim != 2 or len(windows) == 0:
        raise ValueError(f"windows must be a non-empty (N, T) array, got shape {windows.shape}")
    if loss_mask is not None and np.shape(loss_mask) != (windows.shape[0], windows.shape[1] - 1):
        raise ValueError(f"loss_mask shape {np.shape(loss_mask)}, expected (N, T-1)")
    opt = optimizer if optimizer is not None else AdamW()
    losses: list[float] = []
    tokens = 0
    start = time.perf_counter()
    for _ in range(steps):
        rows = batch_indices(len(windows), batch_size, seed, opt.step_count)
        mask = None if loss_mask is None else np.asarray(loss_mask, bool)[rows]
        loss, grads = model.loss_and_grads(windows[rows], mask)
        if clip_norm is not None:
            clip_grad_norm(grads, clip_norm)
        opt.step(model.params, grads)
        losses.append(loss)
        tokens += int(mask.sum()) if mask is not None else len(rows) * (windows.shape[1] - 1)
    seconds = time.perf_counter() - start
    return TrainReport(
        steps=steps,
        tokens=tokens,
        final_loss=losses[-1] if losses else math.nan,
        mean_loss=float(np.mean(losses)) if losses else math.nan,
        tokens_per_second=tokens / seconds if seconds > 0 else 0.0,
        seconds=seconds,
    )
