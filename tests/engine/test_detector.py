"""Online detector on generated flows: alarms, families, warm-up, causality, persistence."""

import json

import numpy as np
import pytest

from giot_engine.detector import BigramModel, Detector, DetectorConfig, Verdict
from giot_engine.records import FlowRecord
from giot_engine.signature import SignatureHead
from giot_engine.tokenizer import BOS_ID, Vocabulary

DEV = "192.168.1.50"


def benign(n: int, t0: float = 1_700_000_000.0) -> list[FlowRecord]:
    out = []
    for i in range(n):
        ts = t0 + 30.0 * i
        if i % 2:
            out.append(
                FlowRecord(
                    ts,
                    DEV,
                    40000 + i,
                    "192.168.1.1",
                    53,
                    "udp",
                    f"d{i}",
                    "dns",
                    0.01,
                    40,
                    120,
                    "SF",
                    "Dd",
                    1,
                    1,
                )
            )
        else:
            out.append(
                FlowRecord(
                    ts,
                    DEV,
                    40000 + i,
                    "216.239.35.4",
                    123,
                    "udp",
                    f"n{i}",
                    None,
                    0.1,
                    48,
                    48,
                    "SF",
                    "Dd",
                    1,
                    1,
                )
            )
    return out


def scan(n: int, t0: float) -> list[FlowRecord]:
    return [
        FlowRecord(
            t0 + 0.2 * i,
            DEV,
            50000 + i,
            f"45.{i % 200}.{i // 200}.7",
            23,
            "tcp",
            f"s{i}",
            None,
            3.0,
            0,
            0,
            "S0",
            "S",
            3,
            0,
            label="Malicious",
            detailed_label="PartOfAHorizontalPortScan",
        )
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def trained() -> tuple[BigramModel, SignatureHead]:
    vocab = Vocabulary.default()
    view = Detector(BigramModel(np.zeros((1, 1))))
    seq: list[int] = [BOS_ID]
    feats, fams = [], []
    for f in benign(200):
        _, ids, x = view.observe(f)
        seq += ids
        feats.append(x)
        fams.append("benign")
    for f in scan(100, 1_700_000_000.0 + 30.0 * 200):
        _, _, x = view.observe(f)
        feats.append(x)
        fams.append("port_scan")
    model = BigramModel.fit([seq], len(vocab))
    return model, SignatureHead.fit(np.asarray(feats), fams)


def run(det: Detector, flows: list[FlowRecord]) -> list[Verdict]:
    return [det.process(f) for f in flows]


def test_scan_after_benign_alarms_with_family_and_words(trained: tuple) -> None:
    det = Detector(*trained)
    pre = benign(80)
    vs = run(det, pre + scan(40, pre[-1].ts + 5))
    assert not any(v.alarm for v in vs[:80])
    alarmed = [v for v in vs[80:] if v.alarm]
    assert len(alarmed) >= 30
    assert alarmed[-1].family == "port_scan"
    assert alarmed[-1].severity in ("medium", "high")
    expl = alarmed[-1].explanation
    assert expl is not None
    assert "port 23/tcp" in expl.text
    assert "internet hosts" in expl.text
    assert "S0" in expl.text
    assert len(expl.tokens) == 7
    assert max(v.score for v in vs[80:]) > max(v.score for v in vs[:80])


def test_warmup_blocks_early_alarms(trained: tuple) -> None:
    det = Detector(*trained, config=DetectorConfig(warmup=20))
    vs = run(det, scan(40, 1_700_000_000.0))
    assert not any(v.alarm for v in vs[:20])
    assert any(v.alarm for v in vs[20:])


def test_causal_prefix_verdicts_do_not_change(trained: tuple) -> None:
    flows = benign(60) + scan(20, 1_700_000_000.0 + 30 * 60)
    a = run(Detector(*trained), flows[:50])
    b = run(Detector(*trained), flows)
    assert [(v.score, v.alarm) for v in a] == [(v.score, v.alarm) for v in b[:50]]


def test_state_round_trip_gives_identical_verdicts(trained: tuple) -> None:
    flows = benign(60) + scan(20, 1_700_000_000.0 + 30 * 60)
    det = Detector(*trained)
    run(det, flows[:50])
    state = json.loads(json.dumps(det.state_dict()))
    restored = Detector(*trained)
    restored.load_state_dict(state)
    a = run(det, flows[50:])
    b = run(restored, flows[50:])
    assert [(v.score, v.alarm, v.family) for v in a] == [(v.score, v.alarm, v.family) for v in b]
    head = SignatureHead.from_dict(json.loads(json.dumps(trained[1].to_dict())))
    assert np.allclose(head.weights, trained[1].weights)


def test_hysteresis_needs_two_hot_records_to_switch_on(trained: tuple) -> None:
    cfg = DetectorConfig(k_on=2, high_score=1e9)
    pre = benign(60)
    t = pre[-1].ts + 30
    odd = [
        FlowRecord(
            t + 600 * k,
            DEV,
            1,
            "203.0.113.9",
            6667,
            "tcp",
            f"o{k}",
            None,
            1.0,
            10,
            10,
            "REJ",
            "Sr",
            1,
            1,
        )
        for k in range(1)
    ]
    det = Detector(*trained, config=cfg)
    vs = run(det, [*pre, *odd])
    assert vs[-1].surprise > 0
    assert not vs[-1].alarm
    det2 = Detector(*trained, config=cfg)
    burst = [
        FlowRecord(
            t + i,
            DEV,
            1,
            f"203.0.113.{i}",
            6667,
            "tcp",
            f"b{i}",
            None,
            1.0,
            10,
            10,
            "REJ",
            "Sr",
            1,
            1,
        )
        for i in range(2)
    ]
    vs2 = run(det2, [*pre, *burst])
    assert not vs2[-2].alarm
    assert vs2[-1].alarm


def test_no_warmup_alarms_from_the_first_records(trained: tuple) -> None:
    cfg = DetectorConfig(warmup=0, signature_in_warmup=True)
    vs = run(Detector(*trained, config=cfg), scan(10, 1_700_000_000.0))
    assert any(v.alarm for v in vs[:5])


def test_events_score_per_device_and_novelty_scores_higher() -> None:
    from giot_engine.records import DeviceEvent

    vocab = Vocabulary.default()
    det = Detector(BigramModel(np.zeros((len(vocab), len(vocab)))))
    evs = [
        DeviceEvent(
            1e9 + 600 * i,
            "light.k",
            "light",
            "on" if i % 2 else "off",
            "off" if i % 2 else "on",
            source="user",
            device_id="lamp",
        )
        for i in range(40)
    ]
    vs = [det.process_event(e) for e in evs]
    odd = DeviceEvent(
        1e9 + 600 * 40, "light.k", "light", "unavailable", "on", source="device", device_id="lamp"
    )
    v = det.process_event(odd)
    assert list(det.devices) == ["lamp"]
    assert v.score > max(x.score for x in vs[20:])


def test_alarm_onset_says_what_the_model_expected_instead(trained: tuple) -> None:
    """The record that switches a device on contrasts what came with what the model expected."""
    det = Detector(*trained)
    pre = benign(80)
    vs = run(det, pre + scan(40, pre[-1].ts + 5))
    alarmed = [v for v in vs if v.alarm]
    onset = alarmed[0].explanation
    assert onset is not None
    kinds = [kind for kind, _ in onset.expected]
    assert len(kinds) == 3
    assert kinds[0] in ("udp/dns", "udp/ntp")  # the device's routine, not telnet
    assert sum(p for _, p in onset.expected) <= 1.0
    assert "the model expected " + kinds[0].split("/")[1] + " over udp" in onset.text
    later = alarmed[-1].explanation
    assert later is not None
    assert later.expected == []  # only the onset pays for the extra forward passes
