"""Absence and habits of device events: silence, stuck states, bursts, impossible hours."""

import json

import numpy as np

from giot_engine.detector import BigramModel, Detector, DetectorConfig
from giot_engine.records import DeviceEvent
from giot_engine.tokenizer import Vocabulary

T0 = 1_700_000_000.0 - 1_700_000_000.0 % 86400  # midnight UTC


def detector(**kw: float) -> Detector:
    """A detector that judges absence from the first hour on (the default waits for a day)."""
    vocab = Vocabulary.default()
    model = BigramModel(np.zeros((len(vocab), len(vocab))))
    cfg = DetectorConfig(**{"absence_min_span_s": 0.0, **kw})  # type: ignore[arg-type]
    return Detector(model, config=cfg, vocab=vocab)


def ev(ts: float, new: str, old: str | None, entity: str = "binary_sensor.door") -> DeviceEvent:
    return DeviceEvent(ts, entity, "binary_sensor", new, old, "door", source="device")


def routine(n: int, on_s: float = 10.0, period: float = 60.0) -> list[DeviceEvent]:
    """A door that opens for ``on_s`` every ``period`` seconds."""
    out = []
    for i in range(n):
        out += [ev(T0 + period * i, "on", "off"), ev(T0 + period * i + on_s, "off", "on")]
    return out


def test_silence_against_own_longest_gap() -> None:
    det = detector(silence_min_s=60.0)
    stream = routine(60)  # gaps of 10 s and 50 s
    for e in stream:
        det.process_event(e)
    last = stream[-1].ts
    assert det.tick(last + 70.0) == []  # within 1.5 x the longest gap
    out = det.tick(last + 80.0)
    assert [(d, v.family, v.alarm) for d, v in out] == [("binary_sensor.door", "silent", True)]
    assert "without a report" in (out[0][1].explanation.text if out[0][1].explanation else "")
    det.process_event(ev(last + 90.0, "on", "off"))  # the device is back: alarm clears
    assert det.devices["binary_sensor.door"].absent is None
    assert det.tick(last + 91.0) == []


def test_absence_waits_for_a_day_of_history() -> None:
    """A sensor busy all evening and quiet all night is not silent on its first night."""
    det = detector(silence_min_s=60.0, absence_min_span_s=86_400.0)
    stream = routine(60)  # one hour of history
    for e in stream:
        det.process_event(e)
    last = stream[-1].ts
    assert det.tick(last + 3600.0) == []
    later = [ev(T0 + 86_400.0 + 60.0 * i, "on" if i % 2 == 0 else "off", None) for i in range(4)]
    for e in later:  # a day after the first record: now its rhythm counts
        det.process_event(e)
    out = det.tick(later[-1].ts + 1.5 * 86_400.0 - 3 * 60.0 + 1.0)
    assert [v.family for _, v in out] == ["silent"]


def test_silence_needs_enough_gaps() -> None:
    det = detector()
    for e in routine(10):
        det.process_event(e)
    assert det.tick(T0 + 10 * 86400.0) == []


def test_stuck_state_fires_before_silence() -> None:
    det = detector()
    stream = routine(30)
    for e in stream:
        det.process_event(e)
    t = stream[-1].ts + 50.0
    det.process_event(ev(t, "on", "off"))
    assert det.tick(t + 299.0) == []  # stays in "on" were 10 s; stuck_min_s is 300 s
    out = det.tick(t + 301.0)
    assert [v.family for _, v in out] == ["stuck"]
    det.process_event(ev(t + 400.0, "off", "on"))
    assert det.tick(t + 401.0) == []


def test_numeric_value_unchanged_is_stuck() -> None:
    det = detector()
    t = T0
    for i in range(40):  # a temperature that changes every 5 minutes
        t = T0 + 300.0 * i
        det.process_event(
            DeviceEvent(t, "sensor.temp", "sensor", f"{20 + i % 3}", f"{20 + (i - 1) % 3}",
                        "temperature", 0.05)
        )  # fmt: skip
    for k in range(1, 12):  # then keeps reporting the same value every 5 minutes
        det.process_event(
            DeviceEvent(t + 300.0 * k, "sensor.temp", "sensor", "22", "22", "temperature", 0.0)
        )
    assert [v.family for _, v in det.tick(t + 300.0 * 12)] == ["stuck"]


def test_burst_of_toggles_alarms_and_is_not_learnt() -> None:
    det = detector()
    stream = routine(100, period=300.0)
    for e in stream:
        assert not det.process_event(e).alarm
    t = stream[-1].ts + 600.0
    verdicts = [
        det.process_event(ev(t + 3.0 * i, "on" if i % 2 == 0 else "off", None)) for i in range(40)
    ]
    assert any(v.alarm for v in verdicts)
    assert det.devices["binary_sensor.door"].busiest <= 4  # the burst did not raise its limit
    texts = [v.explanation.text for v in verdicts if v.alarm and v.explanation is not None]
    assert any("changes in a minute" in t for t in texts)


def test_impossible_hour_alarms_alone() -> None:
    det = detector()
    for day in range(10):  # active 08:00-10:00 every day
        for k in range(8):
            t = T0 + day * 86400.0 + 8 * 3600.0 + 900.0 * k
            det.process_event(ev(t, "on", "off"))
            det.process_event(ev(t + 20.0, "off", "on"))
    night = T0 + 10 * 86400.0 + 3 * 3600.0
    v = det.process_event(ev(night, "on", "off"))
    assert v.alarm
    assert v.explanation is not None
    assert "03h" in v.explanation.text
    ok = det.process_event(ev(T0 + 10 * 86400.0 + 9 * 3600.0, "on", "off"))
    assert "never" not in (ok.explanation.text if ok.explanation else "")


def test_absence_state_round_trips_and_old_state_loads() -> None:
    det = detector()
    for e in routine(60):
        det.process_event(e)
    state = json.loads(json.dumps(det.state_dict()))
    again = detector()
    again.load_state_dict(state)
    now = routine(60)[-1].ts + 5000.0
    assert [(d, v.family) for d, v in det.tick(now)] == [(d, v.family) for d, v in again.tick(now)]
    for d in state["devices"].values():  # a state saved before absence existed still loads
        for k in ("last_ts", "gaps", "max_gap", "state", "state_since", "stays", "hours"):
            d.pop(k)
    old = detector()
    old.load_state_dict(state)
    assert old.tick(now) == []
