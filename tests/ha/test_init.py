"""Setting a GIoT entry up and unloading it in a real Home Assistant."""

from homeassistant.config_entries import ConfigEntryState
from homeassistant.core import HomeAssistant
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.giot.const import CONF_NODE_HOST, CONF_NODE_PORT, DOMAIN
from custom_components.giot.coordinator import NodeAddress


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
