"""Records Zeek logs late (long connections ending, or flushed at shutdown) are not a burst."""

import numpy as np

from giot_engine.detector import BigramModel, Detector, DetectorConfig
from giot_engine.records import FlowRecord
from giot_engine.tokenizer import Vocabulary

DEV = "192.168.1.60"


def flow(ts: float, port: int = 53, state: str = "SF", dur: float = 0.01) -> FlowRecord:
    return FlowRecord(ts, DEV, 40000, "192.168.1.1" if port == 53 else "52.1.2.3", port,
                      "udp" if port == 53 else "tcp", f"u{ts}", None, dur, 40, 90, state, "Dd",
                      1, 1)  # fmt: skip


def run(fresh_only: bool) -> list[bool]:
    vocab = Vocabulary.default()
    cfg = DetectorConfig(warmup=5, k_on=3, fresh_only=fresh_only)
    det = Detector(BigramModel(np.zeros((len(vocab), len(vocab)))), config=cfg, vocab=vocab)
    t0 = 1_700_000_000.0
    for i in range(200):
        assert not det.process(flow(t0 + 30.0 * i)).alarm
    now = t0 + 30.0 * 200
    # three long-lived connections, started hours ago, written out at once at shutdown
    late = [flow(t0 + 60.0 + k, 443 + k, "OTH", now - t0) for k in range(3)]
    return [det.process(f).alarm for f in late]


def test_late_records_do_not_switch_a_device_on() -> None:
    assert any(run(fresh_only=False))  # the old behaviour: alarms at shutdown
    assert not any(run(fresh_only=True))
