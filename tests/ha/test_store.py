"""The local window store: survives restarts, retention, bounds, atomic writes on a full disk."""

import errno
import json
import time
from datetime import timedelta
from pathlib import Path
from typing import IO
from unittest.mock import patch

import numpy as np
import pytest
from homeassistant.core import HomeAssistant
from homeassistant.util import dt as dt_util
from pytest_homeassistant_custom_component.common import async_fire_time_changed

from custom_components.giot.store import DAY_S, WindowStore, fair_shares, spread_over_time
from giot_engine.hub_detector import InProcessDetector
from giot_engine.persist import dumps_yielding, json_default, read_state, write_state


@pytest.fixture
def hass_config_dir(hass_tmp_config_dir: str) -> str:
    """Give each test its own configuration directory: the store writes real files there."""
    return hass_tmp_config_dir


def _windows(n: int, width: int = 8, start: int = 0) -> np.ndarray:
    return (np.arange(n * width).reshape(n, width) + start).astype(np.int64) % 500


def _files(store: WindowStore) -> list[Path]:
    return sorted(store.windows_dir.iterdir()) if store.windows_dir.exists() else []


async def test_windows_survive_restart(hass: HomeAssistant) -> None:
    """A second store on the same configuration directory reads what the first one saved."""
    now = time.time()
    store = WindowStore(hass, save_delay_s=0)
    await store.async_load()
    assert store.add("dev-a", _windows(3), now - 10) == 3
    assert (
        store.add("mac:aa:bb:cc:dd:ee:ff", _windows(2, start=7), np.array([now - 5, now - 6])) == 2
    )
    assert await store.async_save()
    assert Path(hass.config.path(".storage", "giot", "windows")) == store.windows_dir
    assert len(_files(store)) == 2

    again = WindowStore(hass)
    await again.async_load()
    assert sorted(again.devices()) == ["dev-a", "mac:aa:bb:cc:dd:ee:ff"]
    np.testing.assert_array_equal(again.windows("dev-a"), _windows(3))
    assert again.windows("dev-a").dtype == np.int32
    # windows are kept oldest first, whatever order they came in
    np.testing.assert_array_equal(again.timestamps("mac:aa:bb:cc:dd:ee:ff"), [now - 6, now - 5])
    np.testing.assert_array_equal(
        again.windows("mac:aa:bb:cc:dd:ee:ff"), _windows(2, start=7)[::-1]
    )
    assert again.all_windows().shape == (5, 8)

    again.remove_device("dev-a")
    assert await again.async_save()
    assert len(_files(again)) == 1
    third = WindowStore(hass)
    await third.async_load()
    assert third.devices() == ["mac:aa:bb:cc:dd:ee:ff"]


async def test_retention_drops_old_windows(hass: HomeAssistant, freezer: object) -> None:
    """Windows older than the retention go on add, on prune and when loaded after a while."""
    now = time.time()
    store = WindowStore(hass, retention_days=7, save_delay_s=0)
    await store.async_load()
    stamps = np.array([now - 8 * DAY_S, now - 2 * DAY_S, now - 60])
    store.add("dev", _windows(3), stamps)
    assert store.timestamps("dev").tolist() == stamps[1:].tolist()
    assert store.stats.dropped_retention == 1
    await store.async_save()

    assert store.prune(now + 6 * DAY_S) == 1  # the two-day-old one is now eight days old
    assert store.timestamps("dev").tolist() == [now - 60]

    # a restart a week later: the saved file still has two windows, both expired by then
    freezer.tick(timedelta(days=8))  # type: ignore[attr-defined]
    later = WindowStore(hass, retention_days=7)
    await later.async_load()
    assert later.devices() == []
    assert later.stats.dropped_retention == 2
    assert _files(later) == []  # the expired file was removed at load


async def test_bounds_per_device_and_total(hass: HomeAssistant) -> None:
    """The oldest windows give way, per device first, then across devices."""
    now = time.time()
    store = WindowStore(hass, max_windows_per_device=4, max_windows_total=6, save_delay_s=0)
    await store.async_load()
    store.add("a", _windows(6), now - np.arange(6, 0, -1))  # a: ts now-6 .. now-1
    assert store.timestamps("a").tolist() == [now - 4, now - 3, now - 2, now - 1]
    assert store.stats.dropped_bound == 2
    store.add("b", _windows(4), now - np.array([10.0, 0.5, 0.4, 0.3]))
    assert store.total_windows == 6
    # the globally oldest two went: b's now-10 and a's now-4
    assert store.timestamps("a").tolist() == [now - 3, now - 2, now - 1]
    assert store.timestamps("b").tolist() == [now - 0.5, now - 0.4, now - 0.3]
    assert store.stats.dropped_bound == 4

    assert store.add("b", _windows(1, width=5), now) == 0
    assert store.stats.rejected["width_mismatch"] == 1
    assert store.add("c", np.array([[1, -2, 3]]), now) == 0
    assert store.stats.rejected["bad_token_id"] == 1
    assert store.add("c", np.ones((2, 3)), now) == 0  # floats are not token ids
    assert store.stats.rejected["bad_shape"] == 2


async def test_delayed_save(hass: HomeAssistant) -> None:
    """Added windows reach the disk by themselves after the save delay."""
    store = WindowStore(hass, save_delay_s=30)
    await store.async_load()
    store.add("dev", _windows(2), time.time())
    await hass.async_block_till_done()
    assert _files(store) == []
    async_fire_time_changed(hass, dt_util.utcnow() + timedelta(seconds=31))
    await hass.async_block_till_done(wait_background_tasks=True)
    assert len(_files(store)) == 1
    assert store.stats.writes == 1


def _disk_full(handle: IO[bytes], **_: object) -> None:
    """What a full disk does: part of the file is written, then the write fails."""
    handle.write(b"PK\x03\x04 half a zip")
    raise OSError(errno.ENOSPC, "No space left on device")


async def test_full_disk_keeps_previous_file(hass: HomeAssistant) -> None:
    """ENOSPC is counted and reported, the old file stays whole, and a later save recovers."""
    now = time.time()
    store = WindowStore(hass, save_delay_s=0)
    await store.async_load()
    store.add("dev", _windows(2), now - 1)
    assert await store.async_save()
    (path,) = _files(store)
    before = path.read_bytes()

    store.add("dev", _windows(3, start=100), now)
    with patch("custom_components.giot.store._write_arrays", side_effect=_disk_full):
        assert not await store.async_save()
    assert store.disk_full
    assert store.stats.disk_full_errors == 1
    assert store.stats.last_error is not None
    assert store.stats.last_error.startswith("ENOSPC")
    assert _files(store) == [path]  # no temporary file left behind
    assert path.read_bytes() == before

    restarted = WindowStore(hass)
    await restarted.async_load()
    assert restarted.windows("dev").shape == (2, 8)  # the previous version, intact

    assert await store.async_save()  # the failed device stays dirty and is retried
    assert not store.disk_full
    restarted = WindowStore(hass)
    await restarted.async_load()
    assert restarted.windows("dev").shape == (5, 8)


async def test_detector_state_round_trip_and_full_disk(hass: HomeAssistant) -> None:
    """The detector's plain-data state persists; a failed write keeps the previous state.

    The detector writes the file itself (in its own process); the store counts how it went.
    """
    store = WindowStore(hass)
    path = store.detector_file
    assert read_state(path) is None
    state: dict[str, object] = {
        "version": 1,
        "vocab": "giot-vocab-1",
        "devices": {"192.168.1.20": {"seen": 42, "calib": [1.5, np.float32(2.0)]}},
    }
    assert store.record_detector_save(write_state(path, state))
    loaded = read_state(WindowStore(hass).detector_file)
    assert loaded == {
        "version": 1,
        "vocab": "giot-vocab-1",
        "devices": {"192.168.1.20": {"seen": 42, "calib": [1.5, 2.0]}},
    }

    with patch("giot_engine.persist.write_json", side_effect=_disk_full):
        err = write_state(path, {"version": 2})
    assert isinstance(err, OSError)
    assert err.errno == errno.ENOSPC
    assert not store.record_detector_save(err)
    assert store.disk_full
    assert store.stats.disk_full_errors == 1
    assert read_state(path) == loaded
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    assert store.record_detector_save(None)
    assert not store.disk_full


async def test_unreadable_files_are_skipped(hass: HomeAssistant) -> None:
    """A damaged window file or detector state is counted and ignored, never fatal."""
    store = WindowStore(hass, save_delay_s=0)
    await store.async_load()
    store.add("good", _windows(1), time.time())
    await store.async_save()
    (store.windows_dir / ("0" * 32 + ".npz")).write_bytes(b"not a zip at all")
    (store.windows_dir / ".leftover.npz.123.tmp").write_bytes(b"crash debris")
    (store.directory / "detector_state.json").write_text("{not json")

    again = WindowStore(hass)
    await again.async_load()
    assert again.devices() == ["good"]
    assert again.stats.corrupt_files == 1
    assert not (store.windows_dir / ".leftover.npz.123.tmp").exists()
    with pytest.raises(ValueError, match="Expecting property name"):
        read_state(again.detector_file)
    assert InProcessDetector().load_state_file(again.detector_file) == "unreadable"


def test_state_serialiser_writes_what_json_dumps_writes() -> None:
    """The GIL-friendly serialiser must give exactly the bytes of ``json.dumps``."""
    state = {
        "engine": {
            "devices": {
                f"192.168.1.{i}": {"ids": list(range(56)), "calib": [0.5 * k for k in range(300)]}
                for i in range(40)
            }
        },
        "keys": {"a": "b"},
        "flags": [True, False, None],
        "ratio": 1e-9,
        "window": np.arange(4, dtype=np.int32),
    }
    want = json.dumps(state, default=json_default, separators=(",", ":")).encode()
    assert dumps_yielding(state) == want


def test_over_the_bound_every_hour_keeps_a_share() -> None:
    """A busy last hour does not push out the days before: training sees the whole period."""
    now = 1_763_900_000.0
    recent = now - np.linspace(0, 3000, 200)  # 200 windows in the last hour
    earlier = np.concatenate([now - d * DAY_S - np.arange(10) for d in range(1, 6)])  # 5 days
    ts = np.sort(np.concatenate([recent, earlier]))
    keep = spread_over_time(ts, 40)
    assert keep.sum() == 40
    for day in range(1, 6):  # each earlier day (one hour of 10 windows) keeps its share
        in_day = (ts <= now - day * DAY_S) & (ts > now - day * DAY_S - 10)
        assert keep[in_day].sum() >= 6
    kept_recent = keep[ts > now - 3600]
    assert 0 < kept_recent.sum() <= 10
    # within an hour the newest stay
    assert keep[np.argmax(ts)]
    assert spread_over_time(ts, 1000).all()
    assert not spread_over_time(ts, 0).any()


def test_fair_shares_shrink_the_biggest_first() -> None:
    """Over the total bound a quiet device keeps its few windows; the busy ones share the rest."""
    assert fair_shares([5, 100, 300], 205) == [5, 100, 100]
    assert fair_shares([5, 100, 300], 1000) == [5, 100, 300]
    shares = fair_shares([5, 101, 300], 206)
    assert sum(shares) == 206
    assert shares[0] == 5
    assert abs(shares[1] - shares[2]) <= 1


async def test_a_busy_device_does_not_erase_a_quiet_ones_past(hass: HomeAssistant) -> None:
    """The total bound takes from the busy device, and from its busiest hours."""
    now = time.time()
    store = WindowStore(hass, max_windows_per_device=50, max_windows_total=50, save_delay_s=0)
    await store.async_load()
    store.add("quiet", _windows(10), now - DAY_S - np.arange(10) * 600.0)
    store.add("busy", _windows(30), now - 10 * DAY_S + np.arange(30) * 60.0)  # long ago
    store.add("busy", _windows(40), now - np.arange(40) * 1.0)  # the last minute
    assert store.total_windows == 50
    assert len(store.timestamps("quiet")) == 10  # oldest-first would have dropped these
    busy = store.timestamps("busy")
    assert len(busy) == 40
    assert (busy < now - 9 * DAY_S).sum() >= 15  # ten days ago is still there
