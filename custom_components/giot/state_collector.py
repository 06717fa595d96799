"""Home Assistant state changes of the watched entities, as engine ``DeviceEvent``s.

What a device does is its state transitions, who caused them (a person, an automation, the device
itself) and a few behaviour attributes (a light's brightness, a thermostat's action). Everything
else a state carries (names, pictures, coordinates, media titles) is dropped here, before anything
is stored or learnt, both for privacy and because it is noise to the model. ``unavailable`` and
``unknown`` transitions are kept: a device dropping off is behaviour too.
"""

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from homeassistant.const import ATTR_DEVICE_CLASS
from homeassistant.core import (
    CALLBACK_TYPE,
    Event,
    EventStateChangedData,
    HomeAssistant,
    State,
    callback,
)
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers import entity_registry as er
from homeassistant.helpers.event import async_track_state_change_event

from giot_engine.event_features import device_event
from giot_engine.event_features import event_source as engine_event_source
from giot_engine.records import DeviceEvent, EventSource

from .const import DOMAIN, LOGGER

MAX_ATTRIBUTE_LENGTH = 64

# Attributes that describe behaviour, per domain; everything else is dropped.
ATTRIBUTE_ALLOW_LIST: Mapping[str, tuple[str, ...]] = {
    "light": ("brightness", "color_mode", "color_temp_kelvin", "effect"),
    "climate": ("hvac_action", "preset_mode", "fan_mode", "temperature"),
    "fan": ("percentage", "preset_mode", "direction", "oscillating"),
    "cover": ("current_position", "current_tilt_position"),
    "media_player": ("source", "media_content_type", "is_volume_muted"),
    "vacuum": ("status", "fan_speed"),
    "water_heater": ("operation_mode", "away_mode"),
    "humidifier": ("mode", "action"),
    "lock": ("changed_by",),
    "alarm_control_panel": ("changed_by",),
    "lawn_mower": ("activity",),
    "valve": ("current_position",),
    "device_tracker": ("source_type",),
}
COMMON_ATTRIBUTES = ("battery_level",)  # a few integrations still report battery as attribute


def allowed_attributes(domain: str, attributes: Mapping[str, Any]) -> dict[str, str]:
    """Keep the behaviour attributes of a domain, as short strings; drop everything else."""
    keep: dict[str, str] = {}
    for name in (*ATTRIBUTE_ALLOW_LIST.get(domain, ()), *COMMON_ATTRIBUTES):
        value = attributes.get(name)
        if value is None or isinstance(value, (dict, list, tuple, set)):
            continue
        text = str(value)
        if len(text) <= MAX_ATTRIBUTE_LENGTH:
            keep[name] = text
    return keep


def event_source(event: Event[EventStateChangedData]) -> EventSource:
    """Who caused a change: a person (user id), an automation or script (parent), or the device."""
    context = event.context
    return engine_event_source(
        event.data["entity_id"].partition(".")[0],
        user_id=context.user_id,
        parent_id=context.parent_id,
    )


@dataclass(slots=True)
class CollectorStats:
    """What the collector turned into events and what it ignored, by reason."""

    accepted: int = 0
    ignored: Counter[str] = field(default_factory=Counter)
    callback_errors: int = 0
    monitored: int = 0


@dataclass(frozen=True, slots=True)
class MonitoredSelection:
    """What the options name: entities directly, or every entity of devices, areas, labels."""

    entity_ids: frozenset[str] = frozenset()
    device_ids: frozenset[str] = frozenset()
    area_ids: frozenset[str] = frozenset()
    label_ids: frozenset[str] = frozenset()

    @classmethod
    def from_options(
        cls,
        *,
        entity_ids: Iterable[str] = (),
        device_ids: Iterable[str] = (),
        area_ids: Iterable[str] = (),
        label_ids: Iterable[str] = (),
    ) -> MonitoredSelection:
        """Build a selection from option lists."""
        return cls(
            frozenset(entity_ids), frozenset(device_ids), frozenset(area_ids), frozenset(label_ids)
        )


@callback
def async_resolve_monitored_entities(
    hass: HomeAssistant, selection: MonitoredSelection
) -> set[str]:
    """Entity ids a selection stands for, through the entity, device, area and label registries.

    As in Home Assistant's own targeting, an entity is in an area if it is placed there or if it
    has no area of its own and its device is there, and a device's label covers its entities.
    Disabled entities and GIoT's own entities are left out: they change nothing, or would make
    GIoT watch itself. Entity ids named directly are kept even without a registry entry.
    """
    ent_reg = er.async_get(hass)
    dev_reg = dr.async_get(hass)
    devices = set(selection.device_ids)
    for area_id in selection.area_ids:
        devices.update(d.id for d in dr.async_entries_for_area(dev_reg, area_id))
    for label_id in selection.label_ids:
        devices.update(d.id for d in dr.async_entries_for_label(dev_reg, label_id))
    candidates: list[er.RegistryEntry] = []
    for device_id in devices:
        candidates.extend(er.async_entries_for_device(ent_reg, device_id))
    for area_id in selection.area_ids:
        candidates.extend(er.async_entries_for_area(ent_reg, area_id))
    for label_id in selection.label_ids:
        candidates.extend(er.async_entries_for_label(ent_reg, label_id))

    def wanted(entry: er.RegistryEntry) -> bool:
        if entry.disabled or entry.platform == DOMAIN:
            return False
        device = dev_reg.async_get(entry.device_id) if entry.device_id else None
        if entry.device_id in selection.device_ids or entry.labels & selection.label_ids:
            return True
        if device is not None and device.labels & selection.label_ids:
            return True
        area_id = entry.area_id or (device.area_id if device is not None else None)
        return area_id in selection.area_ids

    found = {entry.entity_id for entry in candidates if wanted(entry)}
    for entity_id in selection.entity_ids:
        entry = ent_reg.async_get(entity_id)
        if entry is None or not (entry.disabled or entry.platform == DOMAIN):
            found.add(entity_id)
    return found


class StateCollector:
    """Turn the watched entities' state changes into ``DeviceEvent``s for ``on_event``."""

    def __init__(
        self,
        hass: HomeAssistant,
        selection: MonitoredSelection | Iterable[str],
        on_event: Callable[[DeviceEvent], None],
    ) -> None:
        """Watch a selection (re-resolved on registry changes) or a fixed set of entity ids."""
        self.hass = hass
        self._selection = (
            selection
            if isinstance(selection, MonitoredSelection)
            else MonitoredSelection(entity_ids=frozenset(selection))
        )
        self._on_event = on_event
        self._stats = CollectorStats()
        self._entities: set[str] = set()
        self._unsub_states: CALLBACK_TYPE | None = None
        self._unsub_registry: list[CALLBACK_TYPE] = []

    @property
    def stats(self) -> CollectorStats:
        """Counters for diagnostics."""
        self._stats.monitored = len(self._entities)
        return self._stats

    @property
    def entity_ids(self) -> frozenset[str]:
        """The entities watched now."""
        return frozenset(self._entities)

    async def async_start(self) -> None:
        """Resolve the selection and listen; follow registry changes that alter it."""
        self._async_refresh()
        for event_type in (
            er.EVENT_ENTITY_REGISTRY_UPDATED,
            dr.EVENT_DEVICE_REGISTRY_UPDATED,
        ):
            self._unsub_registry.append(
                self.hass.bus.async_listen(event_type, self._async_registry_changed)
            )

    async def async_stop(self) -> None:
        """Stop listening."""
        while self._unsub_registry:
            self._unsub_registry.pop()()
        if self._unsub_states is not None:
            self._unsub_states()
            self._unsub_states = None

    @callback
    def async_set_selection(self, selection: MonitoredSelection) -> None:
        """Watch another selection (the options changed)."""
        self._selection = selection
        if self._unsub_states is not None or self._unsub_registry:
            self._async_refresh()

    @callback
    def _async_registry_changed(self, _event: Event[Any]) -> None:
        self._async_refresh()

    @callback
    def _async_refresh(self) -> None:
        entities = async_resolve_monitored_entities(self.hass, self._selection)
        if entities == self._entities and (self._unsub_states is not None or not entities):
            return  # registry changes that do not change the selection are many in a busy home
        before = len(self._entities)
        if self._unsub_states is not None:
            self._unsub_states()
            self._unsub_states = None
        self._entities = entities
        if entities:
            self._unsub_states = async_track_state_change_event(
                self.hass, sorted(entities), self._async_state_changed
            )
        LOGGER.debug("GIoT now watches %d entities (was %d)", len(entities), before)

    @callback
    def _async_state_changed(self, event: Event[EventStateChangedData]) -> None:
        device_event = self.to_device_event(event)
        if device_event is None:
            return
        self._stats.accepted += 1
        try:
            self._on_event(device_event)
        except Exception:
            self._stats.callback_errors += 1
            LOGGER.exception("GIoT event consumer failed on %s", device_event.entity_id)

    @callback
    def to_device_event(self, event: Event[EventStateChangedData]) -> DeviceEvent | None:
        """Map one ``state_changed`` event; None (counted) where it is no behaviour."""
        data = event.data
        new: State | None = data["new_state"]
        old: State | None = data["old_state"]
        if new is None:
            self._stats.ignored["removed"] += 1
            return None
        domain = new.domain
        attributes = allowed_attributes(domain, new.attributes)
        if (
            old is not None
            and old.state == new.state
            and attributes == allowed_attributes(domain, old.attributes)
        ):
            self._stats.ignored["attributes_only"] += 1  # e.g. a sensor's friendly name
            return None
        entry = er.async_get(self.hass).async_get(new.entity_id)
        device_class = new.attributes.get(ATTR_DEVICE_CLASS)
        if device_class is None and entry is not None:
            device_class = entry.device_class or entry.original_device_class
        return device_event(
            new.last_updated_timestamp,
            new.entity_id,
            domain,
            new.state,
            old.state if old is not None else None,
            source=event_source(event),
            device_class=str(device_class) if device_class is not None else None,
            device_id=entry.device_id if entry is not None else None,
            attributes=attributes,
        )
