"""Per-device anomaly binary sensors: on while a device does something it should not."""

from typing import Any, override

from homeassistant.components.binary_sensor import (
    BinarySensorEntity,
    BinarySensorEntityDescription,
)
from homeassistant.components.binary_sensor.const import BinarySensorDeviceClass
from homeassistant.core import HomeAssistant
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback
from homeassistant.util import dt as dt_util

from .coordinator import GIoTConfigEntry
from .entity import GIoTDeviceEntity, async_add_device_entities

# The coordinator pushes; entities only read what it holds.
PARALLEL_UPDATES = 0

ANOMALY = BinarySensorEntityDescription(
    key="anomaly",
    translation_key="anomaly",
    device_class=BinarySensorDeviceClass.PROBLEM,
)


async def async_setup_entry(
    hass: HomeAssistant,
    entry: GIoTConfigEntry,
    async_add_entities: AddConfigEntryEntitiesCallback,
) -> None:
    """Set up an anomaly sensor for every watched device."""
    coordinator = entry.runtime_data.coordinator
    async_add_device_entities(
        entry,
        async_add_entities,
        lambda device: [GIoTAnomalyBinarySensor(hass, coordinator, device, ANOMALY)],
    )


class GIoTAnomalyBinarySensor(GIoTDeviceEntity, BinarySensorEntity):
    """On while the device is in alarm (held for a while after the last alarming verdict).

    A snoozed device stays off; it is still scored, so the score sensor keeps moving.
    """

    @property
    @override
    def is_on(self) -> bool:
        """Whether the device is in alarm now."""
        return self.device_state.alarm(dt_util.utcnow())

    @property
    @override
    def extra_state_attributes(self) -> dict[str, Any]:
        """Why: the alert type, its severity and explanation, and any snooze."""
        state = self.device_state
        on = self.is_on
        return {
            "alert_type": state.alert_type if on else None,
            "severity": state.severity if on else None,
            "explanation": state.explanation if on else None,
            "snoozed_until": state.snoozed_until.isoformat() if state.snoozed_until else None,
        }
