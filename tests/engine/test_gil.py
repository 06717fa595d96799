"""Long executor work hands the GIL over on a clock, not on every call."""

from unittest.mock import patch

from giot_engine import gil


def test_yields_once_the_interval_has_passed() -> None:
    """Every call yields at interval 0; none do at an infinite interval (the child's setting)."""
    with patch.object(gil.time, "sleep") as sleep:
        eager, never = gil.GilYielder(0.0), gil.GilYielder(float("inf"))
        for _ in range(5):
            eager.maybe_yield()
            never.maybe_yield()
    assert sleep.call_count == 5
    assert {call.args for call in sleep.call_args_list} == {(gil.SLEEP_S,)}


def test_does_not_yield_within_the_interval() -> None:
    """A tight loop under the interval keeps the GIL: yielding costs throughput."""
    with patch.object(gil.time, "sleep") as sleep:
        yielder = gil.GilYielder(3600.0)
        for _ in range(1000):
            yielder.maybe_yield()
    sleep.assert_not_called()
