"""Cost on the event loop of the attributor's lookup tables in a big home (not a test).

Run: ``scripts/bench ha-attribution`` (or ``.venv/bin/python -m pytest
benchmarks/ha/attribution.py -p no:cacheprovider -s``). Environment: ``GIOT_BENCH_DEVICES``
(default 1,500, two in three with a MAC connection), ``GIOT_BENCH_TRACKERS`` (default 300),
``GIOT_BENCH_OUT`` (results file, default docs/results/ha_attribution.md; empty: print only).

Both refreshes run on the event loop, at the next flow after a change: a device registry change
refolds the registry's MACs and the trackers; a tracker's new state (a phone's address, all day
long) refolds the trackers only.
"""

import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from homeassistant.core import HomeAssistant
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers import entity_registry as er
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.giot.attribution import DeviceAttributor

ROOT = Path(__file__).resolve().parents[2]
DEVICES = int(os.environ.get("GIOT_BENCH_DEVICES", "1500"))
TRACKERS = int(os.environ.get("GIOT_BENCH_TRACKERS", "300"))
OUT = os.environ.get("GIOT_BENCH_OUT", str(ROOT / "docs" / "results" / "ha_attribution.md"))
REPEATS = 50


def _mac(i: int) -> str:
    return f"02:00:00:{i // 65536 % 256:02x}:{i // 256 % 256:02x}:{i % 256:02x}"


def _home(hass: HomeAssistant) -> tuple[str, str]:
    """Build the home; return a device id and a tracker entity id to change."""
    entry = MockConfigEntry(domain="bench_vendor")
    entry.add_to_hass(hass)
    dev_reg, ent_reg = dr.async_get(hass), er.async_get(hass)
    device_id = tracker_id = ""
    for i in range(DEVICES):
        device = dev_reg.async_get_or_create(
            config_entry_id=entry.entry_id,
            identifiers={("bench_vendor", str(i))},
            connections={(dr.CONNECTION_NETWORK_MAC, _mac(i))} if i % 3 else set(),
        )
        if i < TRACKERS:
            tracker = ent_reg.async_get_or_create(
                "device_tracker", "bench_vendor", f"t{i}", config_entry=entry, device_id=device.id
            )
            hass.states.async_set(
                tracker.entity_id, "home", {"ip": f"10.0.{i // 250}.{i % 250}", "mac": _mac(i)}
            )
            tracker_id = tracker.entity_id
        device_id = device.id
    return device_id, tracker_id


def _timed(step: Callable[[], None], change: Callable[[int], None]) -> list[float]:
    took = []
    for i in range(REPEATS):
        change(i)
        start = time.perf_counter()
        step()
        took.append((time.perf_counter() - start) * 1000)
    return took


async def test_attribution_refresh(hass: HomeAssistant) -> None:
    """Time both refreshes and write the results."""
    device_id, tracker_id = _home(hass)
    attributor = DeviceAttributor(hass)
    await attributor.async_start()

    def move_tracker(i: int) -> None:
        hass.states.async_set(tracker_id, "home", {"ip": f"10.9.0.{i}", "mac": _mac(0)})

    def touch_device(i: int) -> None:
        dr.async_get(hass).async_update_device(device_id, name=f"renamed {i}")

    tracker = _timed(attributor._fresh, move_tracker)
    registry = _timed(attributor._fresh, touch_device)
    assert attributor.stats.rebuilds >= 2 * REPEATS  # each change was seen and refolded
    await attributor.async_stop()
    with_mac = sum(1 for i in range(DEVICES) if i % 3)
    lines = [
        "# Attribution tables on the event loop in a big home",
        "",
        "- Command: `scripts/bench ha-attribution`"
        " (`.venv/bin/python -m pytest benchmarks/ha/attribution.py -p no:cacheprovider -s`)",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {platform.platform()}, {os.cpu_count()} CPUs (shared),"
        f" Python {platform.python_version()}",
        f"- Home: {DEVICES:,} devices in the registry ({with_mac:,} with a MAC connection),"
        f" {TRACKERS:,} device trackers with IP and MAC; {REPEATS} changes each",
        "",
        "| change | refresh on the event loop: median ms | max ms |",
        "|---|---:|---:|",
        f"| a tracker's new address (trackers refolded) | {statistics.median(tracker):.2f} |"
        f" {max(tracker):.2f} |",
        f"| a device renamed (registry and trackers refolded) | {statistics.median(registry):.2f}"
        f" | {max(registry):.2f} |",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if OUT:
        await hass.async_add_executor_job(Path(OUT).write_text, report)
