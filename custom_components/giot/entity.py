"""Base entities of GIoT: hub entities on our own device, per-device ones linked helper-style."""

from collections.abc import Callable, Iterable
from typing import override

from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers.device import async_entity_id_to_device
from homeassistant.helpers.device_registry import DeviceEntryType, DeviceInfo
from homeassistant.helpers.dispatcher import async_dispatcher_connect
from homeassistant.helpers.entity import Entity, EntityDescription
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback
from homeassistant.helpers.update_coordinator import CoordinatorEntity

from .const import DOMAIN
from .coordinator import GIoTConfigEntry, GIoTCoordinator, signal_device_updated
from .models import WatchedDevice


def hub_device_info(coordinator: GIoTCoordinator) -> DeviceInfo:
    """Describe the GIoT hub: our own service device, home of hub and network-only entities."""
    return DeviceInfo(
        identifiers={(DOMAIN, coordinator.config_entry.entry_id)},
        entry_type=DeviceEntryType.SERVICE,
        manufacturer="GIoT project",
        model="GIoT hub",
        name="GIoT",
        sw_version=coordinator.hub.model_version or None,
    )


class GIoTEntity(Entity):
    """Defines a GIoT entity."""

    _attr_has_entity_name = True


class GIoTHubEntity(GIoTEntity, CoordinatorEntity[GIoTCoordinator]):
    """An entity about the hub itself (model, training, federation).

    A coordinator entity: it writes its state whenever the coordinator updates its listeners.
    """

    def __init__(self, coordinator: GIoTCoordinator, description: EntityDescription) -> None:
        """Attach the entity to the hub device."""
        super().__init__(coordinator)
        self.entity_description = description
        self._attr_unique_id = f"{coordinator.config_entry.entry_id}_{description.key}"
        self._attr_device_info = hub_device_info(coordinator)


class GIoTDeviceEntity(GIoTEntity):
    """An entity about one watched device.

    A device in Home Assistant's registry keeps its owner: the entity is linked to it through one
    of its entities (``async_entity_id_to_device``) and never claims it. A device seen only on the
    network has no device of its own, so its entities sit on the GIoT hub and carry the device's
    name in theirs (the ``*_of`` translation keys).

    It writes its state when the coordinator sends the device's own signal: the coordinator
    tells entities a few devices at a time, which one listener list for all could not.
    """

    _attr_should_poll = False

    def __init__(
        self,
        hass: HomeAssistant,
        coordinator: GIoTCoordinator,
        device: WatchedDevice,
        description: EntityDescription,
    ) -> None:
        """Link the entity to the watched device, or to the hub for network-only devices."""
        self.coordinator = coordinator
        self.entity_description = description
        self.device_key = device.key
        self._attr_unique_id = f"{coordinator.config_entry.entry_id}_{device.key}_{description.key}"
        linked = (
            async_entity_id_to_device(hass, device.source_entity_id)
            if device.source_entity_id
            else None
        )
        if linked is not None:
            self.device_entry = linked
        else:
            self._attr_device_info = hub_device_info(coordinator)
            self._attr_translation_key = f"{description.translation_key}_of"
            self._attr_translation_placeholders = {"device": device.name}

    @override
    async def async_added_to_hass(self) -> None:
        """Write the state whenever the coordinator tells the device's entities."""
        await super().async_added_to_hass()
        signal = signal_device_updated(self.coordinator.config_entry.entry_id, self.device_key)
        self.async_on_remove(async_dispatcher_connect(self.hass, signal, self.async_write_ha_state))

    @property
    def device_state(self) -> WatchedDevice:
        """What the coordinator knows about the device now."""
        return self.coordinator.devices[self.device_key]

    @property
    @override
    def available(self) -> bool:
        """Available while the device is watched."""
        return self.device_key in self.coordinator.devices


def async_add_device_entities(
    entry: GIoTConfigEntry,
    async_add_entities: AddConfigEntryEntitiesCallback,
    build: Callable[[WatchedDevice], Iterable[Entity]],
) -> None:
    """Add entities for every watched device now, and for devices that appear later."""
    coordinator = entry.runtime_data.coordinator
    known: set[str] = set()

    @callback
    def _add_new() -> None:
        # A forgotten device's entities were removed from the registry; if it comes back it
        # gets new ones.
        known.intersection_update(coordinator.devices)
        new = [state for key, state in coordinator.devices.items() if key not in known]
        known.update(state.key for state in new)
        if new:
            async_add_entities([entity for state in new for entity in build(state)])

    _add_new()
    entry.async_on_unload(coordinator.async_add_listener(_add_new))
