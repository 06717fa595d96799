"""The hub state GIoT keeps across restarts, in Home Assistant's store.

Hub flags, the last training and the last data, the federation's round, participation and byte
counts, which model scores and where it came from, and per device what a restart must not lose
(its name and address, snooze, count of observations, when it was last seen, and whether GIoT
found it itself). Saves are coalesced: the detector's state (written beside the windows, see
``store``) is read in the executor and may be megabytes, so bursts of changes save once.
"""

import shutil
from collections.abc import Mapping
from datetime import datetime
from functools import partial
from typing import Any

from homeassistant.config_entries import ConfigEntry
from homeassistant.core import CALLBACK_TYPE, HomeAssistant, callback
from homeassistant.helpers.event import async_call_later
from homeassistant.helpers.storage import Store
from homeassistant.util import dt as dt_util

from .const import DOMAIN, SAVE_DELAY_S
from .detector_runner import DetectorRunner
from .models import HubState, WatchedDevice

STORAGE_VERSION = 1
KNOWN_ADDRESSES_KEY = f"{DOMAIN}.known_addresses"

type DeviceRecords = Mapping[str, Mapping[str, Any]]


class HubStore:
    """Loads and saves the hub state; ``async_schedule_save`` after every change worth keeping."""

    def __init__(
        self,
        hass: HomeAssistant,
        entry_id: str,
        hub: HubState,
        devices: Mapping[str, WatchedDevice],
        runner: DetectorRunner,
    ) -> None:
        """Name the entry's store; ``devices`` are the watched devices (read at save time)."""
        self._hass = hass
        self._hub = hub
        self._devices = devices
        self._runner = runner
        self._store: Store[dict[str, Any]] = Store(
            hass, STORAGE_VERSION, f"{DOMAIN}.{entry_id}", private=True
        )
        self._cancel_save: CALLBACK_TYPE | None = None

    async def async_load(self) -> DeviceRecords:
        """Restore the hub state; return the saved device records (the devices part picks)."""
        stored = await self._store.async_load() or {}
        hub = stored.get("hub", {})
        self._hub.federation_round = hub.get("federation_round")
        self._hub.federation_paused = bool(hub.get("federation_paused", False))
        self._hub.away_mode = bool(hub.get("away_mode", False))
        if last := hub.get("last_training"):
            self._hub.last_training = dt_util.parse_datetime(last)
        if last_data := stored.get("last_data"):
            self._hub.last_data = dt_util.parse_datetime(last_data)
        if participation := hub.get("last_participation"):
            self._hub.last_participation = dt_util.parse_datetime(participation)
        for key in ("bytes_up", "bytes_down"):
            if (value := hub.get(key)) is not None:
                setattr(self._hub, key, int(value))
        self._hub.bytes_up_total = int(hub.get("bytes_up_total", 0))
        self._hub.bytes_down_total = int(hub.get("bytes_down_total", 0))
        # the coordinator keeps the origin only while the detector still has this version
        self._hub.model_version = str(hub.get("model_version", ""))
        self._hub.model_origin = str(hub.get("model_origin", self._hub.model_origin))
        return dict(stored.get("devices", {}))

    async def async_save(self) -> None:
        """Save now: the detector writes its state itself, the hub state goes to HA's store."""
        await self._runner.async_save_state()
        await self._store.async_save(self._snapshot())

    @callback
    def async_schedule_save(self) -> None:
        """Save soon, coalescing bursts: the detector state is read in the executor."""
        if self._cancel_save is None:
            self._cancel_save = async_call_later(self._hass, SAVE_DELAY_S, self._async_delayed_save)

    async def async_close(self) -> None:
        """Save what is left now instead of later (the entry unloads or HA stops)."""
        if self._cancel_save is not None:
            self._cancel_save()
            self._cancel_save = None
        await self.async_save()

    async def _async_delayed_save(self, _now: datetime) -> None:
        self._cancel_save = None
        await self.async_save()

    def _snapshot(self) -> dict[str, Any]:
        hub = self._hub
        return {
            "hub": {
                "federation_round": hub.federation_round,
                "federation_paused": hub.federation_paused,
                "away_mode": hub.away_mode,
                "last_training": _iso(hub.last_training),
                "last_participation": _iso(hub.last_participation),
                "bytes_up": hub.bytes_up,
                "bytes_down": hub.bytes_down,
                "bytes_up_total": hub.bytes_up_total,
                "bytes_down_total": hub.bytes_down_total,
                "model_version": hub.model_version,
                "model_origin": hub.model_origin,
            },
            "devices": {key: _device_record(state) for key, state in self._devices.items()},
            "last_data": _iso(hub.last_data),
        }


def _device_record(state: WatchedDevice) -> dict[str, Any]:
    """Record what a restart keeps of a device (its alarm and learnt state live elsewhere)."""
    return {
        "name": state.name,
        "address": state.address,
        "snoozed_until": _iso(state.snoozed_until),
        "observations": state.observations,
        "last_seen": _iso(state.last_seen),
        "dynamic": state.dynamic,
    }


def device_from_record(key: str, name: str, saved: Mapping[str, Any]) -> WatchedDevice:
    """Rebuild a saved device; a registry device's current name wins over the saved one."""
    state = WatchedDevice(key=key, name=name, address=saved.get("address"))
    if until := saved.get("snoozed_until"):
        state.snoozed_until = dt_util.parse_datetime(until)
    if last_seen := saved.get("last_seen"):
        state.last_seen = dt_util.parse_datetime(last_seen)
    state.observations = int(saved.get("observations", 0))
    state.dynamic = bool(saved.get("dynamic", False))
    return state


async def async_remove_stored_data(hass: HomeAssistant, entry: ConfigEntry) -> None:
    """Delete the hub state, the attributor's known addresses, windows and detector state."""
    await Store[dict[str, Any]](hass, STORAGE_VERSION, f"{DOMAIN}.{entry.entry_id}").async_remove()
    await Store[dict[str, Any]](hass, 1, KNOWN_ADDRESSES_KEY).async_remove()
    directory = hass.config.path(".storage", DOMAIN)
    await hass.async_add_executor_job(partial(shutil.rmtree, directory, ignore_errors=True))


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
