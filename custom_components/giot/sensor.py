"""Sensors: per-device anomaly score and behaviour description; hub model and federation state."""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from operator import attrgetter
from typing import Any, override

from homeassistant.components.sensor import (
    SensorDeviceClass,
    SensorEntity,
    SensorEntityDescription,
    SensorStateClass,
)
from homeassistant.const import EntityCategory, UnitOfInformation
from homeassistant.core import HomeAssistant
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback
from homeassistant.util import dt as dt_util

from .const import FederationStatus
from .coordinator import GIoTConfigEntry, GIoTCoordinator
from .entity import GIoTDeviceEntity, GIoTHubEntity, async_add_device_entities
from .models import WatchedDevice

# The coordinator pushes; entities only read what it holds.
PARALLEL_UPDATES = 0

type SensorValue = str | int | float | datetime | None


@dataclass(frozen=True, kw_only=True)
class GIoTDeviceSensorEntityDescription(SensorEntityDescription):
    """A per-device sensor and how to read it."""

    value_fn: Callable[[WatchedDevice], SensorValue]
    attributes_fn: Callable[[WatchedDevice], dict[str, Any]] | None = None


@dataclass(frozen=True, kw_only=True)
class GIoTHubSensorEntityDescription(SensorEntityDescription):
    """A hub sensor and how to read it."""

    value_fn: Callable[[GIoTCoordinator], SensorValue]
    attributes_fn: Callable[[GIoTCoordinator], dict[str, Any]] | None = None


def _model_attributes(coordinator: GIoTCoordinator) -> dict[str, Any]:
    """Which scorer is active (bigram counts until the model beats them) and what it learnt."""
    info = coordinator.detector.model_info
    return {
        key: info.get(key)
        for key in ("scorer", "bigram_weight", "parameters", "trained_windows", "last_loss")
    }


DEVICE_SENSORS = (
    GIoTDeviceSensorEntityDescription(
        key="anomaly_score",
        translation_key="anomaly_score",
        state_class=SensorStateClass.MEASUREMENT,
        suggested_display_precision=2,
        # while the anomaly sensor is on, the alarm episode's peak; else the latest record's
        value_fn=lambda device: device.shown_score(dt_util.utcnow()),
    ),
    GIoTDeviceSensorEntityDescription(
        key="behaviour",
        translation_key="behaviour",
        value_fn=lambda device: device.description.short if device.description else None,
        attributes_fn=lambda device: {
            "description": device.description.full if device.description else None,
            "explanation": device.explanation,
            "observations": device.observations,
        },
    ),
)

HUB_SENSORS = (
    GIoTHubSensorEntityDescription(
        key="model_version",
        translation_key="model_version",
        entity_category=EntityCategory.DIAGNOSTIC,
        value_fn=lambda coordinator: coordinator.hub.model_version,
        attributes_fn=_model_attributes,
    ),
    GIoTHubSensorEntityDescription(
        key="model_origin",
        translation_key="model_origin",
        entity_category=EntityCategory.DIAGNOSTIC,
        value_fn=lambda coordinator: coordinator.hub.model_origin,
    ),
    GIoTHubSensorEntityDescription(
        key="last_training",
        translation_key="last_training",
        device_class=SensorDeviceClass.TIMESTAMP,
        entity_category=EntityCategory.DIAGNOSTIC,
        value_fn=lambda coordinator: coordinator.hub.last_training,
    ),
    GIoTHubSensorEntityDescription(
        key="federation_round",
        translation_key="federation_round",
        entity_category=EntityCategory.DIAGNOSTIC,
        value_fn=lambda coordinator: coordinator.hub.federation_round,
    ),
    GIoTHubSensorEntityDescription(
        key="last_participation",
        translation_key="last_participation",
        device_class=SensorDeviceClass.TIMESTAMP,
        entity_category=EntityCategory.DIAGNOSTIC,
        value_fn=lambda coordinator: coordinator.hub.last_participation,
    ),
    *(
        GIoTHubSensorEntityDescription(
            key=key,
            translation_key=key,
            device_class=SensorDeviceClass.DATA_SIZE,
            native_unit_of_measurement=UnitOfInformation.BYTES,
            suggested_unit_of_measurement=UnitOfInformation.KIBIBYTES,
            suggested_display_precision=1,
            state_class=SensorStateClass.TOTAL_INCREASING
            if key.endswith("_total")
            else SensorStateClass.MEASUREMENT,
            entity_category=EntityCategory.DIAGNOSTIC,
            value_fn=attrgetter(f"hub.{key}"),
        )
        # the last round's frames, and every frame over the link
        for key in ("bytes_up", "bytes_down", "bytes_up_total", "bytes_down_total")
    ),
    GIoTHubSensorEntityDescription(
        key="federation_status",
        translation_key="federation_status",
        device_class=SensorDeviceClass.ENUM,
        options=[status.value for status in FederationStatus],
        entity_category=EntityCategory.DIAGNOSTIC,
        value_fn=lambda coordinator: coordinator.federation_status.value,
    ),
)


async def async_setup_entry(
    hass: HomeAssistant,
    entry: GIoTConfigEntry,
    async_add_entities: AddConfigEntryEntitiesCallback,
) -> None:
    """Set up hub sensors, and score and behaviour sensors for every watched device."""
    coordinator = entry.runtime_data.coordinator
    async_add_entities(GIoTHubSensor(coordinator, description) for description in HUB_SENSORS)
    async_add_device_entities(
        entry,
        async_add_entities,
        lambda device: [
            GIoTDeviceSensor(hass, coordinator, device, description)
            for description in DEVICE_SENSORS
        ],
    )


class GIoTHubSensor(GIoTHubEntity, SensorEntity):
    """A hub sensor: the model, its training, federated rounds and the node link."""

    entity_description: GIoTHubSensorEntityDescription

    @property
    @override
    def native_value(self) -> SensorValue:
        """Read the hub state."""
        return self.entity_description.value_fn(self.coordinator)

    @property
    @override
    def extra_state_attributes(self) -> dict[str, Any] | None:
        """The model's details, for the model-version sensor."""
        if (attributes_fn := self.entity_description.attributes_fn) is None:
            return None
        return attributes_fn(self.coordinator)


class GIoTDeviceSensor(GIoTDeviceEntity, SensorEntity):
    """A per-device sensor: the score (``WatchedDevice.shown_score``), or the behaviour."""

    entity_description: GIoTDeviceSensorEntityDescription

    @property
    @override
    def native_value(self) -> SensorValue:
        """Read the device state."""
        return self.entity_description.value_fn(self.device_state)

    @property
    @override
    def extra_state_attributes(self) -> dict[str, Any] | None:
        """The full description and the last explanation, for the behaviour sensor."""
        if (attributes_fn := self.entity_description.attributes_fn) is None:
            return None
        return attributes_fn(self.device_state)
