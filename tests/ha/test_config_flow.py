"""Every path of the GIoT config flow."""

from collections.abc import Callable
from ipaddress import ip_address
from pathlib import Path
from unittest.mock import patch

import pytest
from homeassistant.config_entries import SOURCE_USER, SOURCE_ZEROCONF
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.helpers.service_info.zeroconf import ZeroconfServiceInfo
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.giot.const import (
    CONF_AREAS,
    CONF_DEVICES,
    CONF_FEDERATION,
    CONF_LABELS,
    CONF_NETFLOW_PORT,
    CONF_NODE_HOST,
    CONF_NODE_PORT,
    CONF_RETENTION_DAYS,
    CONF_SENSITIVITY,
    CONF_ZEEK_PATH,
    DOMAIN,
)

FLOW = "custom_components.giot.config_flow"
COORDINATOR = "custom_components.giot.coordinator"

DISCOVERY = ZeroconfServiceInfo(
    ip_address=ip_address("192.0.2.10"),
    ip_addresses=[ip_address("192.0.2.10")],
    hostname="giot-node.local.",
    name="giot-node._giot._tcp.local.",
    port=9093,
    properties={},
    type="_giot._tcp.local.",
)


@pytest.mark.usefixtures("mock_setup_entry")
async def test_user_step_creates_entry(hass: HomeAssistant) -> None:
    """The user step asks nothing and creates an entry without a node."""
    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": SOURCE_USER})
    assert result["type"] is FlowResultType.FORM
    assert result["step_id"] == "user"

    result = await hass.config_entries.flow.async_configure(result["flow_id"], {})
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert result["title"] == "GIoT"
    assert result["data"] == {}


@pytest.mark.usefixtures("mock_setup_entry")
async def test_zeroconf_discovery_creates_entry_with_node(hass: HomeAssistant) -> None:
    """A discovered node is confirmed and remembered."""
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": SOURCE_ZEROCONF}, data=DISCOVERY
    )
    assert result["type"] is FlowResultType.FORM
    assert result["step_id"] == "zeroconf_confirm"
    assert result["description_placeholders"] == {"host": "192.0.2.10:9093"}

    result = await hass.config_entries.flow.async_configure(result["flow_id"], {})
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert result["data"] == {CONF_NODE_HOST: "192.0.2.10", CONF_NODE_PORT: 9093}


@pytest.mark.parametrize("source", [SOURCE_USER, SOURCE_ZEROCONF])
async def test_single_instance(
    hass: HomeAssistant, mock_config_entry: MockConfigEntry, source: str
) -> None:
    """A second entry is refused whichever way the flow starts."""
    mock_config_entry.add_to_hass(hass)
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": source}, data=DISCOVERY if source == SOURCE_ZEROCONF else None
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "single_instance_allowed"


@pytest.mark.usefixtures("mock_setup_entry")
async def test_reconfigure_sets_and_clears_node(
    hass: HomeAssistant, mock_config_entry: MockConfigEntry
) -> None:
    """Reconfigure validates the host, stores a node, and an empty host clears it."""
    mock_config_entry.add_to_hass(hass)
    result = await mock_config_entry.start_reconfigure_flow(hass)
    assert result["type"] is FlowResultType.FORM
    assert result["step_id"] == "reconfigure"

    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {CONF_NODE_HOST: "not a host!", CONF_NODE_PORT: 9093}
    )
    assert result["type"] is FlowResultType.FORM
    assert result["errors"] == {CONF_NODE_HOST: "invalid_host"}

    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {CONF_NODE_HOST: "giot-node.local", CONF_NODE_PORT: 9094.0}
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "reconfigure_successful"
    assert mock_config_entry.data == {CONF_NODE_HOST: "giot-node.local", CONF_NODE_PORT: 9094}

    result = await mock_config_entry.start_reconfigure_flow(hass)
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {CONF_NODE_HOST: "  ", CONF_NODE_PORT: 9093}
    )
    assert result["type"] is FlowResultType.ABORT
    assert mock_config_entry.data == {}


OPTIONS_INPUT = {
    CONF_DEVICES: ["device-1"],
    CONF_AREAS: ["kitchen"],
    CONF_LABELS: [],
    CONF_NETFLOW_PORT: 2055.0,
    CONF_ZEEK_PATH: "  ",
    CONF_SENSITIVITY: "high",
    CONF_FEDERATION: False,
    CONF_RETENTION_DAYS: 14.0,
}


@pytest.mark.usefixtures("mock_setup_entry")
async def test_options_flow(hass: HomeAssistant, mock_config_entry: MockConfigEntry) -> None:
    """Options are cleaned (numbers to int, a blank path dropped) after the port is checked."""
    mock_config_entry.add_to_hass(hass)
    result = await hass.config_entries.options.async_init(mock_config_entry.entry_id)
    assert result["type"] is FlowResultType.FORM
    assert result["step_id"] == "init"

    with patch(f"{FLOW}.async_check_port_free", return_value=True) as check:
        result = await hass.config_entries.options.async_configure(result["flow_id"], OPTIONS_INPUT)
    check.assert_awaited_once_with("0.0.0.0", 2055)
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert mock_config_entry.options == {
        CONF_DEVICES: ["device-1"],
        CONF_AREAS: ["kitchen"],
        CONF_LABELS: [],
        CONF_NETFLOW_PORT: 2055,
        CONF_SENSITIVITY: "high",
        CONF_FEDERATION: False,
        CONF_RETENTION_DAYS: 14,
    }


@pytest.mark.usefixtures("mock_setup_entry")
async def test_options_flow_port_in_use(
    hass: HomeAssistant, mock_config_entry: MockConfigEntry
) -> None:
    """A NetFlow port something else holds is refused with a translated error."""
    mock_config_entry.add_to_hass(hass)
    result = await hass.config_entries.options.async_init(mock_config_entry.entry_id)
    with patch(f"{FLOW}.async_check_port_free", return_value=False):
        result = await hass.config_entries.options.async_configure(result["flow_id"], OPTIONS_INPUT)
    assert result["type"] is FlowResultType.FORM
    assert result["errors"] == {CONF_NETFLOW_PORT: "port_in_use"}

    without_port = {k: v for k, v in OPTIONS_INPUT.items() if k != CONF_NETFLOW_PORT}
    result = await hass.config_entries.options.async_configure(result["flow_id"], without_port)
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert CONF_NETFLOW_PORT not in mock_config_entry.options


@pytest.mark.usefixtures("mock_setup_entry")
@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda tmp: tmp / "missing.log", "path_not_found"),
        (lambda tmp: tmp, "path_not_a_file"),
    ],
)
async def test_options_flow_zeek_path(
    hass: HomeAssistant,
    mock_config_entry: MockConfigEntry,
    tmp_path: Path,
    make: Callable[[Path], Path],
    error: str,
) -> None:
    """An unusable conn.log path is refused; a readable one is kept."""
    mock_config_entry.add_to_hass(hass)
    result = await hass.config_entries.options.async_init(mock_config_entry.entry_id)
    user_input = {CONF_ZEEK_PATH: str(make(tmp_path)), CONF_SENSITIVITY: "medium"}
    result = await hass.config_entries.options.async_configure(result["flow_id"], user_input)
    assert result["type"] is FlowResultType.FORM
    assert result["errors"] == {CONF_ZEEK_PATH: error}

    log = tmp_path / "conn.log"
    log.write_text("#separator \\x09\n")
    user_input[CONF_ZEEK_PATH] = str(log)
    result = await hass.config_entries.options.async_configure(result["flow_id"], user_input)
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert mock_config_entry.options[CONF_ZEEK_PATH] == str(log)


async def test_options_flow_keeps_own_port(hass: HomeAssistant) -> None:
    """The port GIoT itself listens on is not reported as taken, and saving reloads the entry."""
    entry = MockConfigEntry(domain=DOMAIN, options={CONF_NETFLOW_PORT: 2055})
    entry.add_to_hass(hass)
    with (
        patch(f"{COORDINATOR}.NetFlowListener.async_start"),
        patch(f"{COORDINATOR}.NetFlowListener.async_stop"),
        patch(f"{FLOW}.async_check_port_free", return_value=False) as check,
    ):
        assert await hass.config_entries.async_setup(entry.entry_id)
        await hass.async_block_till_done()
        result = await hass.config_entries.options.async_init(entry.entry_id)
        result = await hass.config_entries.options.async_configure(
            result["flow_id"], {CONF_NETFLOW_PORT: 2055, CONF_SENSITIVITY: "low"}
        )
        await hass.async_block_till_done()
    assert result["type"] is FlowResultType.CREATE_ENTRY
    check.assert_not_called()
    assert entry.runtime_data.coordinator.sensitivity == "low"
