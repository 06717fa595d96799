"""Aggregation of sparse updates and the server optimiser (FedOpt's Adam).

A coordinate that only some clients sent is averaged over those clients, weighted by their
number of examples: treating the silent ones as zeros would shrink every sparsely sent coordinate
by the fraction of clients that happened to send it, a bias that grows as budgets shrink.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
Sparse = Mapping[str, tuple[npt.NDArray[np.int64], F32]]


class SparseMean:
    """Streaming per-coordinate weighted mean: memory is two float64 vectors of the model size.

    Updates are added one at a time as replies are validated and then dropped, so the server's
    memory does not grow with the number of nodes in a round (1,000 nodes cost what 10 do).
    """

    def __init__(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        self.shapes = dict(shapes)
        sizes = [int(np.prod(s, dtype=np.int64)) for s in self.shapes.values()]
        starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.offset = {n: int(o) for n, o in zip(self.shapes, starts[:-1], strict=True)}
        self.num = np.zeros(int(starts[-1]), np.float64)
        self.den = np.zeros(int(starts[-1]), np.float64)
        self.count = 0
        self.total = 0.0

    def add(self, update: Sparse, weight: float) -> None:
        """Add one client's sparse update (indices unique per tensor: validated before)."""
        for name, (idx, vals) in update.items():
            at = self.offset.get(name)
            if at is None:
                continue
            flat = idx + at if at else idx
            self.num[flat] += weight * vals.astype(np.float64)
            self.den[flat] += weight
        self.count += 1
        self.total += weight

    def result(
        self, over_all: bool = False
    ) -> tuple[dict[str, F32], dict[str, npt.NDArray[np.float64]]]:
        """Mean update per tensor, and summed weight per coordinate (0 where nobody sent it).

        ``over_all``: divide by the weight of every update added (unsent coordinates count as
        zeros), as DGC / top-k with error feedback do: what a node did not send stays in its
        residual and arrives later, so averaging only over senders would count it twice over.
        """
        if over_all:
            mean = self.num / max(self.total, 1e-300)
        else:
            mean = np.divide(self.num, self.den, out=np.zeros_like(self.num), where=self.den > 0)
        out: dict[str, F32] = {}
        cover: dict[str, npt.NDArray[np.float64]] = {}
        for name, shape in self.shapes.items():
            a = self.offset[name]
            n = int(np.prod(shape, dtype=np.int64))
            out[name] = mean[a : a + n].astype(np.float32).reshape(shape)
            cover[name] = self.den[a : a + n].reshape(shape)
        return out, cover


def aggregate_sparse(
    updates: Sequence[Sparse], weights: Sequence[float], shapes: Mapping[str, tuple[int, ...]]
) -> tuple[dict[str, F32], dict[str, npt.NDArray[np.float64]]]:
    """Per-coordinate weighted mean over the clients that sent each coordinate.

    Returns the mean update and the summed weight per coordinate (0 where nobody sent it).
    Indices of one client are unique (validated before), so plain fancy-index adds are exact.
    """
    acc = SparseMean(shapes)
    for upd, w in zip(updates, weights, strict=True):
        acc.add(upd, w)
    return acc.result()


@dataclass
class ServerAdam:
    """Adam on the aggregated pseudo-gradient (FedAdam, Reddi et al., ICLR 2021).

    ``x_{t+1} = x_t + eta * m_hat / (sqrt(v_hat) + tau)`` with ``m, v`` moments of the mean update
    (which points downhill, hence ``+``). ``tau`` is the adaptivity floor of the paper. With
    ``kind="sgd"``, ``eta=1`` this is exactly FedAvg on deltas. ``kind="sgdm"`` is FedAvgM (Hsu
    et al., 2019) as Flower writes it: ``m = beta1 * m + delta``, ``x += eta * m``; its gain on a
    steady update is ``eta / (1 - beta1)``. ``kind="ema"`` is the damped form, Adam's first moment
    without the second: ``m = beta1 * m + (1 - beta1) * delta``, ``x += eta * m / (1 - beta1^t)``.
    Its gain is ``eta`` at every round (bias correction: round 1 is a plain FedAvg step), so it
    only low-passes the update: under partial participation it averages the rounds' different
    halves of the population instead of following each in turn, without amplifying the step.
    """

    eta: float = 1e-2
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    kind: str = "adam"
    t: int = 0
    m: dict[str, F32] = field(default_factory=dict)
    v: dict[str, F32] = field(default_factory=dict)

    def step(self, params: Mapping[str, F32], delta: Mapping[str, F32]) -> dict[str, F32]:
        """Return new global parameters from the current ones and the aggregated update."""
        if self.kind == "sgd":
            return {
                k: (p + np.float32(self.eta) * delta[k]).astype(np.float32)
                for k, p in params.items()
            }
        if self.kind in ("sgdm", "ema"):
            self.t += 1
            damp = 1.0 - self.beta1 if self.kind == "ema" else 1.0
            gain = self.eta / (1.0 - self.beta1**self.t) if self.kind == "ema" else self.eta
            for k, d in delta.items():
                m = self.m.get(k, np.zeros_like(d))
                self.m[k] = (self.beta1 * m + damp * d).astype(np.float32)
            return {
                k: (p + np.float32(gain) * self.m[k]).astype(np.float32) for k, p in params.items()
            }
        self.t += 1
        c1 = 1.0 - self.beta1**self.t
        c2 = 1.0 - self.beta2**self.t
        out: dict[str, F32] = {}
        for k, p in params.items():
            d = delta[k]
            m = self.m.get(k, np.zeros_like(p))
            v = self.v.get(k, np.zeros_like(p))
            m = (self.beta1 * m + (1.0 - self.beta1) * d).astype(np.float32)
            v = (self.beta2 * v + (1.0 - self.beta2) * d * d).astype(np.float32)
            self.m[k], self.v[k] = m, v
            step = self.eta * (m / c1) / (np.sqrt(v / c2) + self.tau)
            out[k] = (p + step).astype(np.float32)
        return out

    def arrays(self) -> dict[str, F32]:
        """Moment arrays for a checkpoint."""
        return {
            **{f"m/{k}": a for k, a in self.m.items()},
            **{f"v/{k}": a for k, a in self.v.items()},
        }

    def load_arrays(self, arrays: Mapping[str, np.ndarray], t: int) -> None:
        """Restore moments saved by ``arrays``."""
        self.t = t
        self.m = {k[2:]: np.asarray(a, np.float32) for k, a in arrays.items() if k.startswith("m/")}
        self.v = {k[2:]: np.asarray(a, np.float32) for k, a in arrays.items() if k.startswith("v/")}
