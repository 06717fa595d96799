"""Downlink skipping: send a node only the tensors that changed enough since the copy it holds.

The server tracks, per node, the version (round) of every tensor the node holds, and keeps the
global tensors of every version some node still holds. A tensor whose relative change since the
node's version is below ``threshold`` is not sent (LAG / Gaia-style skipping of insignificant
changes), unless it is older than ``max_age`` rounds. A node's copy is only committed when its
reply confirms it; after a miss or a mismatch the node gets the full model again, so server and
node never silently disagree on what the node holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]


@dataclass
class NodeCopy:
    """What a node holds: a state id and the version of every tensor."""

    state_id: int
    versions: dict[str, int]


@dataclass
class DownlinkTracker:
    """Per-node copies, pending offers and the snapshots they refer to."""

    threshold: float = 1e-3
    max_age: int = 10
    committed: dict[int, NodeCopy] = field(default_factory=dict)
    pending: dict[int, NodeCopy] = field(default_factory=dict)
    snapshots: dict[tuple[str, int], F32] = field(default_factory=dict)
    next_state: int = 1

    def offer(
        self, node_id: int, server_round: int, arrays: Mapping[str, F32]
    ) -> tuple[list[str], int, int]:
        """Tensors to send, the state id the node must hold (-1: none needed), the new state id."""
        held = self.committed.get(node_id)
        names = list(arrays)
        if held is not None and set(held.versions) == set(names):
            send = []
            for name in names:
                ver = held.versions[name]
                old = self.snapshots.get((name, ver))
                if old is None or server_round - ver > self.max_age:
                    send.append(name)
                    continue
                now = arrays[name]
                drift = float(np.linalg.norm(now - old)) / (float(np.linalg.norm(now)) + 1e-12)
                if drift >= self.threshold:
                    send.append(name)
            base = held.state_id
            versions = {n: (server_round if n in send else held.versions[n]) for n in names}
        else:
            send, base = names, -1
            versions = dict.fromkeys(names, server_round)
        for name in send:
            self.snapshots[(name, server_round)] = arrays[name]
        new_state = self.next_state
        self.next_state += 1
        self.pending[node_id] = NodeCopy(new_state, versions)
        return send, base, new_state

    def confirm(self, node_id: int, state_id: int) -> None:
        """Commit the pending offer if the node replied holding it, else forget its copy."""
        offer = self.pending.pop(node_id, None)
        if offer is not None and offer.state_id == state_id:
            self.committed[node_id] = offer
        else:
            self.committed.pop(node_id, None)

    def forget(self, node_id: int) -> None:
        """No usable reply: the node's copy is unknown, next offer sends everything."""
        self.pending.pop(node_id, None)
        self.committed.pop(node_id, None)

    def collect(self) -> None:
        """Drop snapshots no committed or pending copy refers to."""
        live = {
            (n, v)
            for c in (*self.committed.values(), *self.pending.values())
            for n, v in c.versions.items()
        }
        for key in list(self.snapshots):
            if key not in live:
                del self.snapshots[key]

    def state(self) -> tuple[dict[str, object], dict[str, F32]]:
        """JSON-ready metadata and snapshot arrays, for checkpoints."""
        meta: dict[str, object] = {
            "threshold": self.threshold,
            "max_age": self.max_age,
            "next_state": self.next_state,
            "committed": {str(k): [c.state_id, c.versions] for k, c in self.committed.items()},
            "pending": {str(k): [c.state_id, c.versions] for k, c in self.pending.items()},
        }
        arrays = {f"{v}/{n}": a for (n, v), a in self.snapshots.items()}
        return meta, arrays

    def load_state(self, meta: Mapping[str, object], arrays: Mapping[str, np.ndarray]) -> None:
        """Restore what ``state`` returned."""
        self.threshold = float(meta["threshold"])  # type: ignore[arg-type]
        self.max_age = int(meta["max_age"])  # type: ignore[call-overload]
        self.next_state = int(meta["next_state"])  # type: ignore[call-overload]

        def copies(raw: object) -> dict[int, NodeCopy]:
            assert isinstance(raw, dict)
            return {
                int(k): NodeCopy(int(s), {n: int(x) for n, x in vers.items()})
                for k, (s, vers) in raw.items()
            }

        self.committed = copies(meta["committed"])
        self.pending = copies(meta["pending"])
        self.snapshots = {}
        for key, a in arrays.items():
            ver, name = key.split("/", 1)
            self.snapshots[(name, int(ver))] = np.asarray(a, np.float32)
