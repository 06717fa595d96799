"""The runtime of a GIoT config entry: the coordinator that builds, starts and stops its parts.

Collectors push flows and device events into the ingest queue; the queue hands batches to the
coordinator, which scores them in the detector (a process of its own, ``detector_process``, off
Home Assistant's GIL) and applies what comes back: per-device summaries, alarms and alerts.
Everything else is a part of its own: which devices are watched (``devices``), the queue
(``ingest``), alerts (``alerts``), absence (``absence``), local training (``training``), the
repair issues (``issues``), the saved hub state (``hub_store``), and for a paired node the link
to it (``node_link``) and the rounds it hands over (``federation``).

Entities hear of changes through Home Assistant's public APIs: hub entities are coordinator
entities (``async_update_listeners``), each watched device's entities listen on a dispatcher
signal of their own, sent a few devices at a time so hundreds of entities writing their state
never hold the loop for long.
"""

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from homeassistant.config_entries import ConfigEntry
from homeassistant.const import EVENT_CORE_CONFIG_UPDATE, EVENT_HOMEASSISTANT_STOP
from homeassistant.core import CALLBACK_TYPE, Event, HomeAssistant, callback
from homeassistant.helpers.dispatcher import async_dispatcher_send
from homeassistant.helpers.event import async_track_time_interval
from homeassistant.helpers.update_coordinator import DataUpdateCoordinator
from homeassistant.util import dt as dt_util

from giot_engine import wording
from giot_engine.detector_process import DetectorError, ProcessDetector
from giot_engine.hub_detector import BatchResult, Description, HubDetector
from giot_engine.model_manager import N_POSITIONS
from giot_engine.records import Severity

from .absence import AbsenceWatch
from .alerts import Alerts, classify
from .const import (
    ABSENCE_INTERVAL,
    ALARM_HOLD,
    AWAY_EVENT_OFFSET,
    AWAY_FLOW_OFFSET,
    BASE_MODEL_DIR,
    CONF_AREAS,
    CONF_DEVICES,
    CONF_FEDERATION,
    CONF_LABELS,
    CONF_NETFLOW_PORT,
    CONF_RETENTION_DAYS,
    CONF_SENSITIVITY,
    CONF_SERVER_KEY,
    CONF_ZEEK_PATH,
    DEFAULT_FEDERATION,
    DEFAULT_RETENTION_DAYS,
    DEFAULT_SENSITIVITY,
    DOMAIN,
    HOUSEKEEPING_INTERVAL,
    LOGGER,
    MODEL_ORIGIN_LOCAL,
    SAVE_DELAY_S,
    SENSITIVITY_OFFSET,
    AlertType,
    FederationStatus,
    Sensitivity,
)
from .detector_runner import DetectorRunner
from .devices import WatchedDevices
from .federation import Federation
from .hub_store import HubStore
from .ingest import EventBatch, FlowBatch, IngestQueue
from .issues import HealthIssues
from .models import HubState, NodeAddress, WatchedDevice, node_from_entry
from .netflow_listener import NetFlowListener
from .node_link import NodeLink
from .state_collector import MonitoredSelection, StateCollector
from .store import WindowStore
from .training import LocalTraining
from .zeek_tail import ZeekTail

type GIoTConfigEntry = ConfigEntry[GIoTRuntimeData]
type HubFlag = Literal["federation_paused", "away_mode"]

# Devices whose entities write their state per slice of a notification (four entities each,
# so about eight states a slice); other work of the loop runs between the slices.
NOTIFY_SLICE = 2


def signal_device_updated(entry_id: str, key: str) -> str:
    """Name the signal that tells device ``key``'s entities to write their state."""
    return f"{DOMAIN}_{entry_id}_device_{key}"


@dataclass(frozen=True, slots=True)
class GIoTRuntimeData:
    """What a loaded entry holds; it lives exactly as long as the entry is loaded."""

    coordinator: GIoTCoordinator
    devices: WatchedDevices
    ingest: IngestQueue
    training: LocalTraining
    issues: HealthIssues
    runner: DetectorRunner
    windows: WindowStore
    federation: Federation
    link: NodeLink | None

    @property
    def node(self) -> NodeAddress | None:
        """The paired node; None means local detection only."""
        return self.coordinator.node


class GIoTCoordinator(DataUpdateCoordinator[Mapping[str, WatchedDevice]]):
    """Owns the parts of one entry, their lifecycle, and applying scored batches.

    Nothing is polled: collectors push, the coordinator tells the entities.
    """

    config_entry: GIoTConfigEntry

    def __init__(
        self,
        hass: HomeAssistant,
        entry: GIoTConfigEntry,
        detector: HubDetector | None = None,
    ) -> None:
        """Build the parts; ``async_start`` loads state and starts the sources."""
        options = entry.options
        retention = timedelta(days=float(options.get(CONF_RETENTION_DAYS, DEFAULT_RETENTION_DAYS)))
        self.windows = WindowStore(hass, retention_days=retention.days, save_delay_s=SAVE_DELAY_S)
        self.runner = DetectorRunner(
            hass,
            detector or ProcessDetector(self.windows.directory, base_model=BASE_MODEL_DIR),
            self.windows,
        )
        self.hub = HubState()
        self.sensitivity = Sensitivity(options.get(CONF_SENSITIVITY, DEFAULT_SENSITIVITY))
        self.federation_enabled: bool = options.get(CONF_FEDERATION, DEFAULT_FEDERATION)
        self.node = node_from_entry(entry)
        self._started = dt_util.utcnow()
        self.alerts = Alerts(hass, entry.entry_id)
        self.devices = WatchedDevices(
            hass,
            entry.entry_id,
            options,
            runner=self.runner,
            windows=self.windows,
            retention=retention,
            on_new_address=self.alerts.async_new_address,
        )
        self.hub_store = HubStore(hass, entry.entry_id, self.hub, self.devices, self.runner)
        self.issues = HealthIssues(
            hass,
            options,
            devices=self.devices,
            hub=self.hub,
            windows=self.windows,
            runner=self.runner,
            started=self._started,
        )
        self.training = LocalTraining(
            hass,
            self.runner,
            self.windows,
            self.hub,
            changed=self.async_notify,
            trained=self._async_trained,
            failed=self._async_training_failed,
        )
        self.federation = Federation(
            runner=self.runner,
            training=self.training,
            hub=self.hub,
            issues=self.issues,
            allowed=lambda: self.federation_enabled and not self.hub.federation_paused,
            changed=self.async_update_listeners,
            save=self.hub_store.async_schedule_save,
            server_key=lambda: str(entry.data.get(CONF_SERVER_KEY, "")),
        )
        self.link: NodeLink | None = None
        if self.node is not None:
            self.link = NodeLink(
                hass,
                entry,
                self.node,
                hub=self.hub,
                federation=self.federation,
                issues=self.issues,
                changed=self.async_update_listeners,
            )
        self.absence = AbsenceWatch(
            self.runner, self.devices, self.alerts, self.bars, self.async_notify
        )
        self.ingest = IngestQueue(
            hass,
            entry,
            self.devices,
            score=self._async_score,
            progress=self.async_notify,
            done=self._async_batches_done,
        )
        self.state_collector = StateCollector(
            hass,
            MonitoredSelection.from_options(
                device_ids=options.get(CONF_DEVICES, []),
                area_ids=options.get(CONF_AREAS, []),
                label_ids=options.get(CONF_LABELS, []),
            ),
            self.ingest.async_add_event,
        )
        self.netflow: NetFlowListener | None = None
        if port := options.get(CONF_NETFLOW_PORT):
            self.netflow = NetFlowListener(hass, self.ingest.async_add_flows, port=int(port))
        self.zeek: ZeekTail | None = None
        if path := options.get(CONF_ZEEK_PATH):
            self.zeek = ZeekTail(
                hass, path, self.ingest.async_add_flows, on_status=self.issues.async_zeek_status
            )
        self._unsub: list[CALLBACK_TYPE] = []
        self._unsub_stop: CALLBACK_TYPE | None = None
        self._shut_down = False
        # Last: this registers ``async_shutdown`` to run on unload, which needs all of the above.
        super().__init__(hass, LOGGER, config_entry=entry, name=DOMAIN)

    def runtime_data(self) -> GIoTRuntimeData:
        """Hand out the parts the entities, actions and diagnostics of the entry use."""
        return GIoTRuntimeData(
            coordinator=self,
            devices=self.devices,
            ingest=self.ingest,
            training=self.training,
            issues=self.issues,
            runner=self.runner,
            windows=self.windows,
            federation=self.federation,
            link=self.link,
        )

    @property
    def detector(self) -> HubDetector:
        """The detector now (it is replaced where its process cannot start)."""
        return self.runner.detector

    # --- lifecycle ---------------------------------------------------------------------------

    async def async_start(self) -> None:
        """Restore stored state, resolve the watched devices and start the sources."""
        self.devices.restore(await self.hub_store.async_load())
        await self.windows.async_load()
        for key in self.windows.devices():
            if self.windows.windows(key).shape[1] != N_POSITIONS:  # older tokenizer or model
                self.windows.remove_device(key)
        await self.runner.async_load()
        await self._async_follow_time_zone()
        version = self.detector.model_version
        if version != self.hub.model_version:  # the saved origin was another model's
            self.hub.model_origin = str(self.detector.model_info.get("origin", MODEL_ORIGIN_LOCAL))
        self.hub.model_version = version
        self.devices.resolve()
        await self.devices.async_forget_unwatched()
        descriptions = await self.runner.async_run(
            lambda: {key: self.detector.describe(key) for key in self.devices}
        )
        for key, description in descriptions.items():
            self.devices[key].description = description
        await self.devices.attributor.async_start()
        await self.state_collector.async_start()
        await self.issues.async_start_netflow(self.netflow)
        if self.zeek is not None:
            await self.zeek.async_start()
        self._unsub += [
            async_track_time_interval(
                self.hass, self._async_housekeeping, HOUSEKEEPING_INTERVAL, cancel_on_shutdown=True
            ),
            async_track_time_interval(
                self.hass, self.absence.async_check, ABSENCE_INTERVAL, cancel_on_shutdown=True
            ),
            self.training.async_start_schedule(),
            self.hass.bus.async_listen(EVENT_CORE_CONFIG_UPDATE, self._async_core_config_updated),
        ]
        # Entries are not unloaded when Home Assistant stops: save then too.
        self._unsub_stop = self.hass.bus.async_listen_once(
            EVENT_HOMEASSISTANT_STOP, self._async_on_stop
        )
        await self._async_housekeeping(dt_util.utcnow())
        if self.link is not None:
            self.link.async_start()

    async def _async_follow_time_zone(self) -> None:
        """Tell the detector Home Assistant's time zone: hour and weekday tokens are local."""
        time_zone = self.hass.config.time_zone
        try:
            await self.runner.async_call(self.detector.set_time_zone, time_zone)
        except DetectorError as err:  # its next process is told when it starts
            LOGGER.debug("The detector's time zone was not set to %s now: %s", time_zone, err)

    async def _async_core_config_updated(self, _event: Event) -> None:
        """Home Assistant's configuration changed: the time zone may have."""
        await self._async_follow_time_zone()

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
        if self.link is not None:  # first: no task may arrive while everything stops
            await self.link.async_stop()
        await super().async_shutdown()
        while self._unsub:
            self._unsub.pop()()
        if self._unsub_stop is not None:
            self._unsub_stop()
            self._unsub_stop = None
        await self.state_collector.async_stop()
        if self.netflow is not None:
            await self.netflow.async_stop()
        await self.devices.attributor.async_stop()
        if self.zeek is not None:
            await self.zeek.async_stop()
        await self.ingest.async_drain()
        await self.training.async_collect()
        await self.hub_store.async_close()
        await self.windows.async_close()
        await self.runner.async_close()

    async def _async_housekeeping(self, now: datetime) -> None:
        """Expire snoozes, forget what retention says to, retry a busy port, update repairs.

        Devices GIoT found itself (network-only, or attributed by flows) are forgotten once
        unseen for the retention period; windows older than it leave the store even when no
        new window comes.
        """
        self.devices.expire_snoozes(now)
        for key in self.devices.unseen(now, self._started):
            await self.devices.async_forget(key)
        self.windows.prune(now.timestamp())
        await self.issues.async_start_netflow(self.netflow)
        await self.issues.async_check_disk()
        self.issues.async_update(now)
        await self.async_notify()

    # --- scored batches ----------------------------------------------------------------------

    def threshold(self, *, is_event: bool) -> float:
        """Where the bar sits in nats over the engine's: sensitivity, lowered in away mode."""
        value = SENSITIVITY_OFFSET[self.sensitivity]
        if self.hub.away_mode:
            value += AWAY_EVENT_OFFSET if is_event else AWAY_FLOW_OFFSET
        return value

    def bars(self) -> tuple[float, float]:
        """Give the bars now for flows and for device events, in the detector's order."""
        return self.threshold(is_event=False), self.threshold(is_event=True)

    async def _async_score(self, flows: FlowBatch, events: EventBatch) -> bool:
        """Score one batch in the detector and apply the result; False if it was lost."""
        try:
            result = await self.runner.async_call(
                self.detector.observe_batch, flows, events, self.bars(), self.hub.away_mode
            )
        except DetectorError as err:
            # The detector's process stopped (logged there); the next batch starts it again.
            LOGGER.debug("A batch of %s records was not scored: %s", len(flows) + len(events), err)
            return False
        self._apply(result)
        return True

    async def _async_batches_done(self) -> None:
        """Finish a worked-off queue: store new windows now and then, tell entities, save soon."""
        await self.training.async_collect_due()
        await self.async_notify()
        self.hub_store.async_schedule_save()

    @callback
    def _apply(self, result: BatchResult) -> None:
        now = dt_util.utcnow()
        self.hub.last_data = now
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
                explanation = wording.operated_while_away(explanation)
            alert, severity = classify(verdict, AlertType.UNUSUAL_ACTIVITY, Severity.LOW)
            state.raise_peak(verdict.score, now)
            state.alarm_until = now + ALARM_HOLD
            state.alert_type, state.severity, state.explanation = alert, severity, explanation
            if state.alarm(now):
                self.alerts.async_fire_held(
                    state, alert, severity, explanation, verdict.score, now=now
                )

    # --- telling the entities ----------------------------------------------------------------

    async def async_notify(self) -> None:
        """Tell every entity, a few devices at a time, yielding the loop in between.

        Hundreds of entities write their state; other work runs between the slices.
        """
        self.async_set_updated_data(self.devices)
        for index, signal in enumerate(self._device_signals()):
            async_dispatcher_send(self.hass, signal)
            if index % NOTIFY_SLICE == NOTIFY_SLICE - 1:
                await asyncio.sleep(0)

    @callback
    def async_notify_now(self) -> None:
        """Tell every entity at once (from a callback, which cannot yield)."""
        self.async_set_updated_data(self.devices)
        for signal in self._device_signals():
            async_dispatcher_send(self.hass, signal)

    def _device_signals(self) -> list[str]:
        entry_id = self.config_entry.entry_id
        return [signal_device_updated(entry_id, key) for key in self.devices]

    @callback
    def _async_trained(self) -> None:
        self.issues.async_update(dt_util.utcnow())
        self.hub_store.async_schedule_save()

    @callback
    def _async_training_failed(self) -> None:
        self.issues.async_update(dt_util.utcnow())
        self.async_notify_now()

    # --- actions -----------------------------------------------------------------------------

    async def async_describe(self, key: str) -> Description:
        """Describe a device now (in the executor)."""
        async with self.runner.lock:
            description = await self.runner.async_action(self.detector.describe, key)
        self.devices[key].description = description
        return description

    async def async_mark_normal(self, key: str) -> None:
        """Feedback: the device's recent alarm was normal.

        Its later scores of that kind drop at once; its recent windows go into the window store
        as feedback, which local training learns with extra weight.
        """
        async with self.runner.lock:
            windows = await self.runner.async_action(self.detector.mark_normal, key)
        self.training.add_feedback(key, windows)
        state = self.devices[key]
        state.alarm_until = state.absence = state.peak = None
        state.last_fired.clear()
        await self.async_notify()
        self.hub_store.async_schedule_save()

    @callback
    def async_snooze(self, key: str, duration: timedelta) -> None:
        """Keep a device's alarm and alerts quiet for ``duration`` (it is still scored)."""
        self.devices[key].snoozed_until = dt_util.utcnow() + duration
        self.async_notify_now()
        self.hub_store.async_schedule_save()

    @callback
    def async_set_hub_flag(self, flag: HubFlag, value: bool) -> None:
        """Switch away mode or the federation pause and remember it."""
        setattr(self.hub, flag, value)
        self.async_notify_now()
        self.hub_store.async_schedule_save()

    @property
    def federation_status(self) -> FederationStatus:
        """The user's choices first (option, pairing, pause), then what the node link says."""
        if not self.federation_enabled:
            return FederationStatus.DISABLED
        if self.node is None:
            return FederationStatus.NOT_PAIRED
        if self.hub.federation_paused:
            return FederationStatus.PAUSED
        status = self.hub.federation_status
        if self.hub.federation_training and status is FederationStatus.CONNECTED:
            return FederationStatus.TRAINING
        return status
