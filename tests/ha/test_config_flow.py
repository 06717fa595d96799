"""Every path of the GIoT config flow."""

from ipaddress import ip_address

import pytest
from homeassistant.config_entries import SOURCE_USER, SOURCE_ZEROCONF
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.helpers.service_info.zeroconf import ZeroconfServiceInfo
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.giot.const import CONF_NODE_HOST, CONF_NODE_PORT, DOMAIN

DISCOVERY = ZeroconfServiceInfo(
    ip_address=ip_address("192.0.2.10"),
    ip_addresses=[ip_address("192.0.2.10")],
    hostname="giot-node.local.",
    name="giot-node._giot._tcp.local.",
    port=9093,
    properties={},
    type="_giot._tcp.local.",
)

pytestmark = pytest.mark.usefixtures("mock_setup_entry")


async def test_user_step_creates_entry(hass: HomeAssistant) -> None:
    """The user step asks nothing and creates an entry without a node."""
    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": SOURCE_USER})
    assert result["type"] is FlowResultType.FORM
    assert result["step_id"] == "user"

    result = await hass.config_entries.flow.async_configure(result["flow_id"], {})
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert result["title"] == "GIoT"
    assert result["data"] == {}


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
