"""The GIoT integration: anomaly detection for home networks and devices, learnt federatedly."""

from homeassistant.const import Platform
from homeassistant.core import HomeAssistant
from homeassistant.helpers import config_validation as cv
from homeassistant.helpers.typing import ConfigType

from .const import DOMAIN
from .coordinator import GIoTConfigEntry, GIoTCoordinator
from .hub_store import async_remove_stored_data
from .issues import async_delete_issues
from .services import async_setup_services

CONFIG_SCHEMA = cv.config_entry_only_config_schema(DOMAIN)

PLATFORMS: list[Platform] = [
    Platform.BINARY_SENSOR,
    Platform.BUTTON,
    Platform.EVENT,
    Platform.SENSOR,
    Platform.SWITCH,
]


async def async_setup(hass: HomeAssistant, config: ConfigType) -> bool:
    """Register GIoT's actions once, whether or not an entry is loaded."""
    async_setup_services(hass)
    return True


async def async_setup_entry(hass: HomeAssistant, entry: GIoTConfigEntry) -> bool:
    """Set up GIoT from a config entry: restore state, start the sources, add the entities."""
    coordinator = GIoTCoordinator(hass, entry)
    await coordinator.async_start()
    entry.runtime_data = coordinator.runtime_data()
    await hass.config_entries.async_forward_entry_setups(entry, PLATFORMS)
    return True


async def async_remove_entry(hass: HomeAssistant, entry: GIoTConfigEntry) -> None:
    """Delete what GIoT learnt about the home when the user removes it: it never leaves the hub."""
    await async_remove_stored_data(hass, entry)


async def async_unload_entry(hass: HomeAssistant, entry: GIoTConfigEntry) -> bool:
    """Unload a GIoT entry; the coordinator saves its state when the entry shuts it down.

    Its repair issues go with it (a reload raises those that still apply again).
    """
    if unloaded := await hass.config_entries.async_unload_platforms(entry, PLATFORMS):
        async_delete_issues(hass)
    return unloaded
