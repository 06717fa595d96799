"""Home Assistant's time zone reaches the detector, in its own process, and follows changes."""

import os
import signal
from datetime import UTC, datetime

from freezegun.api import FrozenDateTimeFactory
from homeassistant.core import HomeAssistant

from custom_components.giot.coordinator import GIoTCoordinator
from giot_engine.detector_process import ProcessDetector

from .conftest import CAMERA_ENTITY
from .test_detector_process import _wait_until

BERLIN = "Europe/Berlin"


async def test_time_zone_reaches_the_detector_and_follows_changes(
    hass: HomeAssistant, coordinator: GIoTCoordinator, freezer: FrozenDateTimeFactory
) -> None:
    """Set at start, changed while running (core config update), kept by a restarted child."""
    detector = coordinator.detector
    assert isinstance(detector, ProcessDetector)  # the child process, not a stand-in
    assert await hass.async_add_executor_job(detector.time_zone) == hass.config.time_zone
    assert hass.config.time_zone != BERLIN

    await hass.config.async_update(time_zone=BERLIN)
    await hass.async_block_till_done()
    assert await hass.async_add_executor_job(detector.time_zone) == BERLIN

    # A state change at 23:30 UTC on a summer Friday is 01:30 on Saturday in Berlin (CEST):
    # the detector learns the camera's hours in local time.
    freezer.move_to(datetime(2026, 7, 10, 23, 30, tzinfo=UTC))
    hass.states.async_set(CAMERA_ENTITY, "on")
    await hass.async_block_till_done()
    state = await hass.async_add_executor_job(detector.state)
    hours = [device["hours"] for device in state["engine"]["devices"].values()]
    assert [h.index(1.0) for h in hours if sum(h) == 1.0] == [1]

    # A new child (the old one died) is told the time zone before it scores.
    pid = detector.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    await hass.async_add_executor_job(_wait_until, lambda: detector.pid is None)
    assert await hass.async_add_executor_job(detector.time_zone) == BERLIN
    assert detector.pid not in {None, pid}
