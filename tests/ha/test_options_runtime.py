"""Options act at runtime: sensitivity moves alarms, retention empties the store, ports recover."""

import dataclasses
import socket
import time
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

import pytest
from freezegun.api import FrozenDateTimeFactory
from homeassistant.const import STATE_OFF, STATE_ON
from homeassistant.core import HomeAssistant
from homeassistant.helpers import issue_registry as ir
from pytest_homeassistant_custom_component.common import MockConfigEntry, async_fire_time_changed

from custom_components.giot.const import (
    CONF_NETFLOW_PORT,
    CONF_RETENTION_DAYS,
    CONF_SENSITIVITY,
    DOMAIN,
)
from custom_components.giot.coordinator import GIoTCoordinator

from .conftest import normal_flows

ANOMALY = "binary_sensor.camera_anomaly"
SCORE = "sensor.camera_anomaly_score"


async def _advance(hass: HomeAssistant, freezer: FrozenDateTimeFactory, delta: timedelta) -> None:
    freezer.tick(delta)
    async_fire_time_changed(hass)
    await hass.async_block_till_done(wait_background_tasks=True)


@pytest.mark.parametrize(
    ("sensitivity", "alarm"), [("high", STATE_ON), ("medium", STATE_OFF), ("low", STATE_OFF)]
)
async def test_sensitivity_decides_whether_one_odd_flow_alarms(
    hass: HomeAssistant,
    camera_entry_options: Callable[..., Coroutine[Any, Any, MockConfigEntry]],
    sensitivity: str,
    alarm: str,
) -> None:
    """One odd flow of a calibrated device: the engine waits for more, high sensitivity does not."""
    entry = await camera_entry_options(**{CONF_SENSITIVITY: sensitivity})
    coordinator: GIoTCoordinator = entry.runtime_data.coordinator
    start = time.time() - 3600
    coordinator.ingest.async_add_flows(normal_flows(start))
    await hass.async_block_till_done()
    # The upload, but unanswered: unusual for the camera, though not alarming on its own.
    odd = dataclasses.replace(normal_flows(start + 1200, 1)[0], conn_state="S0", resp_bytes=0)
    coordinator.ingest.async_add_flows([odd])
    await hass.async_block_till_done()
    assert 0 < float(hass.states.get(SCORE).state) < 12  # over the bar, under "very hot"
    assert hass.states.get(ANOMALY).state == alarm


async def test_retention_empties_the_store_without_new_windows(
    hass: HomeAssistant,
    camera_entry_options: Callable[..., Coroutine[Any, Any, MockConfigEntry]],
    freezer: FrozenDateTimeFactory,
) -> None:
    """Windows older than the retention option leave the store even when nothing new comes."""
    entry = await camera_entry_options(**{CONF_RETENTION_DAYS: 1})
    coordinator: GIoTCoordinator = entry.runtime_data.coordinator
    coordinator.ingest.async_add_flows(normal_flows(time.time() - 3600, 60))
    await hass.async_block_till_done()
    stored = coordinator.windows.total_windows
    assert stored > 0
    await _advance(hass, freezer, timedelta(hours=23))
    assert coordinator.windows.total_windows == stored
    await _advance(hass, freezer, timedelta(hours=1, minutes=1))
    assert coordinator.windows.total_windows == 0
    assert coordinator.windows.stats.dropped_retention == stored


@pytest.mark.usefixtures("socket_enabled")
async def test_busy_netflow_port_repair_clears_once_the_port_is_free(
    hass: HomeAssistant,
    camera_entry_options: Callable[..., Coroutine[Any, Any, MockConfigEntry]],
    freezer: FrozenDateTimeFactory,
) -> None:
    """Something else holds the port at setup: a repair; GIoT retries and takes it later."""
    squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    squatter.bind(("0.0.0.0", 0))
    port = int(squatter.getsockname()[1])
    try:
        entry = await camera_entry_options(**{CONF_NETFLOW_PORT: port})
        coordinator: GIoTCoordinator = entry.runtime_data.coordinator
        issues = ir.async_get(hass)
        issue = issues.async_get_issue(DOMAIN, "flow_source_unreadable_netflow")
        assert issue is not None
        assert issue.translation_placeholders["detail"].startswith(f"UDP port {port} (")
        await _advance(hass, freezer, timedelta(minutes=1))
        assert issues.async_get_issue(DOMAIN, "flow_source_unreadable_netflow") is not None
    finally:
        squatter.close()
    await _advance(hass, freezer, timedelta(minutes=1))
    assert issues.async_get_issue(DOMAIN, "flow_source_unreadable_netflow") is None
    assert coordinator.netflow is not None
    assert coordinator.netflow.bound_port == port
