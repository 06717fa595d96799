"""Time tokens and hour habits follow the home's time zone, DST included."""

from datetime import UTC, datetime
from functools import cache

import pytest

from giot_engine.detector import BigramModel, Detector, DetectorConfig
from giot_engine.records import DeviceEvent, FlowRecord
from giot_engine.tokenizer import TokenContext, Vocabulary, flow_tokens, time_token, utc_offset

BERLIN = "Europe/Berlin"


def _ts(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


WINTER = _ts(2026, 1, 9, 23, 30)  # Friday 23:30 UTC = Saturday 00:30 CET (UTC+1)
SUMMER = _ts(2026, 7, 10, 23, 30)  # Friday 23:30 UTC = Saturday 01:30 CEST (UTC+2)


@cache
def _bigram() -> BigramModel:
    return BigramModel.fit([], len(Vocabulary.default()))


def _flow(ts: float) -> FlowRecord:
    return FlowRecord(ts, "192.168.1.50", 40000, "203.0.113.5", 443, "tcp", conn_state="SF")


def test_offset_follows_dst() -> None:
    assert utc_offset(WINTER, BERLIN) == 3600
    assert utc_offset(SUMMER, BERLIN) == 7200
    # the night clocks go forward (2026-03-29, 01:00 UTC): the offset of each instant
    assert utc_offset(_ts(2026, 3, 29, 0, 30), BERLIN) == 3600
    assert utc_offset(_ts(2026, 3, 29, 1, 30), BERLIN) == 7200
    assert utc_offset(WINTER, None) == 0
    assert utc_offset(WINTER, None, 1800) == 1800


def test_a_flow_at_2330_utc_is_tokenised_at_berlin_local_time() -> None:
    for ts in (WINTER, SUMMER):
        assert time_token(ts, 0) == "h7/wd"  # Friday 23:30 in UTC
        utc = flow_tokens(_flow(ts), TokenContext())
        det = Detector(_bigram(), config=DetectorConfig(time_zone=BERLIN))
        local = det.process(_flow(ts))
        want = flow_tokens(_flow(ts), TokenContext(utc_offset_s=utc_offset(ts, BERLIN)))
        assert "h0/we" in want  # Saturday, between midnight and 3 am
        assert "h7/wd" in utc
        assert local.ids == det.vocab.encode(want)
        assert "h0/we" in det.vocab.decode(local.ids)


def test_hour_habits_count_local_hours_and_the_zone_can_change() -> None:
    det = Detector(_bigram())
    det.set_time_zone(BERLIN)
    event = DeviceEvent(SUMMER, "light.hall", "light", "on", "off", device_id="hall")
    det.process_event(event)
    det.process_event(DeviceEvent(WINTER, "light.hall", "light", "off", "on", device_id="hall"))
    hours = det.devices["hall"].hours
    assert hours[1] == 1.0  # 01:30 CEST
    assert hours[0] == 1.0  # 00:30 CET
    assert hours[23] == 0.0
    det.set_time_zone(None)
    assert det.local_offset(SUMMER) == 0


def test_unknown_time_zone_is_refused_and_kept() -> None:
    det = Detector(_bigram())
    det.set_time_zone(BERLIN)
    with pytest.raises(KeyError):
        det.set_time_zone("Mars/Olympus_Mons")
    assert det.config.time_zone == BERLIN
