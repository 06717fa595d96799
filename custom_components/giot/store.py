"""The hub's own store of token windows for local training, and of the detector's state.

Windows are raw behaviour of the home, so they are kept on the hub only (under
``.storage/giot/``), bounded per device and in total, and dropped after a retention period. Every
file is replaced atomically (temporary file, fsync, ``os.replace``), so a crash or a full disk
leaves the previous version in place; a failed write is counted and reported through ``stats`` and
``disk_full`` so the coordinator can raise a repair instead of failing silently (Home Assistant's
``Store`` logs write errors and swallows them, which is why these files are written here). The
detector's state file sits beside the windows, but the detector reads and writes it itself (in its
own process, see ``detector_process``): the store only counts how that went.
"""

import errno
import hashlib
import os
import time
import zipfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any

import numpy as np
from homeassistant.core import CALLBACK_TYPE, HomeAssistant, callback
from homeassistant.helpers.event import async_call_later

from giot_engine.persist import atomic_write

from .const import DOMAIN, LOGGER

WINDOW_SUFFIX = ".npz"
DETECTOR_FILE = "detector_state.json"
DAY_S = 86400.0
SPREAD_BUCKET_S = 3600.0  # over a bound, each hour of a device's history keeps an equal share


@dataclass(slots=True)
class StoreStats:
    """What the store holds and what went wrong writing it."""

    windows: int = 0
    devices: int = 0
    added: int = 0
    dropped_retention: int = 0
    dropped_bound: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    writes: int = 0
    write_errors: int = 0
    disk_full_errors: int = 0
    corrupt_files: int = 0
    last_error: str | None = None


@dataclass(slots=True)
class _DeviceWindows:
    """One device's windows; arrays are replaced, never changed in place, so writers can share."""

    windows: np.ndarray  # (N, T) int32 token ids
    ts: np.ndarray  # (N,) float64 epoch seconds, oldest first


def _write_arrays(handle: IO[bytes], *, arrays: Mapping[str, np.ndarray]) -> None:
    """Serialise arrays into an open file (the step a full disk makes fail)."""
    np.savez(handle, allow_pickle=False, **arrays)


def _file_name(key: str) -> str:
    # Keys may be device ids or addresses ("mac:aa:bb:..."): hash them into safe, fixed names.
    return hashlib.sha256(key.encode()).hexdigest()[:32] + WINDOW_SUFFIX


def spread_over_time(ts: np.ndarray, quota: int) -> np.ndarray:
    """Which of these windows to keep (a mask), at most ``quota``, spread over their hours.

    Hours are counted back from the newest window; every hour keeps the same number (its
    newest), an hour with fewer keeps all of them, and what is left goes to the newest hours.
    """
    count = len(ts)
    if count <= quota:
        return np.ones(count, bool)
    if quota <= 0:
        return np.zeros(count, bool)
    hours = np.floor((ts.max() - ts) / SPREAD_BUCKET_S).astype(np.int64)
    _, bucket, sizes = np.unique(hours, return_inverse=True, return_counts=True)
    level = _water_level(sizes, quota)
    order = np.lexsort((-ts, bucket))  # by hour (newest hour first), newest first within it
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank = np.empty(count, np.int64)
    rank[order] = np.arange(count) - np.repeat(starts, sizes)
    keep = rank < level
    left = quota - int(keep.sum())
    if left > 0:  # one more for the newest hours that had more than the level
        next_in_line = np.flatnonzero(rank == level)
        keep[next_in_line[np.argsort(-ts[next_in_line], kind="stable")[:left]]] = True
    return keep


def fair_shares(sizes: list[int], total: int) -> list[int]:
    """Per device, how many windows it keeps of ``total``: the biggest give way first."""
    counts = np.asarray(sizes, np.int64)
    if counts.sum() <= total:
        return sizes
    level = _water_level(counts, total)
    shares = np.minimum(counts, level)
    left = total - int(shares.sum())
    bigger = np.flatnonzero(counts > level)
    shares[bigger[np.argsort(-counts[bigger], kind="stable")[:left]]] += 1
    return [int(share) for share in shares]


def _water_level(sizes: np.ndarray, quota: int) -> int:
    """Find the largest level with ``sum(min(sizes, level)) <= quota`` (binary search)."""
    low, high = 0, int(sizes.max())
    while low < high:
        middle = (low + high + 1) // 2
        if int(np.minimum(sizes, middle).sum()) <= quota:
            low = middle
        else:
            high = middle - 1
    return low


def _now() -> float:
    return time.time()


class WindowStore:
    """Bounded, persistent per-device store of token windows plus the detector's saved state."""

    def __init__(
        self,
        hass: HomeAssistant,
        *,
        max_windows_per_device: int = 2000,
        max_windows_total: int = 20000,
        retention_days: float = 30.0,
        save_delay_s: float = 60.0,
        directory: str | os.PathLike[str] | None = None,
    ) -> None:
        """Keep the limits; nothing is read until ``async_load``."""
        self.hass = hass
        self.max_windows_per_device = max(1, max_windows_per_device)
        self.max_windows_total = max(1, max_windows_total)
        self.retention_days = retention_days
        self.save_delay_s = save_delay_s
        self.directory = Path(directory or hass.config.path(".storage", DOMAIN))
        self.windows_dir = self.directory / "windows"
        self._devices: dict[str, _DeviceWindows] = {}
        self._dirty: set[str] = set()
        self._stats = StoreStats()
        self._disk_full = False
        self._cancel_save: CALLBACK_TYPE | None = None

    # -- status -------------------------------------------------------------------------------

    @property
    def stats(self) -> StoreStats:
        """Counters for diagnostics (current sizes refreshed on read)."""
        self._stats.devices = len(self._devices)
        self._stats.windows = self.total_windows
        return self._stats

    @property
    def disk_full(self) -> bool:
        """Whether the last write failed for lack of space (cleared by the next good write)."""
        return self._disk_full

    @property
    def total_windows(self) -> int:
        """Windows held, all devices together."""
        return sum(len(d.ts) for d in self._devices.values())

    def devices(self) -> list[str]:
        """Keys of the devices that have windows."""
        return list(self._devices)

    def windows(self, key: str) -> np.ndarray:
        """One device's windows, oldest first (an empty (0, 0) array for an unknown device)."""
        entry = self._devices.get(key)
        return entry.windows if entry is not None else np.zeros((0, 0), np.int32)

    def timestamps(self, key: str) -> np.ndarray:
        """When each of one device's windows was taken, oldest first."""
        entry = self._devices.get(key)
        return entry.ts if entry is not None else np.zeros(0, np.float64)

    def all_windows(self, width: int | None = None) -> np.ndarray:
        """Every window of the given width (default: the most common), for one training run."""
        by_width = Counter[int]()
        for entry in self._devices.values():
            by_width[entry.windows.shape[1]] += len(entry.ts)
        if width is None:
            if not by_width:
                return np.zeros((0, 0), np.int32)
            width = by_width.most_common(1)[0][0]
        parts = [e.windows for e in self._devices.values() if e.windows.shape[1] == width]
        return np.concatenate(parts) if parts else np.zeros((0, width), np.int32)

    # -- changes ------------------------------------------------------------------------------

    @callback
    def add(self, key: str, windows: np.ndarray, ts: float | np.ndarray) -> int:
        """Add windows (N, T) of token ids for one device; return how many were accepted.

        Windows of another width than the device's earlier ones are refused (counted): a
        changed tokenizer or model context makes the old ones useless, and the coordinator
        clears the store then.
        """
        arr = np.asarray(windows)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] == 0 or not np.issubdtype(arr.dtype, np.integer):
            self._stats.rejected["bad_shape"] += max(1, len(arr))
            return 0
        if arr.size and (arr.min() < 0 or arr.max() > np.iinfo(np.int32).max):
            self._stats.rejected["bad_token_id"] += len(arr)
            return 0
        stamps = np.broadcast_to(np.asarray(ts, np.float64), (len(arr),)).copy()
        if not np.all(np.isfinite(stamps)):
            self._stats.rejected["bad_ts"] += len(arr)
            return 0
        entry = self._devices.get(key)
        if entry is not None and entry.windows.shape[1] != arr.shape[1]:
            self._stats.rejected["width_mismatch"] += len(arr)
            return 0
        arr = arr.astype(np.int32)
        if entry is not None:
            arr = np.concatenate([entry.windows, arr])
            stamps = np.concatenate([entry.ts, stamps])
        order = np.argsort(stamps, kind="stable")
        self._devices[key] = _DeviceWindows(arr[order], stamps[order])
        self._dirty.add(key)
        self._stats.added += len(stamps) - (0 if entry is None else len(entry.ts))
        self._enforce(_now(), only=key)
        self._schedule_save()
        return len(order) - (0 if entry is None else len(entry.ts))

    @callback
    def prune(self, now: float | None = None) -> int:
        """Apply retention and bounds now; return how many windows were dropped."""
        before = self.total_windows
        self._enforce(_now() if now is None else now)
        dropped = before - self.total_windows
        if dropped:
            self._schedule_save()
        return dropped

    @callback
    def remove_device(self, key: str) -> None:
        """Forget one device's windows (its file goes at the next save)."""
        if self._devices.pop(key, None) is not None:
            self._dirty.add(key)
            self._schedule_save()

    @callback
    def clear(self) -> None:
        """Forget every window (e.g. after a vocabulary change)."""
        self._dirty.update(self._devices)
        self._devices.clear()
        self._schedule_save()

    def _set(self, key: str, keep: np.ndarray) -> None:
        entry = self._devices[key]
        if keep.all():
            return
        self._dirty.add(key)
        if keep.any():
            self._devices[key] = _DeviceWindows(entry.windows[keep], entry.ts[keep])
        else:
            del self._devices[key]

    def _enforce(self, now: float, only: str | None = None) -> None:
        """Apply retention and the per-device bound, then the bound on the whole store.

        Over a bound, windows are not dropped oldest first: a busy device makes its bound's worth
        in minutes, and local training would then learn only its last minutes (at night, the
        night). Each hour of its history keeps an equal share instead (the newest of the hour),
        so the store spans the retention period; over the total bound the biggest devices give
        way first, so a quiet device keeps its few. ``only``: the device just added to (an add
        must not cost a pass over every device; housekeeping prunes them all).
        """
        cutoff = now - self.retention_days * DAY_S
        for key in list(self._devices) if only is None else [only]:
            entry = self._devices[key]
            old = entry.ts < cutoff
            self._stats.dropped_retention += int(old.sum())
            keep = ~old
            survivors = np.flatnonzero(keep)
            over = len(survivors) - self.max_windows_per_device
            if over > 0:
                kept = spread_over_time(entry.ts[survivors], self.max_windows_per_device)
                keep[survivors[~kept]] = False
                self._stats.dropped_bound += over
            self._set(key, keep)
        over = self.total_windows - self.max_windows_total
        if over <= 0:
            return
        keys = list(self._devices)
        shares = fair_shares([len(self._devices[k].ts) for k in keys], self.max_windows_total)
        for key, share in zip(keys, shares, strict=True):
            ts = self._devices[key].ts
            if share < len(ts):
                self._set(key, spread_over_time(ts, share))
        self._stats.dropped_bound += over

    # -- persistence --------------------------------------------------------------------------

    async def async_load(self) -> None:
        """Read the windows saved by an earlier run, then apply retention and bounds."""
        loaded, corrupt = await self.hass.async_add_executor_job(self._load_files)
        self._stats.corrupt_files += corrupt
        self._devices = loaded
        self._dirty.clear()
        before = self.total_windows
        self._enforce(_now())
        if self.total_windows != before:
            await self.async_save()

    def _load_files(self) -> tuple[dict[str, _DeviceWindows], int]:
        devices: dict[str, _DeviceWindows] = {}
        corrupt = 0
        if not self.windows_dir.is_dir():
            return devices, corrupt
        for path in sorted(self.windows_dir.iterdir()):
            if path.name.endswith(".tmp"):  # left by a crash mid-write; the real file is intact
                path.unlink(missing_ok=True)
                continue
            if path.suffix != WINDOW_SUFFIX:
                continue
            try:
                with np.load(path, allow_pickle=False) as data:
                    key = str(data["key"])
                    windows = np.asarray(data["windows"], np.int32)
                    ts = np.asarray(data["ts"], np.float64)
                if windows.ndim != 2 or ts.shape != (len(windows),) or path.name != _file_name(key):
                    raise ValueError("inconsistent window file")
            except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
                LOGGER.warning("Ignoring unreadable GIoT window file %s: %s", path.name, err)
                corrupt += 1
                continue
            if len(ts):
                order = np.argsort(ts, kind="stable")
                devices[key] = _DeviceWindows(windows[order], ts[order])
        return devices, corrupt

    @callback
    def _schedule_save(self) -> None:
        if self._cancel_save is not None or self.save_delay_s <= 0:
            return

        async def _save(_now: Any) -> None:
            self._cancel_save = None
            await self.async_save()

        self._cancel_save = async_call_later(self.hass, self.save_delay_s, _save)

    async def async_save(self) -> bool:
        """Write every changed device file now; False (and counted) if a write failed."""
        if self._cancel_save is not None:
            self._cancel_save()
            self._cancel_save = None
        if not self._dirty:
            return True
        dirty, self._dirty = self._dirty, set()
        jobs = {key: self._devices.get(key) for key in dirty}
        errors = await self.hass.async_add_executor_job(self._write_devices, jobs)
        for err in errors.values():
            self._record_error(err)
        if len(errors) < len(jobs):
            self._record_success(len(jobs) - len(errors))
        self._dirty.update(errors)  # retried at the next save
        return not errors

    def _write_devices(self, jobs: Mapping[str, _DeviceWindows | None]) -> dict[str, OSError]:
        """Executor side: write or delete each file; the errors go back to the event loop."""
        errors: dict[str, OSError] = {}
        for key, entry in jobs.items():
            path = self.windows_dir / _file_name(key)
            try:
                if entry is None:
                    path.unlink(missing_ok=True)
                    continue
                arrays = {"key": np.array(key), "windows": entry.windows, "ts": entry.ts}
                atomic_write(path, partial(_write_arrays, arrays=arrays))
            except OSError as err:
                errors[key] = err
        return errors

    def _record_error(self, err: OSError) -> None:
        self._stats.write_errors += 1
        self._stats.last_error = f"{errno.errorcode.get(err.errno or 0, 'OSError')}: {err}"
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            self._stats.disk_full_errors += 1
            self._disk_full = True
        LOGGER.error("GIoT could not write its local store: %s", err)

    def _record_success(self, count: int = 1) -> None:
        self._stats.writes += count
        self._disk_full = False

    @property
    def detector_file(self) -> Path:
        """Where the detector's state is kept (the detector reads and writes it itself)."""
        return self.directory / DETECTOR_FILE

    def record_detector_save(self, err: OSError | None) -> bool:
        """Count how saving the detector's state went (a full disk raises the repair)."""
        if err is not None:
            self._record_error(err)
            return False
        self._record_success()
        return True

    def record_unreadable(self) -> None:
        """Count a damaged file that was ignored (the detector's state, read elsewhere)."""
        self._stats.corrupt_files += 1

    async def async_close(self) -> None:
        """Flush pending changes (on unload)."""
        await self.async_save()
