"""Runtime state of a GIoT config entry: the coordinator that owns sources, detector and store.

Collectors push flows and device events into the coordinator from the event loop; the coordinator
queues them, hands them to the detector in batches from the executor (one batch at a time, because
the detector keeps per-device state and is not thread-safe), turns what comes back into
per-device alarms and alert events, and keeps the hub-level state the hub entities show. The
detector scores and trains in a process of its own (``detector_process``), off Home Assistant's GIL.
"""

import asyncio
import math
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import numpy as np
from homeassistant.config_entries import ConfigEntry
from homeassistant.const import EVENT_HOMEASSISTANT_STOP
from homeassistant.core import CALLBACK_TYPE, Event, HomeAssistant, callback
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers import entity_registry as er
from homeassistant.helpers import issue_registry as ir
from homeassistant.helpers.event import (
    async_call_later,
    async_track_time_change,
    async_track_time_interval,
)
from homeassistant.helpers.storage import Store
from homeassistant.helpers.update_coordinator import DataUpdateCoordinator
from homeassistant.util import dt as dt_util

from giot_engine.detector_process import DetectorError, ProcessDetector
from giot_engine.hub_detector import (
    BatchResult,
    Description,
    HubDetector,
    HubVerdict,
    InProcessDetector,
    alarming,
)
from giot_engine.model_manager import N_POSITIONS, TrainResult
from giot_engine.records import DeviceEvent, FlowRecord

from .attribution import DeviceAttributor, NewAddress, is_lan_ip
from .const import (
    ABSENCE_INTERVAL,
    ALARM_HOLD,
    AWAY_EVENT_OFFSET,
    AWAY_FLOW_OFFSET,
    BATCH_MAX,
    CONF_AREAS,
    CONF_DEVICES,
    CONF_FEDERATION,
    CONF_LABELS,
    CONF_NETFLOW_PORT,
    CONF_NODE_HOST,
    CONF_NODE_PORT,
    CONF_RETENTION_DAYS,
    CONF_SENSITIVITY,
    CONF_ZEEK_PATH,
    DEFAULT_FEDERATION,
    DEFAULT_RETENTION_DAYS,
    DEFAULT_SENSITIVITY,
    DOMAIN,
    HOUSEKEEPING_INTERVAL,
    HUB_KEY,
    LOGGER,
    MAX_NETWORK_DEVICES,
    NO_DATA_AFTER,
    SAVE_DELAY_S,
    SENSITIVITY_OFFSET,
    AlertType,
    FederationStatus,
    Sensitivity,
    Severity,
)
from .netflow_listener import NetFlowListener
from .state_collector import MonitoredSelection, StateCollector
from .store import WindowStore
from .zeek_tail import TailStatus, ZeekTail

type GIoTConfigEntry = ConfigEntry[GIoTRuntimeData]
type AlertListener = Callable[[AlertType, dict[str, Any]], None]

STORAGE_VERSION = 1
KNOWN_ADDRESSES_KEY = f"{DOMAIN}.known_addresses"
MAX_PENDING = 100_000
MIN_FREE_BYTES = 50 * 1024 * 1024
# Loop-side pacing under load: flows attributed per slice and entity states written per slice
# (each slice is one step of the loop; attributing a flow takes ~6 us on the development VM,
# `GIOT_BENCH_SLICES=1 scripts/bench ha-load`, so a slice of flows ~0.75 ms: two slices in one
# step plus a collector pause stay under 5 ms), entity updates while a backlog is worked off,
# windows handed to the store (seconds).
ATTRIBUTE_SLICE = 128
NOTIFY_SLICE = 8
UPDATE_EVERY_S = 5.0
WINDOW_FLUSH_S = 60.0
# Local training: nightly at this hour when this many windows are new; feedback windows count
# this many times in the training set.
TRAIN_HOUR = 3
TRAIN_MIN_NEW_WINDOWS = 256
FEEDBACK_PREFIX = "feedback:"
FEEDBACK_REPEAT = 8

# Families the engine's signature stage names, mapped onto the alert event types.
FAMILY_TO_ALERT: Mapping[str, AlertType] = {
    "port_scan": AlertType.PORT_SCAN,
    "scan": AlertType.PORT_SCAN,
    "cnc": AlertType.C2_BEACON,
    "c2": AlertType.C2_BEACON,
    "c2_beacon": AlertType.C2_BEACON,
    "ddos": AlertType.FLOOD,
    "flood": AlertType.FLOOD,
    "silent": AlertType.DEVICE_SILENT,
    "stuck": AlertType.STUCK_STATE,
}


@dataclass(frozen=True, slots=True)
class NodeAddress:
    """Where the GIoT node (the Flower SuperNode beside Home Assistant) listens."""

    host: str
    port: int


@dataclass(slots=True)
class DeviceState:
    """What GIoT knows about one watched device.

    ``key`` is the Home Assistant device id for registry devices and ``net:<address>`` for
    devices only seen on the network. ``source_entity_id`` is an entity of the registry device
    that our entities link through (helper style: we never claim the device itself).
    ``dynamic`` marks a registry device watched because flows were attributed to it, not
    because an option chose it. ``absence`` is the silent / stuck alarm while it lasts.
    """

    key: str
    name: str
    device_id: str | None = None
    source_entity_id: str | None = None
    address: str | None = None
    score: float | None = None
    alert_type: AlertType | None = None
    severity: Severity | None = None
    explanation: str | None = None
    alarm_until: datetime | None = None
    snoozed_until: datetime | None = None
    last_seen: datetime | None = None
    description: Description | None = None
    observations: int = 0
    last_fired: dict[AlertType, datetime] = field(default_factory=dict)
    absence: AlertType | None = None
    absence_announced: bool = False
    dynamic: bool = False

    def alarm(self, now: datetime) -> bool:
        """Whether the device is in alarm now (a snooze keeps it quiet).

        An absence alarm (silent, stuck) lasts until the device's next record; any other
        alarm is held for a while after the last alarming verdict.
        """
        if self.snoozed_until is not None and now < self.snoozed_until:
            return False
        return self.absence is not None or (self.alarm_until is not None and now < self.alarm_until)

    @property
    def found(self) -> bool:
        """Whether GIoT found the device itself (no option chose it): it may be forgotten."""
        return self.device_id is None or self.dynamic


@dataclass(slots=True)
class HubState:
    """Hub-level state shown by the hub entities and kept across restarts.

    ``federation_round`` is a placeholder filled in once the node link (the federation issue)
    exists; until then it stays None and the status says why nothing happens.
    """

    model_version: str = ""
    last_training: datetime | None = None
    federation_round: int | None = None
    federation_paused: bool = False
    away_mode: bool = False
    training: bool = False


class GIoTCoordinator(DataUpdateCoordinator[dict[str, DeviceState]]):
    """Owns the flow/event sources, the detector and the stored state of one entry.

    Nothing is polled: collectors push, ``async_set_updated_data`` tells the entities.
    """

    config_entry: GIoTConfigEntry

    def __init__(
        self,
        hass: HomeAssistant,
        entry: GIoTConfigEntry,
        detector: HubDetector | None = None,
    ) -> None:
        """Prepare the coordinator; ``async_start`` loads state and starts the sources."""
        self.retention = timedelta(
            days=float(entry.options.get(CONF_RETENTION_DAYS, DEFAULT_RETENTION_DAYS))
        )
        self.windows = WindowStore(
            hass, retention_days=self.retention.days, save_delay_s=SAVE_DELAY_S
        )
        self.detector: HubDetector = detector or ProcessDetector(self.windows.directory)
        self.devices: dict[str, DeviceState] = {}
        self.hub = HubState()
        self.sensitivity = Sensitivity(entry.options.get(CONF_SENSITIVITY, DEFAULT_SENSITIVITY))
        self.federation_enabled: bool = entry.options.get(CONF_FEDERATION, DEFAULT_FEDERATION)
        self.node = _node_from_entry(entry)
        self.dropped = 0
        self.refused_devices = 0  # network-only addresses not watched: MAX_NETWORK_DEVICES
        self._network_devices = 0
        self.last_data: datetime | None = None
        self.source_errors: dict[str, str] = {}
        self.storage_free: int | None = None
        self._started = dt_util.utcnow()
        self._store: Store[dict[str, Any]] = Store(
            hass, STORAGE_VERSION, f"{DOMAIN}.{entry.entry_id}", private=True
        )
        self._raw_flows: list[FlowRecord] = []
        self._pending_flows: list[tuple[str, FlowRecord]] = []
        self._windows_stored = -math.inf
        self._pending_events: list[tuple[str, DeviceEvent]] = []
        self._flush_task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._train_lock = asyncio.Lock()
        self._alert_listeners: dict[str, list[AlertListener]] = {}
        self._unsub: list[CALLBACK_TYPE] = []
        self._cancel_save: CALLBACK_TYPE | None = None
        self._saved_devices: dict[str, Any] = {}
        self._unsub_stop: CALLBACK_TYPE | None = None
        self._shut_down = False
        options = entry.options
        self.state_collector = StateCollector(
            hass,
            MonitoredSelection.from_options(
                device_ids=options.get(CONF_DEVICES, []),
                area_ids=options.get(CONF_AREAS, []),
                label_ids=options.get(CONF_LABELS, []),
            ),
            self.async_add_event,
        )
        self.attributor = DeviceAttributor(
            hass, self._on_new_device, storage_key=KNOWN_ADDRESSES_KEY
        )
        self.netflow: NetFlowListener | None = None
        if port := options.get(CONF_NETFLOW_PORT):
            self.netflow = NetFlowListener(hass, self.async_add_flows, port=int(port))
        self.zeek: ZeekTail | None = None
        if path := options.get(CONF_ZEEK_PATH):
            self.zeek = ZeekTail(hass, path, self.async_add_flows, on_status=self._on_zeek_status)
        # Last: this registers ``async_shutdown`` to run on unload, which needs all of the above.
        super().__init__(hass, LOGGER, config_entry=entry, name=DOMAIN)

    # --- lifecycle ---------------------------------------------------------------------------

    async def async_start(self) -> None:
        """Restore stored state, resolve the watched devices and check the flow sources."""
        stored = await self._store.async_load() or {}
        self._restore(stored)
        await self.windows.async_load()
        for key in self.windows.devices():
            if self.windows.windows(key).shape[1] != N_POSITIONS:  # older tokenizer or model
                self.windows.remove_device(key)
        await self._async_load_detector()
        self.hub.model_version = self.detector.model_version
        self._resolve_devices()
        await self._async_forget_unwatched()
        descriptions = await self.hass.async_add_executor_job(
            lambda: {key: self.detector.describe(key) for key in self.devices}
        )
        for key, description in descriptions.items():
            self.devices[key].description = description
        await self.attributor.async_start()
        await self.state_collector.async_start()
        await self._async_start_netflow()
        if self.zeek is not None:
            await self.zeek.async_start()
        self._unsub.append(
            async_track_time_interval(
                self.hass, self._async_housekeeping, HOUSEKEEPING_INTERVAL, cancel_on_shutdown=True
            )
        )
        self._unsub.append(
            async_track_time_interval(
                self.hass, self._async_absence, ABSENCE_INTERVAL, cancel_on_shutdown=True
            )
        )
        self._unsub.append(
            async_track_time_change(
                self.hass, self._async_scheduled_train, hour=TRAIN_HOUR, minute=0, second=0
            )
        )
        # Entries are not unloaded when Home Assistant stops: save then too.
        self._unsub_stop = self.hass.bus.async_listen_once(
            EVENT_HOMEASSISTANT_STOP, self._async_on_stop
        )
        await self._async_housekeeping(dt_util.utcnow())
        await self._async_notify()

    async def _async_load_detector(self) -> None:
        """Load the model and the saved state into the detector (its process starts now).

        Where no process can be started (an unusual host), detection runs in Home Assistant's
        executor instead, as it did before the detector had a process of its own.
        """
        try:
            await self.hass.async_add_executor_job(self.detector.load_model)
        except DetectorError as err:
            if not isinstance(self.detector, ProcessDetector):
                raise
            LOGGER.warning("GIoT detects in Home Assistant's process instead: %s", err)
            await self.hass.async_add_executor_job(self.detector.close)
            self.detector = InProcessDetector(self.windows.directory)
            await self.hass.async_add_executor_job(self.detector.load_model)
        loaded = await self.hass.async_add_executor_job(
            self.detector.load_state_file, self.windows.detector_file
        )
        if loaded == "unreadable":
            self.windows.record_unreadable()

    async def _async_on_stop(self, _event: Event) -> None:
        self._unsub_stop = None  # a fired listen_once is gone already
        await self.async_shutdown()

    async def async_shutdown(self) -> None:
        """Stop the sources, finish queued work, save everything and close the detector.

        Once: Home Assistant's stop event comes first, the entry's own shutdown may follow.
        """
        if self._shut_down:
            return
        self._shut_down = True
        await super().async_shutdown()
        while self._unsub:
            self._unsub.pop()()
        if self._unsub_stop is not None:
            self._unsub_stop()
            self._unsub_stop = None
        await self.state_collector.async_stop()
        if self.netflow is not None:
            await self.netflow.async_stop()
        await self.attributor.async_stop()
        if self.zeek is not None:
            await self.zeek.async_stop()
        if self._cancel_save is not None:
            self._cancel_save()
            self._cancel_save = None
        if self._flush_task is not None:
            await self._flush_task
        await self._async_store_windows()
        await self._async_save()
        await self.windows.async_close()
        await self.hass.async_add_executor_job(self.detector.close)

    def _restore(self, stored: Mapping[str, Any]) -> None:
        hub = stored.get("hub", {})
        self.hub.federation_round = hub.get("federation_round")
        self.hub.federation_paused = bool(hub.get("federation_paused", False))
        self.hub.away_mode = bool(hub.get("away_mode", False))
        if last := hub.get("last_training"):
            self.hub.last_training = dt_util.parse_datetime(last)
        # Network-only devices come back as they were; a registry device only if it is still
        # watched (``_track_registry_device`` picks its saved snooze and count up then).
        self._saved_devices = dict(stored.get("devices", {}))
        for key, saved in self._saved_devices.items():
            if key.startswith("net:"):
                self.devices[key] = self._restored_state(key, saved["name"], saved)
                self._network_devices += 1
        if last_data := stored.get("last_data"):
            self.last_data = dt_util.parse_datetime(last_data)

    @staticmethod
    def _restored_state(key: str, name: str, saved: Mapping[str, Any]) -> DeviceState:
        state = DeviceState(key=key, name=name, address=saved.get("address"))
        if until := saved.get("snoozed_until"):
            state.snoozed_until = dt_util.parse_datetime(until)
        if last_seen := saved.get("last_seen"):
            state.last_seen = dt_util.parse_datetime(last_seen)
        state.observations = int(saved.get("observations", 0))
        state.dynamic = bool(saved.get("dynamic", False))
        return state

    async def _async_save(self) -> None:
        """Hub state to HA's store; the detector writes its state (home behaviour) itself.

        The window store counts how that write went (a full disk raises the storage repair).
        """
        try:
            async with self._lock:
                err = await self.hass.async_add_executor_job(
                    self.detector.save_state, self.windows.detector_file
                )
        except DetectorError as failed:
            LOGGER.warning("GIoT's detector state was not saved: %s", failed)
        else:
            self.windows.record_detector_save(err)
        await self._store.async_save(self._snapshot())

    def _snapshot(self) -> dict[str, Any]:
        return {
            "hub": {
                "federation_round": self.hub.federation_round,
                "federation_paused": self.hub.federation_paused,
                "away_mode": self.hub.away_mode,
                "last_training": _iso(self.hub.last_training),
            },
            "devices": {
                key: {
                    "name": state.name,
                    "address": state.address,
                    "snoozed_until": _iso(state.snoozed_until),
                    "observations": state.observations,
                    "last_seen": _iso(state.last_seen),
                    "dynamic": state.dynamic,
                }
                for key, state in self.devices.items()
            },
            "last_data": _iso(self.last_data),
        }

    @callback
    def _async_schedule_save(self) -> None:
        """Save soon, coalescing bursts: the detector state is read in the executor."""
        if self._cancel_save is None:
            self._cancel_save = async_call_later(self.hass, SAVE_DELAY_S, self._async_delayed_save)

    async def _async_delayed_save(self, _now: datetime) -> None:
        self._cancel_save = None
        await self._async_save()

    # --- devices -----------------------------------------------------------------------------

    @callback
    def _resolve_devices(self) -> None:
        """Watch the devices the options name, directly or by area or label."""
        options = self.config_entry.options
        dev_reg = dr.async_get(self.hass)
        ent_reg = er.async_get(self.hass)
        wanted: set[str] = set(options.get(CONF_DEVICES, []))
        for area_id in options.get(CONF_AREAS, []):
            wanted.update(d.id for d in dr.async_entries_for_area(dev_reg, area_id))
        for label_id in options.get(CONF_LABELS, []):
            wanted.update(d.id for d in dr.async_entries_for_label(dev_reg, label_id))
        for device_id in sorted(wanted):
            if (device := dev_reg.async_get(device_id)) is not None:
                self._track_registry_device(device, ent_reg).dynamic = False  # chosen now
        # Registry devices flows were attributed to come back while they exist (they are
        # forgotten like network-only devices once unseen for the retention period).
        for key, saved in self._saved_devices.items():
            device = dev_reg.async_get(key) if saved.get("dynamic") else None
            if device is not None and key not in self.devices:
                self._track_registry_device(device, ent_reg).dynamic = True

    async def _async_forget_unwatched(self) -> None:
        """Forget saved devices that are no longer watched (options changed, device deleted)."""
        stale = sorted(self._saved_devices.keys() - self.devices.keys())
        for key in stale:
            self._async_remove_entities(key)
            self.windows.remove_device(key)
            self.windows.remove_device(f"{FEEDBACK_PREFIX}{key}")
        if stale:
            await self.hass.async_add_executor_job(_forget_all, self.detector, stale)

    @callback
    def _async_remove_entities(self, key: str) -> None:
        ent_reg = er.async_get(self.hass)
        prefix = f"{self.config_entry.entry_id}_{key}_"
        for entity in er.async_entries_for_config_entry(ent_reg, self.config_entry.entry_id):
            if entity.unique_id.startswith(prefix):
                ent_reg.async_remove(entity.entity_id)

    async def _async_forget_device(self, key: str) -> None:
        """Forget a device GIoT found itself: entities, windows and what the detector learnt."""
        if (state := self.devices.pop(key, None)) is None:
            return  # forgotten meanwhile
        self._network_devices -= state.device_id is None
        self._saved_devices.pop(key, None)
        self._async_remove_entities(key)
        self.windows.remove_device(key)
        self.windows.remove_device(f"{FEEDBACK_PREFIX}{key}")
        if state.address is not None:
            self.attributor.async_forget(state.address)  # announced again if it comes back
        async with self._lock:
            await self.hass.async_add_executor_job(self.detector.forget, key)
        LOGGER.debug("Forgot %s: not seen for %s", state.name, self.retention)

    def _track_registry_device(
        self, device: dr.AnyDeviceEntry, ent_reg: er.EntityRegistry
    ) -> DeviceState:
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
        state = self.devices.get(device.id) or self._restored_state(
            device.id, name, self._saved_devices.get(device.id, {})
        )
        state.device_id, state.source_entity_id = device.id, source
        self.devices[device.id] = state
        return state

    @callback
    def _attribute(self, flow: FlowRecord) -> str | None:
        """Find the watched device a flow belongs to.

        A Home Assistant device where the attributor knows one, else the flow's LAN end as a
        network-only device; a flow between remote hosts belongs to nobody.
        """
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
                key = f"net:{address}"
                if key not in self.devices:
                    if self._network_devices >= MAX_NETWORK_DEVICES:
                        self.refused_devices += 1
                        if self.refused_devices == 1:
                            LOGGER.warning(
                                "GIoT watches %s network-only devices already; flows of "
                                "further unknown addresses are not scored",
                                MAX_NETWORK_DEVICES,
                            )
                        return None
                    self._network_devices += 1
                    self.devices[key] = DeviceState(key=key, name=address, address=address)
                return key
        return None

    @callback
    def _registry_key(self, device_id: str) -> str | None:
        """Watch a registry device flows were attributed to (dynamic devices)."""
        if device_id not in self.devices:
            if (device := dr.async_get(self.hass).async_get(device_id)) is None:
                return None
            self._track_registry_device(device, er.async_get(self.hass)).dynamic = True
        return device_id

    @callback
    def _on_new_device(self, address: NewAddress) -> None:
        """Announce an address no Home Assistant device has on the hub's network event."""
        self._fire(
            AlertType.NEW_DEVICE,
            address.ip or address.key,
            Severity.LOW,
            f"{address.ip or address.key} appeared on the network"
            + (f" ({address.mac})" if address.mac and address.ip else ""),
            0.0,
            hub=True,
        )

    # --- input -------------------------------------------------------------------------------

    @callback
    def async_add_flows(self, flows: Iterable[FlowRecord]) -> None:
        """Collector callback: queue flows for the next batch (never blocks the loop).

        Attribution to devices waits for the batch task, which does it in slices, so a big
        decoded chunk never holds the loop for long.
        """
        self._raw_flows.extend(flows)
        self._schedule_flush()

    @callback
    def async_add_event(self, event: DeviceEvent) -> None:
        """Collector callback: queue one device event for the next batch."""
        key = event.device_id or f"entity:{event.entity_id}"
        # The collector follows the registry: a device that joined a watched area or label
        # since setup is watched from its first event (its entities come with the batch).
        if (
            key not in self.devices
            and event.device_id is not None
            and (device := dr.async_get(self.hass).async_get(event.device_id)) is not None
        ):
            self._track_registry_device(device, er.async_get(self.hass)).dynamic = False
        if key in self.devices:
            self._pending_events.append((key, event))
            self._schedule_flush()

    @callback
    def _schedule_flush(self) -> None:
        excess = (
            len(self._raw_flows)
            + len(self._pending_flows)
            + len(self._pending_events)
            - MAX_PENDING
        )
        if excess > 0:  # the oldest flows go first
            self.dropped += excess
            raw = min(excess, len(self._raw_flows))
            del self._raw_flows[:raw]
            del self._pending_flows[: excess - raw]
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = self.config_entry.async_create_task(
                self.hass, self._async_flush(), "giot detector batch", eager_start=False
            )

    async def _async_attribute(self) -> None:
        """Attribute queued flows to devices, a slice at a time, yielding the loop in between."""
        while self._raw_flows and len(self._pending_flows) < BATCH_MAX:
            chunk = self._raw_flows[:ATTRIBUTE_SLICE]
            del self._raw_flows[:ATTRIBUTE_SLICE]
            for flow in chunk:
                if (key := self._attribute(flow)) is not None:
                    self._pending_flows.append((key, flow))
            await asyncio.sleep(0)

    async def _async_flush(self) -> None:
        """Score what is queued, a batch at a time, in the executor.

        The loop only attributes flows (in slices), applies per-device summaries and alarms,
        and hands windows to the store now and then: every per-record step runs in the
        detector (its process), which reduces the verdicts to what the loop applies.
        """
        last_update = time.monotonic()
        await self._async_attribute()
        while self._pending_flows or self._pending_events:
            flows = self._pending_flows[:BATCH_MAX]
            del self._pending_flows[:BATCH_MAX]
            events = self._pending_events[:BATCH_MAX]
            del self._pending_events[:BATCH_MAX]
            bars = (self.threshold(is_event=False), self.threshold(is_event=True))
            try:
                async with self._lock:
                    result = await self.hass.async_add_executor_job(
                        self.detector.observe_batch, flows, events, bars, self.hub.away_mode
                    )
            except DetectorError as err:
                # The detector's process stopped (logged there); the next batch starts it again.
                LOGGER.debug(
                    "A batch of %s records was not scored: %s", len(flows) + len(events), err
                )
                self.dropped += len(flows) + len(events)
                continue
            self._apply(result)
            await self._async_attribute()
            if time.monotonic() - last_update >= UPDATE_EVERY_S:  # under sustained load
                last_update = time.monotonic()
                await self._async_notify()
        if time.monotonic() - self._windows_stored >= WINDOW_FLUSH_S:
            await self._async_store_windows()
        await self._async_notify()
        self._async_schedule_save()

    async def _async_notify(self) -> None:
        """Do ``async_set_updated_data`` in slices, yielding the loop in between.

        Hundreds of entities write their state; other work runs between the slices.
        """
        self.data = self.devices
        self.last_update_success = True
        for index, (update_callback, _) in enumerate(list(self._listeners.values())):
            try:
                update_callback()
            except Exception:
                LOGGER.exception("Unexpected error updating a GIoT entity")
            if index % NOTIFY_SLICE == NOTIFY_SLICE - 1:
                await asyncio.sleep(0)

    async def _async_store_windows(self) -> None:
        """Take the detector's new windows into the store, a device at a time (an add copies).

        The detector keeps them packed until now; a detector process that died lost the ones
        since the last call (training material, not state), and its restart begins anew.
        """
        self._windows_stored = time.monotonic()
        try:
            async with self._lock:
                batch = await self.hass.async_add_executor_job(self.detector.drain_windows)
        except DetectorError as err:
            LOGGER.debug("New windows were not taken into the store: %s", err)
            return
        if not len(batch):
            return
        grouped = await self.hass.async_add_executor_job(batch.by_device)
        for key, (windows, stamps) in grouped.items():
            self.windows.add(key, windows, stamps)
            await asyncio.sleep(0)

    def threshold(self, *, is_event: bool) -> float:
        """Where the bar sits in nats over the engine's: sensitivity, lowered in away mode."""
        value = SENSITIVITY_OFFSET[self.sensitivity]
        if self.hub.away_mode:
            value += AWAY_EVENT_OFFSET if is_event else AWAY_FLOW_OFFSET
        return value

    @callback
    def _apply(self, result: BatchResult) -> None:
        now = dt_util.utcnow()
        self.last_data = now
        for key, description in result.descriptions.items():
            if key in self.devices:  # a device forgotten meanwhile stays forgotten
                self.devices[key].description = description
        for key, (count, score) in result.devices.items():
            if (state := self.devices.get(key)) is None:
                continue
            state.last_seen = now
            state.absence = None  # a record ends silence; ``tick`` tells if still stuck
            state.observations += count
            state.score = score
        for verdict in result.alarming:
            if (state := self.devices.get(verdict.device)) is None:
                continue
            explanation = verdict.explanation
            if self.hub.away_mode and verdict.user_initiated:
                # Away mode expects nobody to operate anything by hand.
                explanation = f"{explanation or 'operated'} by hand while the home is away"
            alert = FAMILY_TO_ALERT.get(verdict.family or "", AlertType.UNUSUAL_ACTIVITY)
            severity = Severity(verdict.severity) if verdict.severity else Severity.LOW
            state.alarm_until = now + ALARM_HOLD
            state.alert_type, state.severity, state.explanation = alert, severity, explanation
            if state.alarm(now) and now - state.last_fired.get(alert, now - ALARM_HOLD) >= (
                ALARM_HOLD
            ):
                state.last_fired[alert] = now
                self._fire(alert, state.key, severity, explanation, verdict.score)

    # --- alerts ------------------------------------------------------------------------------

    @callback
    def async_subscribe_alerts(self, key: str, listener: AlertListener) -> CALLBACK_TYPE:
        """Call ``listener`` with every alert of device ``key`` (``hub`` for new devices)."""
        self._alert_listeners.setdefault(key, []).append(listener)

        @callback
        def _unsubscribe() -> None:
            self._alert_listeners[key].remove(listener)

        return _unsubscribe

    @callback
    def _fire(
        self,
        alert: AlertType,
        key: str,
        severity: Severity,
        explanation: str,
        score: float,
        *,
        hub: bool = False,
    ) -> None:
        data: dict[str, Any] = {
            "severity": severity.value,
            "explanation": explanation,
            "score": round(score, 4),
        }
        if hub:
            data["device"] = key
        for listener in list(self._alert_listeners.get(HUB_KEY if hub else key, [])):
            listener(alert, data)

    # --- actions -----------------------------------------------------------------------------

    async def _async_detector_job[**P, R](
        self, job: Callable[P, R], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """Run a detector call for an action; a detector process that died says so, translated.

        The next call starts a fresh process (``ProcessDetector``), so trying again may work.
        """
        try:
            return await self.hass.async_add_executor_job(partial(job, *args, **kwargs))
        except DetectorError as err:
            raise HomeAssistantError(
                translation_domain=DOMAIN,
                translation_key="detector_unavailable",
                translation_placeholders={"error": str(err)},
            ) from err

    async def async_describe(self, key: str) -> Description:
        """Describe a device now (in the executor)."""
        async with self._lock:
            description = await self._async_detector_job(self.detector.describe, key)
        self.devices[key].description = description
        return description

    async def async_mark_normal(self, key: str) -> None:
        """Feedback: the device's recent alarm was normal.

        Its later scores of that kind drop at once; its recent windows go into the window store
        as feedback, which local training learns repeated ``FEEDBACK_REPEAT`` times.
        """
        async with self._lock:
            windows = await self._async_detector_job(self.detector.mark_normal, key)
        if len(windows):
            self.windows.add(f"{FEEDBACK_PREFIX}{key}", windows, dt_util.utcnow().timestamp())
        state = self.devices[key]
        state.alarm_until = state.absence = None
        state.last_fired.clear()
        await self._async_notify()
        self._async_schedule_save()

    @callback
    def async_snooze(self, key: str, duration: timedelta) -> None:
        """Keep a device's alarm and alerts quiet for ``duration`` (it is still scored)."""
        self.devices[key].snoozed_until = dt_util.utcnow() + duration
        self.async_set_updated_data(self.devices)
        self._async_schedule_save()

    def training_windows(self) -> np.ndarray:
        """Every stored window of the model's width, feedback windows repeated (extra weight)."""
        normal: list[np.ndarray] = []
        feedback: list[np.ndarray] = []
        for key in self.windows.devices():
            windows = self.windows.windows(key)
            if windows.shape[1] == N_POSITIONS:
                (feedback if key.startswith(FEEDBACK_PREFIX) else normal).append(windows)
        parts = normal + feedback * FEEDBACK_REPEAT
        return np.concatenate(parts) if parts else np.zeros((0, N_POSITIONS), np.int32)

    def new_windows(self) -> int:
        """Windows stored since the last local training."""
        since = self.hub.last_training.timestamp() if self.hub.last_training else float("-inf")
        return sum(
            int((self.windows.timestamps(key) > since).sum()) for key in self.windows.devices()
        )

    async def async_train(self) -> TrainResult | None:
        """Train the local model now on the stored windows (executor), keep it, record it.

        Scoring goes on meanwhile (training works on copies). Nothing to train on: None. A
        failed write keeps the previous model, raises the storage repair and the error.
        """
        async with self._train_lock:
            await self._async_store_windows()
            # megabytes of windows: copied together off the event loop
            windows = await self.hass.async_add_executor_job(self.training_windows)
            if len(windows) == 0:
                return None
            self.hub.training = True
            await self._async_notify()
            seed = int(dt_util.utcnow().timestamp())
            try:
                result = await self._async_detector_job(self.detector.train, windows, seed)
            except OSError as err:
                self.hub.training = False
                self._async_update_issues(dt_util.utcnow())
                self.async_update_listeners()
                raise HomeAssistantError(
                    translation_domain=DOMAIN,
                    translation_key="model_not_saved",
                    translation_placeholders={"error": str(err)},
                ) from err
            finally:
                self.hub.training = False
            LOGGER.debug("Local training: %s", result)
            self.hub.model_version = result.version
            self.hub.last_training = dt_util.utcnow()
            self._async_update_issues(self.hub.last_training)
            await self._async_notify()
            self._async_schedule_save()
            return result

    async def _async_scheduled_train(self, _now: datetime) -> None:
        """Nightly: train when enough new windows came in since the last training."""
        if self.new_windows() < TRAIN_MIN_NEW_WINDOWS:
            return
        try:
            await self.async_train()
        except (HomeAssistantError, DetectorError) as err:
            LOGGER.warning("Scheduled local training failed: %s", err)

    @callback
    def async_set_hub_flag(self, flag: str, value: bool) -> None:
        """Switch away mode or the federation pause and remember it."""
        setattr(self.hub, flag, value)
        self.async_set_updated_data(self.devices)
        self._async_schedule_save()

    @property
    def federation_status(self) -> FederationStatus:
        """Placeholder status until the node link (federation issue) reports real rounds."""
        if not self.federation_enabled:
            return FederationStatus.DISABLED
        if self.hub.federation_paused:
            return FederationStatus.PAUSED
        if self.hub.training:
            return FederationStatus.TRAINING
        if self.node is None:
            return FederationStatus.NO_NODE
        return FederationStatus.IDLE

    # --- health and repairs ------------------------------------------------------------------

    @callback
    def _on_zeek_status(self, status: TailStatus, error: str | None) -> None:
        """Raise or clear the unreadable-source repair as soon as the tail's health changes."""
        if status in (TailStatus.OK, TailStatus.STARTING):
            self.source_errors.pop("zeek", None)
        else:
            self.source_errors["zeek"] = f"{self.config_entry.options[CONF_ZEEK_PATH]} ({error})"
        self._async_update_issues(dt_util.utcnow())

    @property
    def has_sources(self) -> bool:
        """Whether anything is configured that should be delivering data."""
        options = self.config_entry.options
        return bool(
            options.get(CONF_NETFLOW_PORT)
            or options.get(CONF_ZEEK_PATH)
            or any(state.device_id for state in self.devices.values())
        )

    async def _async_start_netflow(self) -> None:
        """Bind the NetFlow port; a port in use is a repair, retried every housekeeping."""
        if self.netflow is None or self.netflow.running:
            return
        try:
            await self.netflow.async_start()
        except OSError as err:
            self.source_errors["netflow"] = f"UDP port {self.netflow.port} ({err.strerror})"
        else:
            self.source_errors.pop("netflow", None)

    async def _async_housekeeping(self, now: datetime) -> None:
        """Expire snoozes, forget what retention says to, retry a busy port, update repairs.

        Devices GIoT found itself (network-only, or attributed by flows) are forgotten once
        unseen for the retention period; windows older than it leave the store even when no
        new window comes.
        """
        for state in self.devices.values():
            if state.snoozed_until is not None and now >= state.snoozed_until:
                state.snoozed_until = None
        for key in [
            key
            for key, state in self.devices.items()
            if state.found and now - (state.last_seen or self._started) >= self.retention
        ]:
            await self._async_forget_device(key)
        self.windows.prune(now.timestamp())
        await self._async_start_netflow()
        self.storage_free = await self.hass.async_add_executor_job(
            _free_bytes, self.hass.config.path()
        )
        self._async_update_issues(now)
        await self._async_notify()

    async def _async_absence(self, _now: datetime) -> None:
        """Judge absence (engine ``tick``): devices gone silent or stuck in one state.

        A record can only be scored when it comes, so this runs on a clock. The verdicts are
        applied under the detector lock, so a record scored meanwhile cannot be overtaken.
        """
        now = dt_util.utcnow()
        async with self._lock:
            try:
                verdicts = await self.hass.async_add_executor_job(
                    self.detector.tick, now.timestamp()
                )
            except DetectorError as err:
                LOGGER.debug("Absence not judged this time: %s", err)
                return
            changed = self._apply_absence(verdicts, now)
        if changed:
            await self._async_notify()

    @callback
    def _apply_absence(self, verdicts: Sequence[HubVerdict], now: datetime) -> bool:
        """Turn absence alarms on (one alert per episode and hold) and off; True if any moved."""
        absent = {
            verdict.device: verdict
            for verdict in verdicts
            if verdict.device in self.devices
            and alarming(verdict, self.threshold(is_event=verdict.is_event))
        }
        changed = False
        for key, state in self.devices.items():
            if (verdict := absent.get(key)) is None:
                changed |= state.absence is not None
                state.absence = None
                continue
            alert = FAMILY_TO_ALERT[verdict.family or "silent"]
            severity = Severity(verdict.severity) if verdict.severity else Severity.MEDIUM
            state.score = verdict.score
            state.alert_type, state.severity = alert, severity
            state.explanation = verdict.explanation
            if state.absence is not alert:  # a new episode
                changed = True
                state.absence, state.absence_announced = alert, False
            # One event per episode, once no snooze keeps it quiet (and one per hold).
            if state.absence_announced or not state.alarm(now):
                continue
            state.absence_announced = changed = True
            if now - state.last_fired.get(alert, now - ALARM_HOLD) >= ALARM_HOLD:
                state.last_fired[alert] = now
                self._fire(alert, key, severity, verdict.explanation, verdict.score)
        return changed

    @callback
    def _async_update_issues(self, now: datetime) -> None:
        for source in ("zeek", "netflow"):
            issue_id = f"flow_source_unreadable_{source}"
            if (detail := self.source_errors.get(source)) is not None:
                ir.async_create_issue(
                    self.hass,
                    DOMAIN,
                    issue_id,
                    is_fixable=False,
                    severity=ir.IssueSeverity.ERROR,
                    translation_key="flow_source_unreadable",
                    translation_placeholders={"source": source, "detail": detail},
                )
            else:
                ir.async_delete_issue(self.hass, DOMAIN, issue_id)
        since = max(self.last_data or self._started, self._started)
        if self.has_sources and now - since >= NO_DATA_AFTER:
            ir.async_create_issue(
                self.hass,
                DOMAIN,
                "no_data",
                is_fixable=False,
                severity=ir.IssueSeverity.WARNING,
                translation_key="no_data",
            )
        else:
            ir.async_delete_issue(self.hass, DOMAIN, "no_data")
        if (
            self.windows.disk_full
            or self.detector.model_info.get("disk_full")
            or (self.storage_free is not None and self.storage_free < MIN_FREE_BYTES)
        ):
            ir.async_create_issue(
                self.hass,
                DOMAIN,
                "storage_full",
                is_fixable=False,
                severity=ir.IssueSeverity.ERROR,
                translation_key="storage_full",
                translation_placeholders={"free_mb": str((self.storage_free or 0) // 2**20)},
            )
        else:
            ir.async_delete_issue(self.hass, DOMAIN, "storage_full")


@dataclass(slots=True)
class GIoTRuntimeData:
    """What a loaded entry holds; it lives exactly as long as the entry is loaded."""

    coordinator: GIoTCoordinator

    @property
    def node(self) -> NodeAddress | None:
        """The node remembered by discovery or reconfiguration; None means local detection only."""
        return self.coordinator.node


@callback
def async_delete_issues(hass: HomeAssistant) -> None:
    """Withdraw GIoT's repair issues: nothing is left to fix once the entry is unloaded."""
    registry = ir.async_get(hass)
    for domain, issue_id in list(registry.issues):
        if domain == DOMAIN:
            ir.async_delete_issue(hass, DOMAIN, issue_id)


async def async_remove_stored_data(hass: HomeAssistant, entry: ConfigEntry) -> None:
    """Delete the hub state, the attributor's known addresses, windows and detector state."""
    await Store[dict[str, Any]](hass, STORAGE_VERSION, f"{DOMAIN}.{entry.entry_id}").async_remove()
    await Store[dict[str, Any]](hass, 1, KNOWN_ADDRESSES_KEY).async_remove()
    directory = hass.config.path(".storage", DOMAIN)
    await hass.async_add_executor_job(partial(shutil.rmtree, directory, ignore_errors=True))


def _node_from_entry(entry: ConfigEntry) -> NodeAddress | None:
    """Read the entry's node address: without one, detection still runs locally."""
    host = entry.data.get(CONF_NODE_HOST)
    port = entry.data.get(CONF_NODE_PORT)
    return NodeAddress(host, int(port)) if host and port else None


def _forget_all(detector: HubDetector, keys: Iterable[str]) -> None:
    for key in keys:
        detector.forget(key)


def _free_bytes(path: str) -> int:
    return shutil.disk_usage(path).free


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
