"""Stage 1 of detection: behaviour features of a device's recent flows and a small classifier.

Known attack families look alike on any device: a scan touches many hosts on one port and gets no
answer, a flood sends many flows per second, a C&C channel keeps knocking on one remote host at a
regular pace. The features describe exactly that (counts, rates, failure fractions, regularity),
never which protocol a device happens to use, so that "any TCP is an attack" cannot be learnt from
lab captures whose benign traffic is only DNS and NTP. The head is a multinomial logistic regression
trained with numpy on the training captures' detailed labels; it stays tiny and deterministic.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Sequence
from typing import Any, Final

import numpy as np

from .records import FlowRecord
from .tokenizer import address_scope

FAMILIES = ("benign", "port_scan", "cnc", "ddos", "file_download")
WINDOW_S = 60.0
MAX_WINDOW_FLOWS = 256
FAILED_TCP_STATES = frozenset({"S0", "REJ", "RSTOS0", "RSTRH", "SH", "SHR"})
FEATURE_NAMES = (
    "log_flows_60s",
    "log_distinct_dst",
    "log_distinct_ports",
    "frac_failed_tcp",
    "frac_oth",
    "frac_remote",
    "frac_no_payload",
    "cur_failed_tcp",
    "cur_oth",
    "cur_remote",
    "log_same_dst",
    "log_same_port_hosts",
    "cur_regularity",
    "cur_log_bytes",
)


def family_of(label: str | None, detailed: str | None) -> str:
    """Attack family of an IoT-23 label pair (training only; never a feature)."""
    if label is None or label.lower() != "malicious":
        return "benign"
    d = (detailed or "").lower()
    if "scan" in d:
        return "port_scan"
    if "filedownload" in d:
        return "file_download"
    if "ddos" in d or "attack" in d:
        return "ddos"
    return "cnc"


# One flow of a window: (ts, destination, port, failed, oth, remote, payload). A plain tuple of
# numbers and a string, not a class: the garbage collector stops tracking such tuples, and a busy
# device keeps hundreds of them alive for a minute, which otherwise brings full collections (that
# stop Home Assistant's event loop for tens of milliseconds) much closer.
_Seen = tuple[float, str, int, bool, bool, bool, bool]
TS: Final = 0
DST: Final = 1
PORT: Final = 2
FAILED: Final = 3
OTH: Final = 4
REMOTE: Final = 5
PAYLOAD: Final = 6


class MinuteCounts:
    """Flows of a sliding minute with running counts: by destination, by port, by port and host.

    Flows enter at the back and leave from the front once they are older than the minute (or,
    with a ``bound``, once the window holds that many), so a busy device costs the same per flow
    as a quiet one. The behaviour window's signature features and the hub's naming of port scans
    and floods (``hub_detector``) both count over it.
    """

    def __init__(self, bound: int | None = MAX_WINDOW_FLOWS) -> None:
        self.bound = bound
        self.flows: deque[_Seen] = deque()
        self.added = 0  # flows added so far (numbers them in ``_oldest``)
        # running counts over ``flows`` and the minimum of their times (a monotonic queue)
        self._oldest: deque[tuple[float, int]] = deque()  # (ts, sequence number), ts increasing
        self._flags = [0, 0, 0, 0]  # failed, oth, remote, without payload
        self._dst: dict[str, int] = {}
        self._port: dict[int, int] = {}
        self._port_dst: dict[int, dict[str, int]] = {}

    def push(self, seen: _Seen) -> None:
        """Add a flow at the back (the oldest one leaves first when the bound is reached)."""
        if len(self.flows) == self.bound:
            self._pop()
        self.flows.append(seen)
        seq = self.added
        self.added += 1
        while self._oldest and self._oldest[-1][0] > seen[TS]:
            self._oldest.pop()
        self._oldest.append((seen[TS], seq))
        self._count(seen, 1)

    def push_flow(self, flow: FlowRecord, peer: str) -> None:
        """Add ``flow``, to or from ``peer``, at the back."""
        self.push(_summarise(flow, peer))

    def _pop(self) -> None:
        seq = self.added - len(self.flows)
        seen = self.flows.popleft()
        if self._oldest and self._oldest[0][1] == seq:
            self._oldest.popleft()
        self._count(seen, -1)

    def _count(self, s: _Seen, k: int) -> None:
        flags = self._flags
        flags[0] += k * s[FAILED]
        flags[1] += k * s[OTH]
        flags[2] += k * s[REMOTE]
        flags[3] += k * (not s[PAYLOAD])
        _bump(self._dst, s[DST], k)
        _bump(self._port, s[PORT], k)
        per_port = self._port_dst.setdefault(s[PORT], {})
        _bump(per_port, s[DST], k)
        if not per_port:
            del self._port_dst[s[PORT]]

    def drop_before(self, cutoff: float) -> bool:
        """Drop flows before ``cutoff`` from the front; True if no held flow is older than it."""
        while self.flows and self.flows[0][TS] < cutoff:
            self._pop()
        return not self._oldest or self._oldest[0][0] >= cutoff

    @property
    def ports(self) -> int:
        """Distinct destination ports held."""
        return len(self._port)

    def to(self, dst: str) -> int:
        """Flows held to ``dst``."""
        return self._dst.get(dst, 0)


class BehaviourWindow(MinuteCounts):
    """A device's flows of the last minute (bounded), summarised into signature features.

    Every record asks for counts over the device's last minute; a busy device has hundreds of
    flows in it, so the window keeps running counts of what it holds (``MinuteCounts``) and drops
    flows from the front once they are older than a minute (time never goes back: ``now`` only
    grows). Zeek logs long connections late, so a stale flow can sit behind fresh ones; while one
    does (the oldest held time is before the minute), the counts are taken by a scan instead.
    """

    def __init__(self) -> None:
        super().__init__(MAX_WINDOW_FLOWS)
        self.dst_times: dict[str, deque[float]] = {}
        self.now = float("-inf")

    def _settle(self, now: float) -> bool:
        """Drop flows older than the minute before ``now`` from the front; True if none is left."""
        return self.drop_before(now - WINDOW_S)

    def recent(self, ts: float) -> int:
        """Flows of the last minute before a record at ``ts``."""
        now = max(self.now, ts)
        if self._settle(now):
            return len(self.flows)
        return sum(1 for s in self.flows if s[TS] >= now - WINDOW_S)

    def features(self, flow: FlowRecord, peer: str) -> np.ndarray:
        """Features of ``flow`` given the window so far (the flow itself included)."""
        cur = _summarise(flow, peer)
        now = max(self.now, flow.ts)
        if not self._settle(now):
            recent = [s for s in self.flows if s[TS] >= now - WINDOW_S]
            return self._features(cur, flow, peer, *_tally(recent))
        return self._features(
            cur, flow, peer, len(self.flows), self._flags, self._dst, self._port, self._port_dst
        )

    def _features(  # noqa: PLR0917 (the counts of one window)
        self,
        cur: _Seen,
        flow: FlowRecord,
        peer: str,
        held: int,
        flags: list[int],
        dst: dict[str, int],
        port: dict[int, int],
        port_dst: dict[int, dict[str, int]],
    ) -> np.ndarray:
        n = held + 1
        same_port = port_dst.get(cur[PORT], {})
        times = [*self.dst_times.get(peer, ()), flow.ts]
        regular = 0.0
        if len(times) >= 3:  # plain floats: numpy costs more than it saves on 8 values
            ordered = sorted(times[-8:])
            gaps = [b - a for a, b in itertools.pairwise(ordered)]
            mean = sum(gaps) / len(gaps)
            std = math.sqrt(sum((g - mean) ** 2 for g in gaps) / len(gaps))
            regular = 1.0 / (1.0 + std / mean) if mean > 0 else 1.0
        total_bytes = (flow.orig_bytes or 0) + (flow.resp_bytes or 0)
        return np.array(
            [
                math.log1p(n),
                math.log1p(len(dst) + (peer not in dst)),
                math.log1p(len(port) + (cur[PORT] not in port)),
                (flags[0] + cur[FAILED]) / n,
                (flags[1] + cur[OTH]) / n,
                (flags[2] + cur[REMOTE]) / n,
                (flags[3] + (not cur[PAYLOAD])) / n,
                float(cur[FAILED]),
                float(cur[OTH]),
                float(cur[REMOTE]),
                math.log1p(dst.get(peer, 0) + 1),
                math.log1p(len(same_port) + (peer not in same_port)),
                regular,
                math.log1p(total_bytes) / 10.0,
            ],
            dtype=np.float64,
        )

    def add(self, flow: FlowRecord, peer: str) -> None:
        """Remember ``flow`` (after its verdict: features stay causal)."""
        self.now = max(self.now, flow.ts)
        self.push(_summarise(flow, peer))
        times = self.dst_times.setdefault(peer, deque(maxlen=8))
        times.append(flow.ts)
        if len(self.dst_times) > 512:  # forget the oldest destinations
            self.dst_times.pop(next(iter(self.dst_times)))

    def count_like(self, flow: FlowRecord) -> int:
        """Flows of the last minute with the same destination port as ``flow``, itself included."""
        now = max(self.now, flow.ts)
        if self._settle(now):
            return 1 + self._port.get(flow.resp_p, 0)
        return 1 + sum(1 for s in self.flows if s[TS] >= now - WINDOW_S and s[PORT] == flow.resp_p)

    def to_dict(self) -> dict[str, object]:
        """Plain JSON form (addresses stay on the hub: this is the hub's own state)."""
        return {
            "now": self.now if self.now != float("-inf") else None,
            "flows": [
                [
                    s[TS],
                    s[DST],
                    s[PORT],
                    int(s[FAILED]),
                    int(s[OTH]),
                    int(s[REMOTE]),
                    int(s[PAYLOAD]),
                ]
                for s in self.flows
            ],
            "dst_times": {k: list(v) for k, v in self.dst_times.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> BehaviourWindow:
        """Inverse of ``to_dict``."""
        w = cls()
        now = d.get("now")
        w.now = float("-inf") if now is None else float(str(now))
        for row in d.get("flows", []):  # type: ignore[attr-defined]
            ts, dst, port, failed, oth, remote, payload = row
            w.push(
                (float(ts), str(dst), int(port), bool(failed), bool(oth), bool(remote),
                 bool(payload))
            )  # fmt: skip
        for k, v in dict(d.get("dst_times", {})).items():  # type: ignore[call-overload]
            w.dst_times[str(k)] = deque((float(x) for x in v), maxlen=8)
        return w


def _bump(counts: dict[Any, int], key: Any, k: int) -> None:
    """Add ``k`` to ``counts[key]``, forgetting keys that reach zero (their number is a feature)."""
    n = counts.get(key, 0) + k
    if n:
        counts[key] = n
    else:
        del counts[key]


def _tally(
    flows: Sequence[_Seen],
) -> tuple[int, list[int], dict[str, int], dict[int, int], dict[int, dict[str, int]]]:
    """Count afresh over ``flows`` what a window keeps running counts of."""
    flags = [0, 0, 0, 0]
    dst: dict[str, int] = {}
    port: dict[int, int] = {}
    port_dst: dict[int, dict[str, int]] = {}
    for s in flows:
        flags[0] += s[FAILED]
        flags[1] += s[OTH]
        flags[2] += s[REMOTE]
        flags[3] += not s[PAYLOAD]
        _bump(dst, s[DST], 1)
        _bump(port, s[PORT], 1)
        _bump(port_dst.setdefault(s[PORT], {}), s[DST], 1)
    return len(flows), flags, dst, port, port_dst


def _summarise(flow: FlowRecord, peer: str) -> _Seen:
    """Keep of a flow to or from ``peer`` what a window counts."""
    state = flow.conn_state or ""
    payload = bool(flow.orig_bytes) or bool(flow.resp_bytes)
    failed = flow.proto == "tcp" and state in FAILED_TCP_STATES
    remote = address_scope(peer) == "remote"
    return (flow.ts, peer, flow.resp_p, failed, state == "OTH", remote, payload)


class SignatureHead:
    """Multinomial logistic regression over standardised behaviour features."""

    def __init__(self, weights: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> None:
        self.weights = weights  # (n_features + 1, n_families), last row = bias
        self.mean = mean
        self.scale = scale

    @property
    def trained(self) -> bool:
        """Whether the head looks at its features at all (an untrained one says benign always)."""
        return bool(np.any(self.weights[:-1]))

    @classmethod
    def untrained(cls) -> SignatureHead:
        """Build a head that always says benign (used when no labelled training data exists)."""
        k, f = len(FAMILIES), len(FEATURE_NAMES)
        w = np.zeros((f + 1, k))
        w[-1, 0] = 20.0
        return cls(w, np.zeros(f), np.ones(f))

    @classmethod
    def fit(
        cls,
        features: np.ndarray,
        families: Sequence[str],
        l2: float = 1e-2,
        steps: int = 400,
        lr: float = 0.5,
    ) -> SignatureHead:
        """Class-balanced, L2-regularised fit by full-batch gradient descent (deterministic)."""
        y = np.array([FAMILIES.index(f) for f in families])
        present = np.bincount(y, minlength=len(FAMILIES))
        if features.shape[0] == 0 or (present > 0).sum() < 2:
            return cls.untrained()
        mean = features.mean(axis=0)
        scale = features.std(axis=0) + 1e-3
        x = np.hstack([(features - mean) / scale, np.ones((features.shape[0], 1))])
        onehot = np.eye(len(FAMILIES))[y]
        sample_w = (1.0 / np.maximum(present, 1))[y]
        sample_w /= sample_w.sum()
        w = np.zeros((x.shape[1], len(FAMILIES)))
        absent = present == 0
        for _ in range(steps):
            logits = x @ w
            logits[:, absent] = -30.0
            p = _softmax(logits)
            grad = x.T @ ((p - onehot) * sample_w[:, None]) + l2 * w
            w -= lr * grad
        w[-1, absent] = -30.0
        return cls(w, mean, scale)

    def predict(self, feats: np.ndarray) -> np.ndarray:
        """Family probabilities for one feature vector (or a batch)."""
        x = (np.atleast_2d(feats) - self.mean) / self.scale
        p = _softmax(x @ self.weights[:-1] + self.weights[-1])
        return p[0] if feats.ndim == 1 else p

    def to_dict(self) -> dict[str, object]:
        """Plain JSON form."""
        return {
            "families": list(FAMILIES),
            "features": list(FEATURE_NAMES),
            "weights": self.weights.tolist(),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> SignatureHead:
        """Inverse of ``to_dict``."""
        if list(d["families"]) != list(FAMILIES):  # type: ignore[call-overload]
            raise ValueError("signature head was trained for other families")
        if "features" in d and list(d["features"]) != list(FEATURE_NAMES):  # type: ignore[call-overload]
            raise ValueError("signature head was trained on other features")
        head = cls(
            np.asarray(d["weights"], dtype=np.float64),
            np.asarray(d["mean"], dtype=np.float64),
            np.asarray(d["scale"], dtype=np.float64),
        )
        k, f = len(FAMILIES), len(FEATURE_NAMES)
        if head.weights.shape != (f + 1, k) or head.mean.shape != (f,) or head.scale.shape != (f,):
            raise ValueError("signature head of the wrong shape")
        if not (np.isfinite(head.weights).all() and np.isfinite(head.mean).all()):
            raise ValueError("signature head with non-finite values")
        if not (np.isfinite(head.scale).all() and (head.scale > 0).all()):
            raise ValueError("signature head with a scale that is not positive")
        return head


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return out
