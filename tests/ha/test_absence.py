"""Absence in a real Home Assistant: a device that goes silent or gets stuck alarms on a clock."""

import time
from datetime import timedelta

import pytest
from freezegun.api import FrozenDateTimeFactory
from homeassistant.const import STATE_OFF, STATE_ON
from homeassistant.core import HomeAssistant
from pytest_homeassistant_custom_component.common import MockConfigEntry, async_fire_time_changed

from custom_components.giot.const import DOMAIN
from custom_components.giot.coordinator import GIoTCoordinator

from .conftest import CAMERA_ENTITY, CAMERA_IP, normal_flows

ANOMALY = "binary_sensor.camera_anomaly"
ALERT = "event.camera_alert"


async def _advance(hass: HomeAssistant, freezer: FrozenDateTimeFactory, delta: timedelta) -> None:
    freezer.tick(delta)
    async_fire_time_changed(hass)
    await hass.async_block_till_done(wait_background_tasks=True)


DAY_OF_UPLOADS = 24 * 120 + 1  # one every 30 s: absence is judged after a day of history


async def _routine_until_now(hass: HomeAssistant, coordinator: GIoTCoordinator) -> None:
    """A day of uploads 30 s apart, the last one now: silence can be judged from here on."""
    coordinator.ingest.async_add_flows(
        normal_flows(time.time() - (DAY_OF_UPLOADS - 1) * 30.0, DAY_OF_UPLOADS)
    )
    await hass.async_block_till_done(wait_background_tasks=True)


async def test_silent_device_alarms_once_and_clears_with_its_next_record(
    hass: HomeAssistant, coordinator: GIoTCoordinator, freezer: FrozenDateTimeFactory
) -> None:
    """Quiet for far longer than its longest gap: anomaly on, one device_silent event."""
    await _routine_until_now(hass, coordinator)
    await _advance(hass, freezer, timedelta(minutes=5))
    assert hass.states.get(ANOMALY).state == STATE_OFF  # 5 min: not yet (at least 10 min)

    await _advance(hass, freezer, timedelta(minutes=6))
    anomaly = hass.states.get(ANOMALY)
    assert anomaly.state == STATE_ON
    assert anomaly.attributes["alert_type"] == "device_silent"
    assert anomaly.attributes["severity"] == "medium"
    assert anomaly.attributes["explanation"].startswith("silent: 11 min without a report")
    alert = hass.states.get(ALERT)
    assert alert.attributes["event_type"] == "device_silent"
    assert alert.attributes["score"] > 0
    fired = alert.state

    await _advance(hass, freezer, timedelta(minutes=1))
    assert hass.states.get(ANOMALY).state == STATE_ON
    assert hass.states.get(ALERT).state == fired  # still silent: no second event

    coordinator.ingest.async_add_flows(normal_flows(time.time(), 1))
    await hass.async_block_till_done()
    assert hass.states.get(ANOMALY).state == STATE_OFF
    await _advance(hass, freezer, timedelta(minutes=1))
    assert hass.states.get(ANOMALY).state == STATE_OFF


async def test_young_device_is_never_silent(
    hass: HomeAssistant, coordinator: GIoTCoordinator, freezer: FrozenDateTimeFactory
) -> None:
    """Ten records (or hours of them) say nothing about a device's rhythm: no alarm."""
    coordinator.ingest.async_add_flows(normal_flows(time.time() - 9 * 30.0, 10))
    await hass.async_block_till_done()
    await _advance(hass, freezer, timedelta(hours=3))
    assert hass.states.get(ANOMALY).state == STATE_OFF
    assert hass.states.get(ALERT).state == "unknown"
    assert coordinator.devices[next(iter(coordinator.devices))].absence is None


async def test_stuck_state_alarms_until_the_state_changes(
    hass: HomeAssistant, coordinator: GIoTCoordinator, freezer: FrozenDateTimeFactory
) -> None:
    """A motion sensor that toggles every minute and then stays on for long is stuck."""
    for state in ("on", "off"):  # a day earlier: absence needs a day of history
        hass.states.async_set(CAMERA_ENTITY, state)
        await hass.async_block_till_done()
    await _advance(hass, freezer, timedelta(hours=24))
    for i in range(24):
        hass.states.async_set(CAMERA_ENTITY, "on" if i % 2 == 0 else "off")
        await hass.async_block_till_done()
        await _advance(hass, freezer, timedelta(minutes=1))
    hass.states.async_set(CAMERA_ENTITY, "on")
    await hass.async_block_till_done()
    await _advance(hass, freezer, timedelta(minutes=4))
    assert hass.states.get(ANOMALY).state == STATE_OFF  # 5 min: not yet

    await _advance(hass, freezer, timedelta(minutes=2))
    anomaly = hass.states.get(ANOMALY)
    assert anomaly.state == STATE_ON
    assert anomaly.attributes["alert_type"] == "stuck_state"
    assert anomaly.attributes["explanation"].startswith("stuck: 6 min in state on")
    assert hass.states.get(ALERT).attributes["event_type"] == "stuck_state"

    hass.states.async_set(CAMERA_ENTITY, "off")
    await hass.async_block_till_done()
    assert hass.states.get(ANOMALY).state == STATE_OFF
    await _advance(hass, freezer, timedelta(minutes=1))
    assert hass.states.get(ANOMALY).state == STATE_OFF


async def test_snooze_and_mark_normal_quiet_absence(
    hass: HomeAssistant, coordinator: GIoTCoordinator, freezer: FrozenDateTimeFactory
) -> None:
    """A snoozed silent device fires nothing; marked normal, it must stay away far longer."""
    await _routine_until_now(hass, coordinator)
    await hass.services.async_call(
        DOMAIN, "snooze", {"entity_id": ANOMALY, "duration": {"minutes": 15}}, blocking=True
    )
    await _advance(hass, freezer, timedelta(minutes=11))
    assert hass.states.get(ANOMALY).state == STATE_OFF
    assert hass.states.get(ALERT).state == "unknown"

    await _advance(hass, freezer, timedelta(minutes=5))  # snooze over, still silent
    assert hass.states.get(ANOMALY).state == STATE_ON
    assert hass.states.get(ALERT).attributes["event_type"] == "device_silent"

    await hass.services.async_call(DOMAIN, "mark_normal", {"entity_id": ANOMALY}, blocking=True)
    assert hass.states.get(ANOMALY).state == STATE_OFF
    # Absence scored log(quiet / limit) + 6 nats; feedback takes 8 off: silent again only
    # after more than e**2 times the 10-minute limit.
    await _advance(hass, freezer, timedelta(minutes=30))
    assert hass.states.get(ANOMALY).state == STATE_OFF
    await _advance(hass, freezer, timedelta(minutes=50))
    assert hass.states.get(ANOMALY).state == STATE_ON


@pytest.mark.parametrize("state_kept", [True, False])
async def test_absence_survives_restart(
    hass: HomeAssistant,
    init_integration: MockConfigEntry,
    freezer: FrozenDateTimeFactory,
    state_kept: bool,
) -> None:
    """What silence is judged on (gaps, last record, whose address it is) is kept with the
    detector state; without that file the device is young again and nothing alarms.
    """
    coordinator: GIoTCoordinator = init_integration.runtime_data.coordinator
    await _routine_until_now(hass, coordinator)
    assert await hass.config_entries.async_unload(init_integration.entry_id)
    await hass.async_block_till_done()
    if not state_kept:
        (coordinator.windows.directory / "detector_state.json").unlink()
    freezer.tick(timedelta(minutes=20))
    assert await hass.config_entries.async_setup(init_integration.entry_id)
    await hass.async_block_till_done()
    assert hass.states.get(ANOMALY).state == STATE_OFF

    await _advance(hass, freezer, timedelta(minutes=1))
    anomaly = hass.states.get(ANOMALY)
    assert anomaly.state == (STATE_ON if state_kept else STATE_OFF)
    assert anomaly.attributes["alert_type"] == ("device_silent" if state_kept else None)
    keys = init_integration.runtime_data.coordinator.detector.state()["keys"]
    assert (CAMERA_IP in keys) is state_kept
