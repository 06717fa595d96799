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


def aggregate_sparse(
    updates: Sequence[Sparse], weights: Sequence[float], shapes: Mapping[str, tuple[int, ...]]
) -> tuple[dict[str, F32], dict[str, npt.NDArray[np.float64]]]:
    """Per-coordinate weighted mean over the clients that sent each coordinate.

    Returns the mean update and the summed weight per coordinate (0 where nobody sent it).
    Indices of one client are unique (validated before), so plain fancy-index adds are exact.
    """
    mean: dict[str, F32] = {}
    cover: dict[str, npt.NDArray[np.float64]] = {}
    for name, shape in shapes.items():
        n = int(np.prod(shape, dtype=np.int64))
        num = np.zeros(n, np.float64)
        den = np.zeros(n, np.float64)
        for upd, w in zip(updates, weights, strict=True):
            if name in upd:
                idx, vals = upd[name]
                num[idx] += w * vals.astype(np.float64)
                den[idx] += w
        out = np.divide(num, den, out=np.zeros(n, np.float64), where=den > 0)
        mean[name] = out.astype(np.float32).reshape(shape)
        cover[name] = den.reshape(shape)
    return mean, cover


@dataclass
class ServerAdam:
    """Adam on the aggregated pseudo-gradient (FedAdam, Reddi et al., ICLR 2021).

    ``x_{t+1} = x_t + eta * m_hat / (sqrt(v_hat) + tau)`` with ``m, v`` moments of the mean update
    (which points downhill, hence ``+``). ``tau`` is the adaptivity floor of the paper. With
    ``kind="sgd"``, ``eta=1`` this is exactly FedAvg on deltas.
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
