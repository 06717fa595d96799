"""GIoT actions: describe a device, give feedback, snooze a device, train now."""

from datetime import timedelta

import probatio
from homeassistant.const import ATTR_DEVICE_ID, ATTR_ENTITY_ID
from homeassistant.core import (
    HomeAssistant,
    ServiceCall,
    ServiceResponse,
    SupportsResponse,
    callback,
)
from homeassistant.exceptions import ServiceValidationError
from homeassistant.helpers import config_validation as cv
from homeassistant.helpers import entity_registry as er
from homeassistant.util import dt as dt_util

from .const import ATTR_DURATION, DOMAIN
from .coordinator import GIoTConfigEntry, GIoTCoordinator

SERVICE_DESCRIBE_DEVICE = "describe_device"
SERVICE_MARK_NORMAL = "mark_normal"
SERVICE_SNOOZE = "snooze"
SERVICE_TRAIN_NOW = "train_now"

MAX_SNOOZE = timedelta(days=7)

# A watched device is named by its Home Assistant device, or by one of its entities (our own
# entities included, which is how devices seen only on the network are named).
DEVICE_SCHEMA = probatio.All(
    probatio.Schema(
        {
            probatio.Exclusive(ATTR_DEVICE_ID, "device"): cv.string,
            probatio.Exclusive(ATTR_ENTITY_ID, "device"): cv.entity_id,
        }
    ),
    probatio.AtLeastOne(ATTR_DEVICE_ID, ATTR_ENTITY_ID),
)
SNOOZE_SCHEMA = probatio.All(
    probatio.Schema(
        {
            probatio.Exclusive(ATTR_DEVICE_ID, "device"): cv.string,
            probatio.Exclusive(ATTR_ENTITY_ID, "device"): cv.entity_id,
            probatio.Required(ATTR_DURATION): cv.positive_time_period,
        }
    ),
    probatio.AtLeastOne(ATTR_DEVICE_ID, ATTR_ENTITY_ID),
)


def _coordinator(hass: HomeAssistant) -> GIoTCoordinator:
    """Return the loaded entry's coordinator (there is at most one entry)."""
    entries: list[GIoTConfigEntry] = hass.config_entries.async_loaded_entries(DOMAIN)
    if not entries:
        raise ServiceValidationError(translation_domain=DOMAIN, translation_key="not_loaded")
    return entries[0].runtime_data.coordinator


def _device_key(hass: HomeAssistant, coordinator: GIoTCoordinator, call: ServiceCall) -> str:
    """Resolve the call's device or entity to a watched device's key."""
    name: str = call.data.get(ATTR_DEVICE_ID) or call.data[ATTR_ENTITY_ID]
    key: str | None = call.data.get(ATTR_DEVICE_ID)
    if entity_id := call.data.get(ATTR_ENTITY_ID):
        entry = er.async_get(hass).async_get(entity_id)
        key = entry.device_id if entry is not None else None
        if entry is not None and entry.platform == DOMAIN and entry.unique_id:
            prefix = f"{coordinator.config_entry.entry_id}_"
            key = next(
                (k for k in coordinator.devices if entry.unique_id.startswith(f"{prefix}{k}_")),
                key,
            )
    if key is None or key not in coordinator.devices:
        raise ServiceValidationError(
            translation_domain=DOMAIN,
            translation_key="device_not_watched",
            translation_placeholders={"device": name},
        )
    return key


@callback
def async_setup_services(hass: HomeAssistant) -> None:
    """Register GIoT's actions."""

    async def _describe_device(call: ServiceCall) -> ServiceResponse:
        coordinator = _coordinator(hass)
        key = _device_key(hass, coordinator, call)
        description = await coordinator.async_describe(key)
        state = coordinator.devices[key]
        now = dt_util.utcnow()
        return {
            "device": state.name,
            "summary": description.short,
            "description": description.full,
            "score": state.shown_score(now),  # what the score sensor shows: agrees with alarm
            "alarm": state.alarm(now),
            "explanation": state.explanation,
            "profile": description.profile,
        }

    async def _mark_normal(call: ServiceCall) -> None:
        coordinator = _coordinator(hass)
        await coordinator.async_mark_normal(_device_key(hass, coordinator, call))

    async def _snooze(call: ServiceCall) -> None:
        coordinator = _coordinator(hass)
        key = _device_key(hass, coordinator, call)
        duration: timedelta = call.data[ATTR_DURATION]
        if duration > MAX_SNOOZE:
            raise ServiceValidationError(
                translation_domain=DOMAIN,
                translation_key="snooze_too_long",
                translation_placeholders={"max_days": str(MAX_SNOOZE.days)},
            )
        coordinator.async_snooze(key, duration)

    async def _train_now(call: ServiceCall) -> None:
        await _coordinator(hass).training.async_train()

    hass.services.async_register(
        DOMAIN,
        SERVICE_DESCRIBE_DEVICE,
        _describe_device,
        schema=DEVICE_SCHEMA,
        supports_response=SupportsResponse.ONLY,
    )
    hass.services.async_register(DOMAIN, SERVICE_MARK_NORMAL, _mark_normal, schema=DEVICE_SCHEMA)
    hass.services.async_register(DOMAIN, SERVICE_SNOOZE, _snooze, schema=SNOOZE_SCHEMA)
    hass.services.async_register(DOMAIN, SERVICE_TRAIN_NOW, _train_now)
