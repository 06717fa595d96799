"""Real input end to end: a Zeek conn.log the tail follows drives the entities and the event."""

import json
from pathlib import Path
from typing import Any

from homeassistant.const import STATE_OFF, STATE_ON
from homeassistant.core import HomeAssistant
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.giot.const import CONF_ZEEK_PATH, DOMAIN
from custom_components.giot.coordinator import GIoTCoordinator

from .conftest import CAMERA_IP, REMOTE

ANOMALY = "binary_sensor.giot_192_168_1_50_anomaly"
ALERT = "event.giot_192_168_1_50_alert"


def _conn(ts: float, n: int, resp_h: str, resp_p: int, **extra: Any) -> str:
    record = {
        "ts": ts,
        "uid": f"C{n:05d}",
        "id.orig_h": CAMERA_IP,
        "id.orig_p": 40000 + n,
        "id.resp_h": resp_h,
        "id.resp_p": resp_p,
        "proto": "tcp",
        **extra,
    }
    return json.dumps(record) + "\n"


async def test_scan_in_zeek_log_raises_alert(hass: HomeAssistant, tmp_path: Path) -> None:
    """Routine uploads, then a scan, appended to conn.log: anomaly on and a port_scan event."""
    log = tmp_path / "conn.log"
    log.write_text("")
    entry = MockConfigEntry(domain=DOMAIN, options={CONF_ZEEK_PATH: str(log)})
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    coordinator: GIoTCoordinator = entry.runtime_data.coordinator
    assert coordinator.zeek is not None

    start = 1_763_900_000.0
    routine = "".join(
        _conn(
            start + i * 30,
            i,
            REMOTE,
            443,
            service="ssl",
            conn_state="SF",
            duration=0.3,
            orig_bytes=500,
            resp_bytes=4000,
            orig_pkts=5,
            resp_pkts=6,
        )
        for i in range(40)
    )
    with log.open("a") as handle:
        handle.write(routine)
    await coordinator.zeek.async_poll()
    await hass.async_block_till_done()
    assert hass.states.get(ANOMALY).state == STATE_OFF
    assert hass.states.get("event.giot_network").attributes["event_type"] == "new_device"

    scan = "".join(
        _conn(start + 1210 + i * 0.1, 100 + i, "192.168.1.1", 20 + i, conn_state="S0")
        for i in range(30)
    )
    with log.open("a") as handle:
        handle.write(scan)
    await coordinator.zeek.async_poll()
    await hass.async_block_till_done()
    assert hass.states.get(ANOMALY).state == STATE_ON
    assert hass.states.get(ALERT).attributes["event_type"] == "port_scan"
    assert coordinator.zeek.stats.parse.accepted == 70
