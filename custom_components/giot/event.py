"""Alert event entities: automations trigger on these (device triggers are frozen in HA)."""

from typing import Any, override

from homeassistant.components.event import EventEntity, EventEntityDescription
from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers.dispatcher import async_dispatcher_connect
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback

from .alerts import signal_alert
from .const import HUB_KEY, AlertType
from .coordinator import GIoTConfigEntry, GIoTCoordinator
from .entity import GIoTDeviceEntity, GIoTHubEntity, async_add_device_entities

# Events are pushed by the coordinator; nothing is polled.
PARALLEL_UPDATES = 0

DEVICE_ALERTS = EventEntityDescription(
    key="alert",
    translation_key="alert",
    event_types=[
        AlertType.PORT_SCAN,
        AlertType.C2_BEACON,
        AlertType.FLOOD,
        AlertType.UNUSUAL_ACTIVITY,
        AlertType.DEVICE_SILENT,
        AlertType.STUCK_STATE,
    ],
)
NETWORK_EVENTS = EventEntityDescription(
    key="network",
    translation_key="network",
    event_types=[AlertType.NEW_DEVICE],
)


async def async_setup_entry(
    hass: HomeAssistant,
    entry: GIoTConfigEntry,
    async_add_entities: AddConfigEntryEntitiesCallback,
) -> None:
    """Set up the hub's network events and an alert entity for every watched device."""
    coordinator = entry.runtime_data.coordinator
    async_add_entities([GIoTNetworkEvent(coordinator, NETWORK_EVENTS)])
    async_add_device_entities(
        entry,
        async_add_entities,
        lambda device: [GIoTDeviceAlertEvent(hass, coordinator, device, DEVICE_ALERTS)],
    )


class _AlertMixin(EventEntity):
    """Listens for the alerts of one key (a device, or the hub) while the entity is added."""

    coordinator: GIoTCoordinator

    @property
    def alert_key(self) -> str:
        """Whose alerts this entity reports."""
        return HUB_KEY

    @override
    async def async_added_to_hass(self) -> None:
        """Listen for alerts."""
        await super().async_added_to_hass()
        signal = signal_alert(self.coordinator.config_entry.entry_id, self.alert_key)
        self.async_on_remove(async_dispatcher_connect(self.hass, signal, self._async_alert))

    @callback
    def _async_alert(self, alert: AlertType, data: dict[str, Any]) -> None:
        self._trigger_event(alert, data)
        self.async_write_ha_state()


class GIoTDeviceAlertEvent(GIoTDeviceEntity, _AlertMixin):
    """Fires an alert type (port_scan ... stuck_state) with severity, explanation and score."""

    @property
    @override
    def alert_key(self) -> str:
        """Alerts of the watched device."""
        return self.device_key


class GIoTNetworkEvent(GIoTHubEntity, _AlertMixin):
    """Fires new_device when an unknown address appears on the home network."""
