"""The queue between the collectors and the detector, and its back-pressure.

Collectors push flows and device events from the event loop and must never wait; the queue
takes them, attributes flows to devices a slice at a time, and hands batches to the scorer one
at a time (the detector keeps per-device state and is not thread-safe). Past ``MAX_PENDING``
queued records the oldest flows are dropped (and counted): a flood must not eat the hub's
memory.
"""

import asyncio
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any

from homeassistant.config_entries import ConfigEntry
from homeassistant.core import HomeAssistant, callback

from giot_engine.records import DeviceEvent, FlowRecord

from .const import BATCH_MAX
from .devices import WatchedDevices

MAX_PENDING = 100_000
# Loop-side pacing under load: flows attributed per slice (each slice is one step of the loop;
# attributing a flow takes ~6 us on the development VM, `GIOT_BENCH_SLICES=1 scripts/bench
# ha-load`, so a slice of flows ~0.75 ms: two slices in one step plus a collector pause stay
# under 5 ms), and how often entities hear of progress while a backlog is worked off (seconds).
ATTRIBUTE_SLICE = 128
UPDATE_EVERY_S = 5.0

type FlowBatch = Sequence[tuple[str, FlowRecord]]
type EventBatch = Sequence[tuple[str, DeviceEvent]]
type ScoreBatch = Callable[[FlowBatch, EventBatch], Coroutine[Any, Any, bool]]
type Step = Callable[[], Coroutine[Any, Any, None]]


class IngestQueue:
    """Queues records and works them off in batches, in a task of the entry."""

    def __init__(
        self,
        hass: HomeAssistant,
        entry: ConfigEntry,
        devices: WatchedDevices,
        *,
        score: ScoreBatch,
        progress: Step,
        done: Step,
    ) -> None:
        """Queue for these devices; the steps come from the coordinator.

        ``score`` scores and applies one batch (False: it was lost), ``progress`` runs every
        ``UPDATE_EVERY_S`` under sustained load and ``done`` once the queue is empty.
        """
        self._hass = hass
        self._entry = entry
        self._devices = devices
        self._score = score
        self._progress = progress
        self._done = done
        self.dropped = 0
        self._raw_flows: list[FlowRecord] = []
        self._pending_flows: list[tuple[str, FlowRecord]] = []
        self._pending_events: list[tuple[str, DeviceEvent]] = []
        self._flush_task: asyncio.Task[None] | None = None

    @property
    def queued(self) -> int:
        """Records waiting (flows not yet attributed included)."""
        return len(self._raw_flows) + len(self._pending_flows) + len(self._pending_events)

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
        """Collector callback: queue one device event for the next batch, if it is watched."""
        if (key := self._devices.key_of_event(event)) is not None:
            self._pending_events.append((key, event))
            self._schedule_flush()

    async def async_drain(self) -> None:
        """Wait for the batch in progress (the sources are stopped: nothing new comes)."""
        if self._flush_task is not None:
            await self._flush_task

    @callback
    def _schedule_flush(self) -> None:
        if (excess := self.queued - MAX_PENDING) > 0:  # the oldest flows go first
            self.dropped += excess
            raw = min(excess, len(self._raw_flows))
            del self._raw_flows[:raw]
            del self._pending_flows[: excess - raw]
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = self._entry.async_create_task(
                self._hass, self._async_flush(), "giot detector batch", eager_start=False
            )

    async def _async_attribute(self) -> None:
        """Attribute queued flows to devices, a slice at a time, yielding the loop in between."""
        while self._raw_flows and len(self._pending_flows) < BATCH_MAX:
            chunk = self._raw_flows[:ATTRIBUTE_SLICE]
            del self._raw_flows[:ATTRIBUTE_SLICE]
            for flow in chunk:
                if (key := self._devices.attribute(flow)) is not None:
                    self._pending_flows.append((key, flow))
            await asyncio.sleep(0)

    async def _async_flush(self) -> None:
        """Score what is queued, a batch at a time.

        The loop only attributes flows (in slices) and applies what comes back: every
        per-record step runs in the detector (its process), which reduces the verdicts to what
        the loop applies.
        """
        last_update = time.monotonic()
        await self._async_attribute()
        while self._pending_flows or self._pending_events:
            flows = self._pending_flows[:BATCH_MAX]
            del self._pending_flows[:BATCH_MAX]
            events = self._pending_events[:BATCH_MAX]
            del self._pending_events[:BATCH_MAX]
            if not await self._score(flows, events):
                self.dropped += len(flows) + len(events)
                continue
            await self._async_attribute()
            if time.monotonic() - last_update >= UPDATE_EVERY_S:  # under sustained load
                last_update = time.monotonic()
                await self._progress()
        await self._done()
