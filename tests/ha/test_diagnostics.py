"""Diagnostics: a snapshot with addresses and paths redacted."""

import time
from pathlib import Path
from unittest.mock import patch

import pytest
from homeassistant.core import HomeAssistant
from pytest_homeassistant_custom_component.common import MockConfigEntry
from syrupy.assertion import SnapshotAssertion
from syrupy.filters import props

from custom_components.giot.const import (
    CONF_NETFLOW_PORT,
    CONF_NODE_HOST,
    CONF_NODE_PORT,
    CONF_ZEEK_PATH,
    DOMAIN,
)
from custom_components.giot.coordinator import GIoTCoordinator
from custom_components.giot.diagnostics import async_get_config_entry_diagnostics

from .conftest import normal_flows, scan_flows


@pytest.mark.freeze_time("2026-11-23 10:00:00+00:00")
async def test_diagnostics(
    hass: HomeAssistant,
    coordinator: GIoTCoordinator,
    init_integration: MockConfigEntry,
    snapshot: SnapshotAssertion,
) -> None:
    """The entry, hub, devices and sources, without the home's addresses."""
    start = time.time() - 3600
    coordinator.ingest.async_add_flows(normal_flows(start))
    coordinator.ingest.async_add_flows(scan_flows(start + 1210))
    coordinator.ingest.async_add_flows(scan_flows(start, 2, src="192.168.1.77", mac=None))
    await hass.async_block_till_done()
    diagnostics = await async_get_config_entry_diagnostics(hass, init_integration)
    assert "192.168.1.77" not in str(diagnostics)
    # What the engine decides (scores, alarms) and the collectors' and store's own counters are
    # tested with their modules; the snapshot pins this report's shape and its redaction.
    assert set(diagnostics["sources"]) == {"state_collector", "attribution"}
    assert diagnostics["store"]["write_errors"] == 0
    volatile = ("key", "score", "alarm", "alert_type", "severity", "explanation")
    assert diagnostics == snapshot(exclude=props(*volatile, "sources", "store"))
    assert [device["observations"] for device in diagnostics["devices"]] == [70, 2]


async def test_diagnostics_of_flow_sources(hass: HomeAssistant, tmp_path: Path) -> None:
    """NetFlow and Zeek statistics are included; the log path and node host are redacted."""
    log = tmp_path / "conn.log"  # missing: a failing source, named without its path
    entry = MockConfigEntry(
        domain=DOMAIN,
        data={CONF_NODE_HOST: "192.0.2.10", CONF_NODE_PORT: 9093},
        options={CONF_NETFLOW_PORT: 2055, CONF_ZEEK_PATH: str(log)},
    )
    entry.add_to_hass(hass)
    with (
        patch("custom_components.giot.coordinator.NetFlowListener.async_start"),
        patch("custom_components.giot.coordinator.NetFlowListener.async_stop"),
    ):
        assert await hass.config_entries.async_setup(entry.entry_id)
        await hass.async_block_till_done()
        diagnostics = await async_get_config_entry_diagnostics(hass, entry)
    assert diagnostics["entry"]["data"][CONF_NODE_HOST] == "**REDACTED**"
    assert diagnostics["entry"]["options"][CONF_ZEEK_PATH] == "**REDACTED**"
    assert diagnostics["sources"]["netflow"]["datagrams"] == 0
    assert diagnostics["sources"]["zeek"]["status"] == "missing"
    assert diagnostics["failing_sources"] == ["zeek"]
    assert str(tmp_path) not in str(diagnostics)
