"""Real input end to end: NetFlow v5 datagrams on a real UDP socket drive the camera's entities."""

import asyncio
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from homeassistant.const import STATE_OFF, STATE_ON
from homeassistant.core import HomeAssistant
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.giot.const import CONF_NETFLOW_PORT
from custom_components.giot.coordinator import GIoTCoordinator
from tests.engine.netflow_packets import build_v5

from .conftest import normal_flows, scan_flows

pytestmark = pytest.mark.usefixtures("socket_enabled")

ANOMALY = "binary_sensor.camera_anomaly"


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_netflow_scan_turns_camera_anomaly_on(
    hass: HomeAssistant,
    camera_entry_options: Callable[..., Coroutine[Any, Any, MockConfigEntry]],
) -> None:
    """The router exports the camera's routine, then a scan: an anomaly on the scanning address.

    NetFlow v5 carries no MAC and HA knows the camera only by its MAC, so these flows land on
    the camera's address as a network-only device (entities on the GIoT hub).
    """
    port = _free_udp_port()
    entry = await camera_entry_options(**{CONF_NETFLOW_PORT: port})
    coordinator: GIoTCoordinator = entry.runtime_data.coordinator
    assert coordinator.netflow is not None
    assert coordinator.netflow.running

    start = 1_763_900_000
    routine = normal_flows(start, mac=None)
    scan = scan_flows(start + 1210, mac=None)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for sequence, chunk in enumerate([routine[:20], routine[20:], scan]):
            datagram = build_v5(chunk, unix_secs=int(chunk[-1].ts) + 1, sequence=sequence * 30)
            sender.sendto(datagram, ("127.0.0.1", port))
            await _wait(hass, lambda n=sequence: coordinator.netflow.stats.accepted > n)

    anomaly = "binary_sensor.giot_192_168_1_50_anomaly"
    await _wait(hass, lambda: hass.states.get(anomaly) is not None)
    await _wait(hass, lambda: hass.states.get(anomaly).state == STATE_ON)
    assert hass.states.get(ANOMALY).state == STATE_OFF  # nothing tied these flows to the camera
    assert coordinator.netflow.stats.flows == 70


async def _wait(hass: HomeAssistant, condition: Callable[[], bool]) -> None:
    for _ in range(400):
        await hass.async_block_till_done(wait_background_tasks=True)
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")
