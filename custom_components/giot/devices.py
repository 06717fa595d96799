"""Which devices GIoT watches: chosen in the options, found in the registry, or seen on the LAN.

A flow belongs to the device that originates it: a Home Assistant device where the attributor
knows one (watched from then on, "dynamic"), else the flow's LAN end as a network-only device.
The originator is the connection's initiator, also for NetFlow/IPFIX: the decoder joins a
router's reverse records with their forward ones, or turns a lone answer round onto the host that
asked (``giot_engine.flow_join``), so a DNS or DHCP answer never counts as the server's flow.
Network-only devices are capped (``MAX_NETWORK_DEVICES``): a sweep of spoofed LAN addresses
must not make thousands of entities. Devices GIoT found itself are forgotten, entities and
learnt state included, once unseen for the retention period.
"""

from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime, timedelta
from typing import Any

from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers import entity_registry as er

from giot_engine.hub_detector import HubDetector
from giot_engine.records import DeviceEvent, FlowRecord

from .attribution import DeviceAttributor, NewAddress, is_lan_ip, is_no_host
from .const import CONF_AREAS, CONF_DEVICES, CONF_LABELS, DOMAIN, LOGGER, MAX_NETWORK_DEVICES
from .detector_runner import DetectorRunner
from .hub_store import KNOWN_ADDRESSES_KEY, DeviceRecords, device_from_record
from .models import WatchedDevice
from .store import WindowStore
from .training import FEEDBACK_PREFIX

NETWORK_PREFIX = "net:"


class WatchedDevices(Mapping[str, WatchedDevice]):
    """The watched devices by key, and how devices join and leave.

    Reads like a mapping (entities and actions look devices up); only the methods here add or
    remove one, so the network-device count and the saved records stay right.
    """

    def __init__(
        self,
        hass: HomeAssistant,
        entry_id: str,
        options: Mapping[str, Any],
        *,
        runner: DetectorRunner,
        windows: WindowStore,
        retention: timedelta,
        on_new_address: Callable[[NewAddress], None],
    ) -> None:
        """Prepare an empty set; ``restore`` and ``resolve`` fill it at start."""
        self._hass = hass
        self._entry_id = entry_id
        self._options = options
        self._runner = runner
        self._windows = windows
        self.retention = retention
        self._states: dict[str, WatchedDevice] = {}
        self._saved: dict[str, Mapping[str, Any]] = {}
        self._network_devices = 0
        self.refused = 0  # network-only addresses not watched: MAX_NETWORK_DEVICES
        self.attributor = DeviceAttributor(hass, on_new_address, storage_key=KNOWN_ADDRESSES_KEY)

    def __getitem__(self, key: str) -> WatchedDevice:
        """Look a device's state up."""
        return self._states[key]

    def __iter__(self) -> Iterator[str]:
        """Keys in the order devices were first watched (entities are added in that order)."""
        return iter(self._states)

    def __len__(self) -> int:
        """How many devices are watched."""
        return len(self._states)

    @property
    def has_registry_devices(self) -> bool:
        """Whether a Home Assistant device is watched (it should be sending events)."""
        return any(state.device_id for state in self._states.values())

    # --- start: what was saved, what the options choose ------------------------------------

    def restore(self, saved: DeviceRecords) -> None:
        """Bring network-only devices back as they were.

        A registry device comes back only if it is still watched (``resolve`` picks its saved
        snooze and count up then).
        """
        self._saved = dict(saved)
        for key, record in self._saved.items():
            if key.startswith(NETWORK_PREFIX):
                self._states[key] = device_from_record(key, record["name"], record)
                self._network_devices += 1

    @callback
    def resolve(self) -> None:
        """Watch the devices the options name, directly or by area or label."""
        dev_reg = dr.async_get(self._hass)
        ent_reg = er.async_get(self._hass)
        wanted: set[str] = set(self._options.get(CONF_DEVICES, []))
        for area_id in self._options.get(CONF_AREAS, []):
            wanted.update(d.id for d in dr.async_entries_for_area(dev_reg, area_id))
        for label_id in self._options.get(CONF_LABELS, []):
            wanted.update(d.id for d in dr.async_entries_for_label(dev_reg, label_id))
        for device_id in sorted(wanted):
            if (device := dev_reg.async_get(device_id)) is not None:
                self._track_registry_device(device, ent_reg).dynamic = False  # chosen now
        # Registry devices flows were attributed to come back while they exist (they are
        # forgotten like network-only devices once unseen for the retention period).
        for key, record in self._saved.items():
            device = dev_reg.async_get(key) if record.get("dynamic") else None
            if device is not None and key not in self._states:
                self._track_registry_device(device, ent_reg).dynamic = True

    async def async_forget_unwatched(self) -> None:
        """Forget saved devices that are no longer watched (options changed, device deleted)."""
        stale = sorted(self._saved.keys() - self._states.keys())
        for key in stale:
            self._drop_local(key)
        if stale:
            await self._runner.async_run(_forget_all, self._runner.detector, stale)

    # --- joining: flows and events ------------------------------------------------------------

    @callback
    def attribute(self, flow: FlowRecord) -> str | None:
        """Find the watched device a flow belongs to (watching it from now on if need be).

        A Home Assistant device where the attributor knows one, else the flow's LAN end as a
        network-only device; a flow between remote hosts belongs to nobody.
        """
        if is_no_host(flow.orig_h):  # a broadcast answer or a DHCP discover: nobody's
            return None
        attribution = self.attributor.attribute(flow)
        # The originator is the one behaving: an unknown LAN host scanning the camera is the
        # unknown host's anomaly, not the camera's.
        for device_id, address in (
            (attribution.orig_device_id, flow.orig_h),
            (attribution.resp_device_id, flow.resp_h),
        ):
            if device_id is not None:
                return self._registry_key(device_id)
            if is_lan_ip(address):
                return self._network_key(address)
        return None

    @callback
    def key_of_event(self, event: DeviceEvent) -> str | None:
        """Find the watched device a device event belongs to; None if it is not watched.

        The collector follows the registry: a device that joined a watched area or label
        since setup is watched from its first event (its entities come with the batch).
        """
        key = event.device_id or f"entity:{event.entity_id}"
        if (
            key not in self._states
            and event.device_id is not None
            and (device := dr.async_get(self._hass).async_get(event.device_id)) is not None
        ):
            self._track_registry_device(device, er.async_get(self._hass)).dynamic = False
        return key if key in self._states else None

    @callback
    def _network_key(self, address: str) -> str | None:
        key = f"{NETWORK_PREFIX}{address}"
        if key not in self._states:
            if self._network_devices >= MAX_NETWORK_DEVICES:
                self.refused += 1
                if self.refused == 1:
                    LOGGER.warning(
                        "GIoT watches %s network-only devices already; flows of "
                        "further unknown addresses are not scored",
                        MAX_NETWORK_DEVICES,
                    )
                return None
            self._network_devices += 1
            self._states[key] = WatchedDevice(key=key, name=address, address=address)
        return key

    @callback
    def _registry_key(self, device_id: str) -> str | None:
        """Watch a registry device flows were attributed to (dynamic devices)."""
        if device_id not in self._states:
            if (device := dr.async_get(self._hass).async_get(device_id)) is None:
                return None
            self._track_registry_device(device, er.async_get(self._hass)).dynamic = True
        return device_id

    def _track_registry_device(
        self, device: dr.AnyDeviceEntry, ent_reg: er.EntityRegistry
    ) -> WatchedDevice:
        """Watch a registry device through one of its own entities (never one of ours)."""
        source = next(
            (
                e.entity_id
                for e in sorted(
                    er.async_entries_for_device(ent_reg, device.id), key=lambda e: e.entity_id
                )
                if e.platform != DOMAIN
            ),
            None,
        )
        name = device.name_by_user or device.name or device.id
        state = self._states.get(device.id) or device_from_record(
            device.id, name, self._saved.get(device.id, {})
        )
        state.device_id, state.source_entity_id = device.id, source
        self._states[device.id] = state
        return state

    # --- leaving: snoozes end, found devices are forgotten ------------------------------------

    @callback
    def expire_snoozes(self, now: datetime) -> None:
        """End the snoozes that ran out."""
        for state in self._states.values():
            if state.snoozed_until is not None and now >= state.snoozed_until:
                state.snoozed_until = None

    def unseen(self, now: datetime, since: datetime) -> list[str]:
        """Devices GIoT found itself that were not seen for the retention period.

        ``since`` stands in for a device never seen (it was restored or found without a
        record being scored): the start of this run.
        """
        return [
            key
            for key, state in self._states.items()
            if state.found and now - (state.last_seen or since) >= self.retention
        ]

    async def async_forget(self, key: str) -> None:
        """Forget a device GIoT found itself: entities, windows and what the detector learnt."""
        if (state := self._states.pop(key, None)) is None:
            return  # forgotten meanwhile
        self._network_devices -= state.device_id is None
        self._saved.pop(key, None)
        self._drop_local(key)
        if state.address is not None:
            self.attributor.async_forget(state.address)  # announced again if it comes back
        await self._runner.async_call(self._runner.detector.forget, key)
        LOGGER.debug("Forgot %s: not seen for %s", state.name, self.retention)

    @callback
    def _drop_local(self, key: str) -> None:
        """Remove a device's entities and its (feedback) windows; the detector is separate."""
        ent_reg = er.async_get(self._hass)
        prefix = f"{self._entry_id}_{key}_"
        for entity in er.async_entries_for_config_entry(ent_reg, self._entry_id):
            if entity.unique_id.startswith(prefix):
                ent_reg.async_remove(entity.entity_id)
        self._windows.remove_device(key)
        self._windows.remove_device(f"{FEEDBACK_PREFIX}{key}")


def _forget_all(detector: HubDetector, keys: Iterable[str]) -> None:
    for key in keys:
        detector.forget(key)
