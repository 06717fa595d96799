"""Setting a GIoT entry up and unloading it in a real Home Assistant."""

import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest.mock import patch

from freezegun.api import FrozenDateTimeFactory
from homeassistant.config_entries import ConfigEntryState
from homeassistant.const import EVENT_HOMEASSISTANT_STOP, STATE_ON
from homeassistant.core import HomeAssistant
from homeassistant.helpers import issue_registry as ir
from pytest_homeassistant_custom_component.common import MockConfigEntry, async_fire_time_changed

from custom_components.giot.const import (
    CONF_NETFLOW_PORT,
    CONF_NODE_HOST,
    CONF_NODE_PORT,
    CONF_ZEEK_PATH,
    DOMAIN,
    NO_DATA_AFTER,
)
from custom_components.giot.coordinator import GIoTCoordinator
from custom_components.giot.models import NodeAddress
from giot_engine.records import FlowRecord

from .conftest import CAMERA_ENTITY, CAMERA_IP, CAMERA_MAC, normal_flows, scan_flows

TRAIN = "button.giot_train_now"


async def test_setup_and_unload(hass: HomeAssistant, mock_config_entry: MockConfigEntry) -> None:
    """The entry loads with typed runtime data and unloads cleanly."""
    mock_config_entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(mock_config_entry.entry_id)
    await hass.async_block_till_done()
    assert mock_config_entry.state is ConfigEntryState.LOADED
    assert mock_config_entry.runtime_data.node is None

    assert await hass.config_entries.async_unload(mock_config_entry.entry_id)
    await hass.async_block_till_done()
    assert mock_config_entry.state is ConfigEntryState.NOT_LOADED


async def test_setup_with_discovered_node(hass: HomeAssistant) -> None:
    """A node remembered by discovery is part of the runtime data."""
    entry = MockConfigEntry(
        domain=DOMAIN, data={CONF_NODE_HOST: "192.0.2.10", CONF_NODE_PORT: 9093}
    )
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    assert entry.runtime_data.node == NodeAddress("192.0.2.10", 9093)


async def test_restart_keeps_learnt_state(
    hass: HomeAssistant,
    init_integration: MockConfigEntry,
    freezer: FrozenDateTimeFactory,
) -> None:
    """Unload and set up again on the same hass: windows, calibration and choices survive."""
    entry = init_integration
    coordinator: GIoTCoordinator = entry.runtime_data.coordinator
    coordinator.ingest.async_add_flows(normal_flows(time.time() - 3600))
    await hass.async_block_till_done()
    await hass.services.async_call(
        "switch", "turn_on", {"entity_id": "switch.giot_away_mode"}, blocking=True
    )
    await hass.services.async_call("button", "press", {"entity_id": TRAIN}, blocking=True)
    await hass.services.async_call(
        DOMAIN, "snooze", {"entity_id": CAMERA_ENTITY, "duration": {"hours": 2}}, blocking=True
    )
    learnt = coordinator.detector.state()
    trained_at = hass.states.get("sensor.giot_last_training").state
    assert learnt["engine"]["devices"]
    assert coordinator.windows.total_windows > 0
    windows = coordinator.windows.total_windows
    model = hass.states.get("sensor.giot_model_version").state
    assert model == "giot-1"

    assert await hass.config_entries.async_unload(entry.entry_id)
    await hass.async_block_till_done()
    assert entry.state is ConfigEntryState.NOT_LOADED
    freezer.tick(timedelta(minutes=5))
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()

    restored: GIoTCoordinator = entry.runtime_data.coordinator
    assert restored is not coordinator
    assert restored.detector.state() == learnt
    assert hass.states.get("switch.giot_away_mode").state == STATE_ON
    assert hass.states.get("sensor.giot_last_training").state == trained_at
    assert hass.states.get("sensor.giot_model_version").state == model
    assert restored.windows.total_windows == windows
    assert hass.states.get("sensor.camera_behaviour").state.startswith("Mostly talks https")
    assert hass.states.get("binary_sensor.camera_anomaly").attributes["snoozed_until"]
    # Warm-up and calibration survived: a never seen kind of flow is scored over the bar at
    # once, where a device still warming up would not be.
    restored.ingest.async_add_flows(
        [FlowRecord(time.time(), CAMERA_IP, 1, "192.168.1.1", 23, "udp", orig_mac=CAMERA_MAC)]
    )
    await hass.async_block_till_done()
    assert float(hass.states.get("sensor.camera_anomaly_score").state) > 0
    assert restored.detector.state()["engine"]["devices"][CAMERA_IP]["seen"] == 41


async def test_unreadable_zeek_log_raises_repair(hass: HomeAssistant, tmp_path: Path) -> None:
    """A missing conn.log is an issue that goes away once the file is there."""
    log = tmp_path / "conn.log"
    entry = MockConfigEntry(domain=DOMAIN, options={CONF_ZEEK_PATH: str(log)})
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    issue = ir.async_get(hass).async_get_issue(DOMAIN, "flow_source_unreadable_zeek")
    assert issue is not None
    assert issue.translation_key == "flow_source_unreadable"

    log.write_text("")
    await entry.runtime_data.coordinator.zeek.async_poll()
    assert ir.async_get(hass).async_get_issue(DOMAIN, "flow_source_unreadable_zeek") is None


async def test_repairs_go_with_the_entry(hass: HomeAssistant, tmp_path: Path) -> None:
    """Unloaded, GIoT leaves no issue behind; set up again, what still applies comes back."""
    entry = MockConfigEntry(domain=DOMAIN, options={CONF_ZEEK_PATH: str(tmp_path / "conn.log")})
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    issues = ir.async_get(hass)
    assert issues.async_get_issue(DOMAIN, "flow_source_unreadable_zeek") is not None
    assert await hass.config_entries.async_unload(entry.entry_id)
    await hass.async_block_till_done()
    assert [key for key in issues.issues if key[0] == DOMAIN] == []
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    assert issues.async_get_issue(DOMAIN, "flow_source_unreadable_zeek") is not None


async def test_busy_netflow_port_raises_repair(hass: HomeAssistant) -> None:
    """A NetFlow port that cannot be bound is an issue, not a failed setup."""
    entry = MockConfigEntry(domain=DOMAIN, options={CONF_NETFLOW_PORT: 2055})
    entry.add_to_hass(hass)
    with patch(
        "custom_components.giot.coordinator.NetFlowListener.async_start",
        side_effect=OSError(98, "Address already in use"),
    ):
        assert await hass.config_entries.async_setup(entry.entry_id)
        await hass.async_block_till_done()
    assert entry.state is ConfigEntryState.LOADED
    issue = ir.async_get(hass).async_get_issue(DOMAIN, "flow_source_unreadable_netflow")
    assert issue is not None
    assert issue.translation_placeholders == {
        "source": "netflow",
        "detail": "UDP port 2055 (Address already in use)",
    }


async def test_no_data_for_a_day_raises_repair(
    hass: HomeAssistant, coordinator: GIoTCoordinator, freezer: FrozenDateTimeFactory
) -> None:
    """Watching something but hearing nothing for a day is an issue; data clears it."""
    freezer.tick(NO_DATA_AFTER + timedelta(minutes=1))
    async_fire_time_changed(hass)
    await hass.async_block_till_done(wait_background_tasks=True)
    assert ir.async_get(hass).async_get_issue(DOMAIN, "no_data") is not None

    coordinator.ingest.async_add_flows(scan_flows(time.time(), 1))
    await hass.async_block_till_done()
    freezer.tick(timedelta(minutes=1))
    async_fire_time_changed(hass)
    await hass.async_block_till_done(wait_background_tasks=True)
    assert ir.async_get(hass).async_get_issue(DOMAIN, "no_data") is None


async def test_full_disk_raises_repair(
    hass: HomeAssistant, init_integration: MockConfigEntry, freezer: FrozenDateTimeFactory
) -> None:
    """Too little free space for the store is an issue that clears when space returns."""
    with patch("custom_components.giot.issues._free_bytes", return_value=2**20):
        freezer.tick(timedelta(minutes=2))
        async_fire_time_changed(hass)
        await hass.async_block_till_done(wait_background_tasks=True)
    issue = ir.async_get(hass).async_get_issue(DOMAIN, "storage_full")
    assert issue is not None
    assert issue.translation_placeholders == {"free_mb": "1"}
    freezer.tick(timedelta(minutes=2))
    async_fire_time_changed(hass)
    await hass.async_block_till_done(wait_background_tasks=True)
    assert ir.async_get(hass).async_get_issue(DOMAIN, "storage_full") is None


async def test_state_is_saved_when_home_assistant_stops(
    hass: HomeAssistant, coordinator: GIoTCoordinator
) -> None:
    """Entries are not unloaded on stop, so the coordinator saves on the stop event itself."""
    coordinator.ingest.async_add_flows(normal_flows(time.time() - 3600, 10))
    await hass.async_block_till_done()
    state_file = coordinator.windows.directory / "detector_state.json"
    assert not state_file.exists()
    hass.bus.async_fire(EVENT_HOMEASSISTANT_STOP)
    await hass.async_block_till_done()
    assert CAMERA_IP in json.loads(state_file.read_text())["engine"]["devices"]


async def test_unknown_host_scanning_a_device_is_blamed(
    hass: HomeAssistant, coordinator: GIoTCoordinator
) -> None:
    """Flows are the originator's: an unknown LAN host probing the camera is its own device."""
    coordinator.ingest.async_add_flows(
        [FlowRecord(time.time(), "192.168.1.66", 4000, CAMERA_IP, 554, "tcp", conn_state="S0")]
    )
    await hass.async_block_till_done()
    assert coordinator.devices["net:192.168.1.66"].observations == 1


async def test_removing_the_entry_deletes_what_was_learnt(
    hass: HomeAssistant, init_integration: MockConfigEntry, hass_storage: dict[str, Any]
) -> None:
    """What GIoT learnt about the home goes with the integration."""
    coordinator: GIoTCoordinator = init_integration.runtime_data.coordinator
    coordinator.ingest.async_add_flows(normal_flows(time.time() - 3600, 10))
    await hass.async_block_till_done()
    directory = coordinator.windows.directory
    assert await hass.config_entries.async_unload(init_integration.entry_id)
    await hass.async_block_till_done()
    assert (directory / "detector_state.json").exists()
    assert f"{DOMAIN}.{init_integration.entry_id}" in hass_storage

    await hass.config_entries.async_remove(init_integration.entry_id)
    await hass.async_block_till_done()
    assert not directory.exists()
    assert f"{DOMAIN}.{init_integration.entry_id}" not in hass_storage
    assert f"{DOMAIN}.known_addresses" not in hass_storage
