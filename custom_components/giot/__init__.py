"""The GIoT integration: anomaly detection for home networks and devices, learnt federatedly."""

from homeassistant.const import Platform
from homeassistant.core import HomeAssistant

from .coordinator import GIoTConfigEntry, GIoTRuntimeData

PLATFORMS: list[Platform] = []


async def async_setup_entry(hass: HomeAssistant, entry: GIoTConfigEntry) -> bool:
    """Set up GIoT from a config entry."""
    entry.runtime_data = GIoTRuntimeData.from_entry(entry)
    await hass.config_entries.async_forward_entry_setups(entry, PLATFORMS)
    return True


async def async_unload_entry(hass: HomeAssistant, entry: GIoTConfigEntry) -> bool:
    """Unload a GIoT config entry."""
    return await hass.config_entries.async_unload_platforms(entry, PLATFORMS)
