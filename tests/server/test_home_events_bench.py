"""Injection and scoring code of the home-events benchmark, on small synthetic streams."""

import itertools

import numpy as np

from benchmarks.home_events import (
    LABEL,
    Injection,
    detected,
    inject,
    onsets,
    profiles,
    replay,
)
from giot_engine.detector import BigramModel, Detector
from giot_engine.records import DeviceEvent
from giot_engine.tokenizer import Vocabulary

T0 = 1_700_000_000.0 - 1_700_000_000.0 % 86400


def home(days: int) -> list[DeviceEvent]:
    """Two doors used 08:00-20:00, each opening for 20 s every 30 min."""
    out = []
    for d in range(days):
        for k in range(24):
            t = T0 + d * 86400.0 + 8 * 3600.0 + 1800.0 * k
            for j, ent in enumerate(("binary_sensor.front", "binary_sensor.back")):
                s = t + 60.0 * j
                out.append(DeviceEvent(s, ent, "binary_sensor", "on", "off", "door"))
                out.append(DeviceEvent(s + 20.0, ent, "binary_sensor", "off", "on", "door"))
    return sorted(out, key=lambda e: e.ts)


def split() -> tuple[list[DeviceEvent], list[DeviceEvent]]:
    events = home(8)
    cut = T0 + 3 * 86400.0
    return [e for e in events if e.ts < cut], [e for e in events if e.ts >= cut]


def test_injection_is_reproducible_and_marks_events() -> None:
    train, test = split()
    prof = profiles(train)
    a = inject(test, prof, "toggle", n=3, seed=1)
    b = inject(test, prof, "toggle", n=3, seed=1)
    c = inject(test, prof, "toggle", n=3, seed=2)
    assert a == b
    assert a[1] != c[1]
    stream, injs = a
    assert len(injs) == 3
    assert len(stream) == len(test) + 40 * 3
    assert sum(e.label == LABEL for e in stream) == 120
    assert all(x.ts <= y.ts for x, y in itertools.pairwise(stream))


def test_hour_injection_uses_hours_the_device_never_had() -> None:
    train, test = split()
    stream, injs = inject(test, profiles(train), "hour", n=4, seed=0)
    assert len(injs) == 4
    for j in injs:
        assert not 8 <= (j.start % 86400) // 3600 <= 19
    assert sum(e.label == LABEL for e in stream) == 8


def test_silent_removes_the_device_for_longer_than_its_longest_gap() -> None:
    train, test = split()
    prof = profiles(train)
    stream, injs = inject(test, prof, "silent", n=1, seed=0)
    (j,) = injs
    assert j.end - j.start >= 3 * prof[j.device].max_gap
    assert not [e for e in stream if e.entity_id == j.device and j.start <= e.ts <= j.end]
    assert len(stream) < len(test)


def test_stuck_keeps_a_state_then_releases_it() -> None:
    train, test = split()
    stream, injs = inject(test, profiles(train), "stuck", n=1, seed=0)
    (j,) = injs
    during = [e for e in stream if e.entity_id == j.device and j.start <= e.ts <= j.end]
    assert [e.new_state for e in during] == ["on", "off"]
    assert during[-1].label == LABEL


def test_onsets_and_detection() -> None:
    alarms = [
        ("a", 0.0, "event"),
        ("a", 30.0, "event"),
        ("a", 1000.0, "event"),
        ("b", 5.0, "absence"),
    ]
    assert onsets(alarms) == {"event": 2, "absence": 1}
    assert detected(Injection("toggle", "a", 900.0, 950.0), alarms, horizon=60.0)
    assert not detected(Injection("toggle", "b", 900.0, 950.0), alarms, horizon=60.0)


def test_replay_finds_an_injected_silence() -> None:
    train, test = split()
    vocab = Vocabulary.default()
    det = Detector(BigramModel(np.zeros((len(vocab), len(vocab)))), vocab=vocab)
    replay(det, train, 300.0)
    stream, injs = inject(test, profiles(train), "silent", n=1, seed=0)
    rep = replay(det, stream, 300.0)
    assert detected(injs[0], rep.alarms, horizon=300.0)
