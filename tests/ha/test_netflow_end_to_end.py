"""Real input end to end: NetFlow datagrams on a real UDP socket drive the camera's entities."""

import asyncio
import dataclasses
import socket
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

import pytest
from homeassistant.const import STATE_OFF, STATE_ON
from homeassistant.core import HomeAssistant
from homeassistant.util import dt as dt_util
from pytest_homeassistant_custom_component.common import MockConfigEntry, async_fire_time_changed

from custom_components.giot.const import CONF_NETFLOW_PORT
from custom_components.giot.coordinator import GIoTCoordinator
from custom_components.giot.netflow_listener import JOIN_HOLD_S
from giot_engine.records import FlowRecord
from tests.engine.netflow_packets import build_v5, build_v9, reply_of

from .conftest import CAMERA_IP, normal_flows, scan_flows

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
    _release_waiting_halves(hass)

    anomaly = "binary_sensor.giot_192_168_1_50_anomaly"
    await _wait(hass, lambda: hass.states.get(anomaly) is not None)
    await _wait(hass, lambda: hass.states.get(anomaly).state == STATE_ON)
    assert hass.states.get(ANOMALY).state == STATE_OFF  # nothing tied these flows to the camera
    assert coordinator.netflow.stats.flows == 70


ROUTER = "192.168.1.1"


def _router_answers(start: float) -> list[FlowRecord]:
    """What a router exports besides the camera's own flows: its answers to the camera.

    DNS answers (53 -> the camera's ephemeral ports) whose queries the router did not export,
    and DHCP offers/acks (67 -> 68), to the camera and to the limited broadcast.
    """
    dns = [
        FlowRecord(
            ts=start + i * 30.0 + 0.5,
            orig_h=ROUTER,
            orig_p=53,
            resp_h=CAMERA_IP,
            resp_p=40000 + i,
            proto="udp",
            duration=0.0,
            orig_bytes=180,
            orig_pkts=1,
            orig_mac="02:00:00:00:00:01",
        )
        for i in range(30)
    ]
    dhcp = FlowRecord(
        ts=start + 5.0, orig_h=ROUTER, orig_p=67, resp_h=CAMERA_IP, resp_p=68, proto="udp",
        duration=0.0, orig_bytes=342, orig_pkts=1, orig_mac="02:00:00:00:00:01",
    )  # fmt: skip
    return [*dns, dhcp, dataclasses.replace(dhcp, ts=start + 6.0, resp_h="255.255.255.255")]


async def test_router_answers_are_the_cameras_traffic_not_the_routers(
    hass: HomeAssistant,
    camera_entry_options: Callable[..., Coroutine[Any, Any, MockConfigEntry]],
) -> None:
    """v9 uniflow exports of both directions: the camera's uploads with their reverse records
    (joined into one flow each), and the router's DNS and DHCP answers. The router initiated
    none of it: it gets no device, no entities, no alarm and no profile; the camera's flows
    carry the answers' bytes."""
    port = _free_udp_port()
    entry = await camera_entry_options(**{CONF_NETFLOW_PORT: port})
    coordinator: GIoTCoordinator = entry.runtime_data.coordinator
    assert coordinator.netflow is not None

    start = 1_763_900_000
    routine = normal_flows(start, mac=None)
    replies = [reply_of(flow, delay=0.1) for flow in routine]
    answers = _router_answers(start)
    chunks = [
        routine[:20] + replies[:20],
        replies[20:] + answers,  # the forward records of these replies come after them
        routine[20:],
    ]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for sequence, chunk in enumerate(chunks):
            datagram = build_v9(chunk, unix_secs=start + 1300, sequence=sequence)
            sender.sendto(datagram, ("127.0.0.1", port))
            await _wait(hass, lambda n=sequence: coordinator.netflow.stats.accepted > n)
    _release_waiting_halves(hass)
    await _wait(hass, lambda: coordinator.netflow.stats.join_pending == 0)
    stats = coordinator.netflow.stats
    assert stats.joined == 40  # every upload and its reply: one flow
    assert stats.answers == 40 + 32  # replies and the router's answers, turned round
    assert stats.lone_answers == 32
    assert stats.flows == 40 + 32

    camera = f"net:{CAMERA_IP}"
    await _wait(hass, lambda: camera in coordinator.devices)
    assert f"net:{ROUTER}" not in coordinator.devices
    assert "net:255.255.255.255" not in coordinator.devices
    assert hass.states.get("binary_sensor.giot_192_168_1_1_anomaly") is None
    assert hass.states.get("binary_sensor.giot_192_168_1_50_anomaly") is not None
    # The router's answers are the camera's own DNS and DHCP traffic. New to the camera, they
    # may be held out of its profile while they alarm (the quarantine); marked normal, they join.
    await coordinator.async_mark_normal(camera)
    profile = (await coordinator.async_describe(camera)).profile
    assert profile is not None
    acl = profile["ietf-access-control-list:acls"]["acl"][0]
    services = {ace["name"] for ace in acl["aces"]["ace"]}
    assert {"tcp-443-remote", "udp-53-local", "udp-67-local"} <= services
    assert not any(name.startswith("udp-400") for name in services)  # no reply ports


def _release_waiting_halves(hass: HomeAssistant) -> None:
    """Fire the listener's timer: halves whose other direction never came are delivered."""
    async_fire_time_changed(hass, dt_util.utcnow() + timedelta(seconds=JOIN_HOLD_S + 1))


async def _wait(hass: HomeAssistant, condition: Callable[[], bool]) -> None:
    for _ in range(400):
        await hass.async_block_till_done(wait_background_tasks=True)
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")
