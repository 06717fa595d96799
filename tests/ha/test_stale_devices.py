"""Devices GIoT found itself are bounded: forgotten after the retention period, capped in number."""

import time
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any
from unittest.mock import patch

from freezegun.api import FrozenDateTimeFactory
from homeassistant.const import STATE_OFF
from homeassistant.core import HomeAssistant
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers import entity_registry as er
from pytest_homeassistant_custom_component.common import MockConfigEntry, async_fire_time_changed

from custom_components.giot.const import (
    CONF_DEVICES,
    CONF_RETENTION_DAYS,
    CONF_SENSITIVITY,
    DOMAIN,
)
from custom_components.giot.coordinator import GIoTCoordinator
from custom_components.giot.training import FEEDBACK_PREFIX
from giot_engine.records import FlowRecord

from .conftest import CAMERA_IP, REMOTE, normal_flows, scan_flows

NET_ANOMALY = "binary_sensor.giot_192_168_1_50_anomaly"
NET_KEY = f"net:{CAMERA_IP}"


async def _advance(hass: HomeAssistant, freezer: FrozenDateTimeFactory, delta: timedelta) -> None:
    freezer.tick(delta)
    async_fire_time_changed(hass)
    await hass.async_block_till_done(wait_background_tasks=True)


def _giot_entities(hass: HomeAssistant, entry: MockConfigEntry, key: str) -> list[str]:
    prefix = f"{entry.entry_id}_{key}_"
    return [
        e.entity_id
        for e in er.async_entries_for_config_entry(er.async_get(hass), entry.entry_id)
        if e.unique_id.startswith(prefix)
    ]


async def test_network_only_device_is_forgotten_after_retention(
    hass: HomeAssistant,
    camera_entry_options: Callable[..., Coroutine[Any, Any, MockConfigEntry]],
    freezer: FrozenDateTimeFactory,
) -> None:
    """Unseen for the retention period: entities, windows and learnt state go; it may return."""
    entry = await camera_entry_options(**{CONF_RETENTION_DAYS: 2})
    coordinator: GIoTCoordinator = entry.runtime_data.coordinator
    end = time.time()
    coordinator.ingest.async_add_flows(normal_flows(end - 80 * 30.0, 80, mac=None))
    await hass.async_block_till_done()
    coordinator.ingest.async_add_flows(scan_flows(end + 1, mac=None))
    await hass.async_block_till_done()
    await hass.services.async_call(DOMAIN, "mark_normal", {"entity_id": NET_ANOMALY}, blocking=True)
    assert len(_giot_entities(hass, entry, NET_KEY)) == 4
    assert coordinator.windows.windows(NET_KEY).shape[0] > 0
    assert coordinator.windows.windows(f"{FEEDBACK_PREFIX}{NET_KEY}").shape[0] > 0
    camera_key = next(k for k in coordinator.devices if not k.startswith("net:"))

    await _advance(hass, freezer, timedelta(days=1))
    assert NET_KEY in coordinator.devices  # seen a day ago: kept
    assert hass.states.get(NET_ANOMALY) is not None

    await _advance(hass, freezer, timedelta(days=1, minutes=1))
    assert NET_KEY not in coordinator.devices
    assert _giot_entities(hass, entry, NET_KEY) == []
    assert hass.states.get(NET_ANOMALY) is None
    assert coordinator.windows.devices() == []
    state = coordinator.detector.state()
    assert CAMERA_IP not in state["engine"]["devices"]
    assert NET_KEY not in state["dampen"]
    assert CAMERA_IP not in state["keys"]
    assert camera_key in coordinator.devices  # chosen in the options: never forgotten

    # Back after all: a new device again, with new entities (announced again, too).
    coordinator.ingest.async_add_flows(normal_flows(time.time(), 3, mac=None))
    await hass.async_block_till_done()
    assert hass.states.get(NET_ANOMALY).state == STATE_OFF
    assert coordinator.devices[NET_KEY].observations == 3
    assert hass.states.get("event.giot_network").attributes["device"] == CAMERA_IP


async def test_forgetting_survives_restart(
    hass: HomeAssistant,
    camera_entry_options: Callable[..., Coroutine[Any, Any, MockConfigEntry]],
    freezer: FrozenDateTimeFactory,
) -> None:
    """When a network-only device was last seen is kept, so a restart does not reset it."""
    entry = await camera_entry_options(**{CONF_RETENTION_DAYS: 1})
    coordinator: GIoTCoordinator = entry.runtime_data.coordinator
    coordinator.ingest.async_add_flows(normal_flows(time.time(), 3, mac=None))
    await hass.async_block_till_done()
    assert await hass.config_entries.async_unload(entry.entry_id)
    await hass.async_block_till_done()
    freezer.tick(timedelta(hours=23))
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    assert hass.states.get(NET_ANOMALY) is not None

    await _advance(hass, freezer, timedelta(hours=1, minutes=1))
    assert NET_KEY not in entry.runtime_data.coordinator.devices
    assert _giot_entities(hass, entry, NET_KEY) == []


async def test_network_only_devices_are_capped(
    hass: HomeAssistant, coordinator: GIoTCoordinator
) -> None:
    """A sweep of unknown LAN addresses makes at most MAX_NETWORK_DEVICES devices."""
    sweep = [
        FlowRecord(time.time(), f"192.168.7.{i}", 5000, REMOTE, 443, "tcp") for i in range(1, 9)
    ]
    with patch("custom_components.giot.devices.MAX_NETWORK_DEVICES", 3):
        coordinator.ingest.async_add_flows(sweep)
        await hass.async_block_till_done()
    network = [key for key in coordinator.devices if key.startswith("net:")]
    assert network == ["net:192.168.7.1", "net:192.168.7.2", "net:192.168.7.3"]
    assert coordinator.devices.refused == 5
    assert hass.states.get("binary_sensor.giot_192_168_7_4_anomaly") is None


async def test_device_attributed_by_flows_is_kept_across_restart_then_forgotten(
    hass: HomeAssistant,
    mock_config_entry: MockConfigEntry,
    camera: dr.DeviceEntry,
    freezer: FrozenDateTimeFactory,
) -> None:
    """A registry device no option chose, watched because flows named it, is forgotten too."""
    mock_config_entry.add_to_hass(hass)
    hass.config_entries.async_update_entry(mock_config_entry, options={CONF_RETENTION_DAYS: 1})
    assert await hass.config_entries.async_setup(mock_config_entry.entry_id)
    await hass.async_block_till_done()
    coordinator: GIoTCoordinator = mock_config_entry.runtime_data.coordinator
    coordinator.ingest.async_add_flows(normal_flows(time.time(), 3))
    await hass.async_block_till_done()
    assert coordinator.devices[camera.id].dynamic
    entities = _giot_entities(hass, mock_config_entry, camera.id)
    assert len(entities) == 4

    assert await hass.config_entries.async_reload(mock_config_entry.entry_id)
    await hass.async_block_till_done()
    coordinator = mock_config_entry.runtime_data.coordinator
    assert coordinator.devices[camera.id].observations == 3
    assert _giot_entities(hass, mock_config_entry, camera.id) == entities

    await _advance(hass, freezer, timedelta(days=1, minutes=1))
    assert camera.id not in coordinator.devices
    assert _giot_entities(hass, mock_config_entry, camera.id) == []
    assert dr.async_get(hass).async_get(camera.id) is not None  # not ours: left alone


async def test_unwatched_device_loses_its_entities(
    hass: HomeAssistant, init_integration: MockConfigEntry, camera: dr.DeviceEntry
) -> None:
    """Taking a device out of the options removes GIoT's entities and state on the reload."""
    coordinator: GIoTCoordinator = init_integration.runtime_data.coordinator
    for i in range(4):
        hass.states.async_set("binary_sensor.camera_motion", "on" if i % 2 == 0 else "off")
        await hass.async_block_till_done()
    assert camera.id in coordinator.detector.state()["engine"]["devices"]
    assert len(_giot_entities(hass, init_integration, camera.id)) == 4
    result = await hass.config_entries.options.async_init(init_integration.entry_id)
    result = await hass.config_entries.options.async_configure(
        result["flow_id"], {CONF_SENSITIVITY: "medium"}
    )
    await hass.async_block_till_done()
    assert init_integration.runtime_data.coordinator.devices == {}
    assert _giot_entities(hass, init_integration, camera.id) == []
    state = init_integration.runtime_data.coordinator.detector.state()
    assert camera.id not in state["engine"]["devices"]
    assert camera.id not in state["events"]
    assert hass.states.get("binary_sensor.camera_anomaly") is None
    assert hass.states.get("sensor.giot_model_version") is not None


async def test_device_found_then_chosen_is_never_forgotten(
    hass: HomeAssistant,
    mock_config_entry: MockConfigEntry,
    camera: dr.DeviceEntry,
    freezer: FrozenDateTimeFactory,
) -> None:
    """Once the user chooses a device GIoT had found, retention no longer applies to it."""
    mock_config_entry.add_to_hass(hass)
    hass.config_entries.async_update_entry(mock_config_entry, options={CONF_RETENTION_DAYS: 1})
    assert await hass.config_entries.async_setup(mock_config_entry.entry_id)
    await hass.async_block_till_done()
    coordinator: GIoTCoordinator = mock_config_entry.runtime_data.coordinator
    coordinator.ingest.async_add_flows(normal_flows(time.time(), 3))
    await hass.async_block_till_done()
    assert coordinator.devices[camera.id].dynamic

    result = await hass.config_entries.options.async_init(mock_config_entry.entry_id)
    await hass.config_entries.options.async_configure(
        result["flow_id"],
        {CONF_DEVICES: [camera.id], CONF_SENSITIVITY: "medium", CONF_RETENTION_DAYS: 1},
    )
    await hass.async_block_till_done()
    coordinator = mock_config_entry.runtime_data.coordinator
    assert not coordinator.devices[camera.id].dynamic
    await _advance(hass, freezer, timedelta(days=2))
    assert camera.id in coordinator.devices
    assert len(_giot_entities(hass, mock_config_entry, camera.id)) == 4
