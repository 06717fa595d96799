"""What a device normally does, as facts for short sentences and as a MUD-like profile.

Two sources are combined: counts of what the device was seen doing (destinations by scope, ports,
pace, volumes, active hours) and what the model expects it to do next (the most likely first token
of its next flow given its recent context). The facts are computed here and worded by ``wording``
from templates, so the same behaviour always reads the same way; no text is invented by a model.
The profile follows the shape of RFC 8520 (MUD) access lists, with scopes instead of addresses,
plus timing, volume and hours that MUD does not carry (under a ``giot:`` prefix).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from . import wording
from .context import TokenScorer
from .records import FlowRecord
from .tokenizer import (
    BOS_ID,
    PORT_CLASSES,
    PROTOS,
    Vocabulary,
    address_scope,
    device_of,
)

_PROTO_NUMBERS = {"tcp": 6, "udp": 17, "icmp": 1}


@dataclass(slots=True)
class Behaviour:
    """Counts of a device's outbound behaviour (learnt from its flows, never its addresses)."""

    flows: int = 0
    services: Counter[tuple[str, int, str]] = field(default_factory=Counter)  # proto, port, scope
    hours: Counter[int] = field(default_factory=Counter)
    gaps: list[float] = field(default_factory=list)
    bytes_per_flow: list[int] = field(default_factory=list)

    def add(self, flow: FlowRecord, prev_ts: float | None, utc_offset_s: int = 0) -> None:
        """Count one flow of the device."""
        self.flows += 1
        self.services[(flow.proto, flow.resp_p, address_scope(flow.resp_h))] += 1
        self.hours[time.gmtime(flow.ts + utc_offset_s).tm_hour] += 1
        if prev_ts is not None:
            self.gaps.append(max(0.0, flow.ts - prev_ts))
        self.bytes_per_flow.append((flow.orig_bytes or 0) + (flow.resp_bytes or 0))


def learn_behaviours(flows: Iterable[FlowRecord], utc_offset_s: int = 0) -> dict[str, Behaviour]:
    """Per-device behaviour counts from a flow stream."""
    out: dict[str, Behaviour] = {}
    prev: dict[str, float] = {}
    for f in flows:
        dev = device_of(f)
        if dev != f.orig_h:
            continue  # profiles describe what the device initiates
        out.setdefault(dev, Behaviour()).add(f, prev.get(dev), utc_offset_s)
        prev[dev] = max(prev.get(dev, f.ts), f.ts)
    return out


def mud_profile(name: str, b: Behaviour, min_share: float = 0.01) -> dict[str, object]:
    """Build an RFC 8520-shaped profile: one accept entry per (protocol, port, scope) seen often."""
    aces: list[dict[str, object]] = []
    for (proto, port, scope), n in sorted(b.services.items(), key=lambda kv: (-kv[1], kv[0])):
        if n / max(b.flows, 1) < min_share:
            continue
        matches: dict[str, object] = {"giot:scope": scope}
        if proto in _PROTO_NUMBERS:
            matches["ipv4"] = {"protocol": _PROTO_NUMBERS[proto]}
        if proto in ("tcp", "udp"):
            matches[proto] = {"destination-port": {"operator": "eq", "port": port}}
        aces.append({
            "name": f"{proto}-{port}-{scope}",
            "matches": matches,
            "actions": {"forwarding": "accept"},
            "giot:share": round(n / b.flows, 4),
        })  # fmt: skip
    gaps = np.asarray(b.gaps) if b.gaps else np.zeros(1)
    vol = np.asarray(b.bytes_per_flow) if b.bytes_per_flow else np.zeros(1)
    return {
        "ietf-mud:mud": {
            "mud-version": 1,
            "systeminfo": f"GIoT learnt profile of {name}",
            "from-device-policy": {"access-lists": {"access-list": [{"name": "from-device"}]}},
        },
        "ietf-access-control-list:acls": {"acl": [{"name": "from-device", "aces": {"ace": aces}}]},
        "giot:timing": {
            "median-gap-s": round(float(np.median(gaps)), 3),
            "regularity": round(_regularity(gaps), 3),
        },
        "giot:volume": {
            "median-bytes-per-flow": int(np.median(vol)),
            "p95-bytes-per-flow": int(np.quantile(vol, 0.95)),
        },
        "giot:active-hours": sorted(h for h, n in b.hours.items() if n >= 0.02 * b.flows),
    }


def _regularity(gaps: np.ndarray) -> float:
    """1 for a metronome, towards 0 for bursty traffic (inverse coefficient of variation)."""
    mean = float(gaps.mean())
    return 1.0 / (1.0 + float(gaps.std()) / mean) if mean > 0 else 0.0


def describe(b: Behaviour, top: int = 3) -> list[str]:
    """Short sentences about a device's usual behaviour, from templates (deterministic)."""
    if b.flows == 0:
        return wording.behaviour_sentences(
            0, [], typical_gap=None, regular=False, typical_volume=0, active_hours=[]
        )
    services = sorted(b.services.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    gap, regular = None, False
    if b.gaps:
        gaps = np.asarray(b.gaps)
        gap, regular = float(np.median(gaps)), _regularity(gaps) > 0.5
    vol = int(np.median(np.asarray(b.bytes_per_flow)))
    hours = sorted(h for h, n in b.hours.items() if n >= 0.02 * b.flows)
    return wording.behaviour_sentences(
        b.flows,
        services,
        typical_gap=gap,
        regular=regular,
        typical_volume=vol,
        active_hours=hours,
    )


def expected_next(
    model: TokenScorer, vocab: Vocabulary, context: Sequence[int], top: int = 3
) -> list[tuple[str, float]]:
    """Rank the kinds of next flow (protocol/port tokens) the model expects after a context."""
    cands = [f"{p}/{c}" for p in PROTOS for c in PORT_CLASSES if f"{p}/{c}" in vocab.index]
    ids = np.asarray([[BOS_ID, *context, vocab.index[c]] for c in cands], dtype=np.int64)
    nll = np.asarray(model.token_nll(ids))[:, -1]
    p = np.exp(-nll)
    p = p / p.sum()
    order = np.argsort(-p, kind="stable")[:top]
    return [(cands[i], round(float(p[i]), 4)) for i in order]


describe_expected = wording.expected_flows  # the sentence is worded in ``wording``
