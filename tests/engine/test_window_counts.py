"""The behaviour window's running counts give the features a scan of the last minute gives."""

import math
import random
from collections import Counter, deque

import numpy as np
import pytest

from giot_engine.records import FlowRecord
from giot_engine.signature import (
    DST,
    FAILED,
    MAX_WINDOW_FLOWS,
    OTH,
    PAYLOAD,
    PORT,
    REMOTE,
    TS,
    WINDOW_S,
    BehaviourWindow,
    MinuteCounts,
    _summarise,
)

PEERS = ["192.168.1.1", "8.8.8.8", "52.1.2.3", "224.0.0.251", "10.0.0.9"]
PORTS = [53, 443, 80, 23, 5353]
STATES = ["SF", "S0", "REJ", "OTH", "RSTO", None]


def _flow(rng: random.Random, ts: float) -> tuple[FlowRecord, str]:
    peer = rng.choice(PEERS)
    flow = FlowRecord(
        ts, "192.168.1.50", 40000, peer, rng.choice(PORTS), rng.choice(["tcp", "udp"]), "u",
        None, 0.1, rng.choice([0, 40, None]), rng.choice([0, 120]), rng.choice(STATES), None,
        1, 1,
    )  # fmt: skip
    return flow, peer


def _scan_features(window: BehaviourWindow, flow: FlowRecord, peer: str) -> list[float]:
    """The definition: the features from the flows of the minute before, counted by hand."""
    now = max(window.now, flow.ts)
    recent = [s for s in window.flows if s[TS] >= now - WINDOW_S]
    cur = _summarise(flow, peer)
    recent.append(cur)
    n = len(recent)
    return [
        math.log1p(n),
        math.log1p(len({s[DST] for s in recent})),
        math.log1p(len({s[PORT] for s in recent})),
        sum(s[FAILED] for s in recent) / n,
        sum(s[OTH] for s in recent) / n,
        sum(s[REMOTE] for s in recent) / n,
        sum(not s[PAYLOAD] for s in recent) / n,
        float(cur[FAILED]),
        float(cur[OTH]),
        float(cur[REMOTE]),
        math.log1p(sum(s[DST] == peer for s in recent)),
        math.log1p(len({s[DST] for s in recent if s[PORT] == cur[PORT]})),
    ]


@pytest.mark.parametrize("seed", range(4))
def test_running_counts_equal_a_scan(seed: int) -> None:
    """Busy bursts (over the bound), quiet spells, and late records with earlier start times."""
    rng = random.Random(seed)
    window = BehaviourWindow()
    ts = 1_700_000_000.0
    for i in range(3000):
        ts += rng.choice([0.05, 0.2, 1.0, 5.0, 30.0, 90.0])
        start = ts - rng.choice([0.0, 0.0, 0.0, 45.0, 200.0]) if i % 7 == 0 else ts  # late logs
        flow, peer = _flow(rng, start)
        want = _scan_features(window, flow, peer)
        got = window.features(flow, peer)
        np.testing.assert_allclose(got[:12], want, rtol=1e-12)
        now = max(window.now, flow.ts)
        recent = [s for s in window.flows if s[TS] >= now - WINDOW_S]
        assert window.recent(flow.ts) == len(recent)
        assert window.count_like(flow) == 1 + sum(s[PORT] == flow.resp_p for s in recent)
        window.add(flow, peer)
        assert len(window.flows) <= MAX_WINDOW_FLOWS
    again = BehaviourWindow.from_dict(window.to_dict())  # the counts are rebuilt on load
    flow, peer = _flow(rng, ts + 1.0)
    np.testing.assert_allclose(again.features(flow, peer), window.features(flow, peer))


@pytest.mark.parametrize("seed", range(2))
def test_minute_counts_unbounded_for_naming(seed: int) -> None:
    """The hub's naming counts (no bound, cut at each flow's minute) equal a plain count."""
    rng = random.Random(seed)
    counts = MinuteCounts(bound=None)
    held: deque[tuple[float, str, int]] = deque()
    ts = 1_700_000_000.0
    for i in range(2000):
        ts += rng.choice([0.01, 0.05, 1.0, 30.0, 90.0])
        flow, _ = _flow(rng, ts - (45.0 if i % 9 == 0 else 0.0))
        while held and held[0][0] < flow.ts - WINDOW_S:
            held.popleft()
        held.append((flow.ts, flow.resp_h, flow.resp_p))
        counts.drop_before(flow.ts - WINDOW_S)
        counts.push_flow(flow, flow.resp_h)
        assert len(counts.flows) == len(held) > 0
        assert counts.ports == len({port for _, _, port in held})
        assert counts.to(flow.resp_h) == Counter(peer for _, peer, _ in held)[flow.resp_h]
