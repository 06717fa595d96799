"""The NetFlow/IPFIX collector on a real UDP socket, fed real v5, v9 and IPFIX datagrams."""

import asyncio
import dataclasses
import socket
from collections.abc import AsyncGenerator, Callable, Generator
from datetime import timedelta

import pytest
from homeassistant.core import HomeAssistant
from homeassistant.util import dt as dt_util
from pytest_homeassistant_custom_component.common import async_fire_time_changed

from custom_components.giot.netflow_listener import (
    JOIN_HOLD_S,
    NetFlowListener,
    async_check_port_free,
)
from giot_engine.records import FlowRecord, counts_dict
from tests.engine.netflow_packets import build_ipfix, build_v5, build_v9, reply_of

# pytest-socket (through Home Assistant's test plugin) blocks sockets unless a test asks for them.
pytestmark = pytest.mark.usefixtures("socket_enabled")

EXPORT = 1_763_900_100
LOCALHOST = "127.0.0.1"


def records(n: int, *, mac: str | None = None) -> list[FlowRecord]:
    """Flows as an exporter would report them (whole milliseconds, before the export time)."""
    return [
        FlowRecord(
            ts=EXPORT - 10 + i + 0.25,
            orig_h="192.168.1.20",
            orig_p=50000 + i,
            resp_h="93.184.216.34",
            resp_p=443,
            proto="tcp",
            orig_bytes=1000 + i,
            orig_pkts=5 + i,
            duration=1.5,
            tcp_flags=0x1B,
            orig_mac=mac,
        )
        for i in range(n)
    ]


@pytest.fixture
def sender() -> Generator[Callable[[bytes, int], None]]:
    """A plain UDP socket, the way a router sends its export datagrams."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def send(data: bytes, port: int) -> None:
        sock.sendto(data, (LOCALHOST, port))

    yield send
    sock.close()


class Sink:
    """What the coordinator's callback would get."""

    def __init__(self) -> None:
        self.flows: list[FlowRecord] = []

    def __call__(self, flows: list[FlowRecord]) -> None:
        self.flows.extend(flows)


async def wait_until(hass: HomeAssistant, condition: Callable[[], bool]) -> None:
    """Let the loop receive and the executor decode until ``condition`` holds (~2 s at most)."""
    for _ in range(400):
        await hass.async_block_till_done(wait_background_tasks=True)
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


@pytest.fixture
async def listener(hass: HomeAssistant) -> AsyncGenerator[tuple[NetFlowListener, Sink]]:
    """A running listener on a port the system picked, delivering each datagram's flows at once.

    ``join_hold_s=0``: these tests are about decoding; joining across datagrams has its own.
    """
    sink = Sink()
    collector = NetFlowListener(hass, sink, host=LOCALHOST, port=0, join_hold_s=0)
    await collector.async_start()
    assert collector.bound_port
    yield collector, sink
    await collector.async_stop()


async def test_v5(
    hass: HomeAssistant,
    listener: tuple[NetFlowListener, Sink],
    sender: Callable[[bytes, int], None],
) -> None:
    """v5 records become flows with addresses, ports, counters and times."""
    collector, sink = listener
    port = collector.bound_port
    assert port is not None
    sender(build_v5(records(3), unix_secs=EXPORT, sequence=0), port)
    await wait_until(hass, lambda: len(sink.flows) == 3)
    first = sink.flows[0]
    assert (first.orig_h, first.orig_p, first.resp_h, first.resp_p) == (
        "192.168.1.20",
        50000,
        "93.184.216.34",
        443,
    )
    assert first.proto == "tcp"
    assert first.orig_bytes == 1000
    assert first.orig_pkts == 5
    assert first.ts == pytest.approx(EXPORT - 10 + 0.25)
    assert first.duration == pytest.approx(1.5)
    assert first.tcp_flags == 0x1B

    sender(build_v5(records(2), unix_secs=EXPORT, sequence=7), port)  # flows 3..6 were lost
    await wait_until(hass, lambda: len(sink.flows) == 5)
    stats = collector.stats
    assert stats.datagrams == 2
    assert stats.accepted == 2
    assert stats.lost_flows == 4
    assert stats.flows == 5
    assert stats.exporters == 1


async def test_v9_template_then_data(
    hass: HomeAssistant,
    listener: tuple[NetFlowListener, Sink],
    sender: Callable[[bytes, int], None],
) -> None:
    """A v9 template learnt from one datagram decodes the data of the next ones."""
    collector, sink = listener
    port = collector.bound_port
    assert port is not None
    # data before any template is dropped and counted
    sender(build_v9(records(1), unix_secs=EXPORT, sequence=0, include_template=False), port)
    await wait_until(hass, lambda: collector.stats.rejected["no_template"] == 1)
    assert sink.flows == []

    mac = "aa:bb:cc:00:11:22"
    sender(build_v9(records(2, mac=mac), unix_secs=EXPORT, sequence=1), port)
    sender(build_v9(records(4), unix_secs=EXPORT, sequence=2, include_template=False), port)
    await wait_until(hass, lambda: len(sink.flows) == 6)
    assert sink.flows[0].orig_mac == mac
    assert [f.orig_p for f in sink.flows] == [50000, 50001, 50000, 50001, 50002, 50003]
    assert collector.stats.templates == 1
    assert collector.stats.accepted == 2


async def test_ipfix(
    hass: HomeAssistant,
    listener: tuple[NetFlowListener, Sink],
    sender: Callable[[bytes, int], None],
) -> None:
    """IPFIX with variable-length and enterprise fields decodes; sequence gaps are counted."""
    collector, sink = listener
    port = collector.bound_port
    assert port is not None
    sender(build_ipfix(records(2), export_time=EXPORT, sequence=0, domain_id=7), port)
    sender(
        build_ipfix(
            records(1), export_time=EXPORT, sequence=10, domain_id=7, include_template=False
        ),
        port,
    )
    await wait_until(hass, lambda: len(sink.flows) == 3)
    assert sink.flows[0].orig_bytes == 1000
    assert sink.flows[0].ts == pytest.approx(EXPORT - 10 + 0.25)
    assert collector.stats.lost_flows == 8


async def test_malformed_and_oversize_are_counted(
    hass: HomeAssistant,
    listener: tuple[NetFlowListener, Sink],
    sender: Callable[[bytes, int], None],
) -> None:
    """Junk never stops the collector: it is counted under a reason and the next datagram works."""
    collector, sink = listener
    port = collector.bound_port
    assert port is not None
    good = build_v5(records(1), unix_secs=EXPORT)
    sender(b"\x00", port)  # too short for any header
    sender(b"\x00\x07" + bytes(30), port)  # no such version
    sender(good[:30], port)  # v5 header announcing a record that is not there
    sender(b"\x00\x05" + bytes(collector.max_datagram + 10), port)  # oversize: dropped unread
    sender(good, port)
    await wait_until(hass, lambda: len(sink.flows) == 1)
    await wait_until(hass, lambda: collector.stats.datagrams == 5)
    stats = collector.stats
    assert stats.rejected["truncated_header"] == 1
    assert stats.rejected["unknown_version"] == 1
    assert stats.rejected["truncated"] == 1
    assert stats.rejected["oversize"] == 1
    assert stats.total_rejected == 4
    assert stats.accepted == 1
    assert counts_dict(stats)["rejected"]["oversize"] == 1


async def test_the_two_directions_join_across_datagrams(
    hass: HomeAssistant, sender: Callable[[bytes, int], None]
) -> None:
    """A router's forward and reverse records, in two datagrams, become one flow; a reply whose
    forward record was lost is delivered by the timer, turned round onto its initiator."""
    sink = Sink()
    collector = NetFlowListener(hass, sink, host=LOCALHOST, port=0)
    await collector.async_start()
    port = collector.bound_port
    assert port is not None
    forward, lost = (dataclasses.replace(r, resp_bytes=9000, resp_pkts=9) for r in records(2))
    sender(build_v9([forward], unix_secs=EXPORT, sequence=0), port)
    await wait_until(hass, lambda: collector.stats.accepted == 1)
    assert sink.flows == []  # waiting for its answer
    assert collector.stats.join_pending == 1
    sender(build_v9([reply_of(forward), reply_of(lost)], unix_secs=EXPORT, sequence=1), port)
    await wait_until(hass, lambda: len(sink.flows) == 1)
    joined = sink.flows[0]
    assert (joined.orig_h, joined.orig_p, joined.resp_p) == ("192.168.1.20", 50000, 443)
    assert (joined.orig_bytes, joined.resp_bytes, joined.resp_pkts) == (1000, 9000, 9)

    async_fire_time_changed(hass, dt_util.utcnow() + timedelta(seconds=JOIN_HOLD_S + 1))
    await wait_until(hass, lambda: len(sink.flows) == 2)
    alone = sink.flows[1]
    assert (alone.orig_h, alone.orig_p, alone.resp_h, alone.resp_p) == (
        "192.168.1.20",
        50001,
        "93.184.216.34",
        443,
    )
    assert (alone.orig_bytes, alone.resp_bytes) == (None, 9000)
    stats = collector.stats
    assert (stats.joined, stats.answers, stats.lone_answers, stats.join_pending) == (1, 2, 1, 0)
    assert stats.flows == 2
    await collector.async_stop()


async def test_backlog_bound(hass: HomeAssistant) -> None:
    """A flood beyond the queue bound is dropped and counted, not buffered without limit."""
    sink = Sink()
    collector = NetFlowListener(hass, sink, host=LOCALHOST, port=0, max_backlog=2, join_hold_s=0)
    good = build_v5(records(1), unix_secs=EXPORT)
    for _ in range(5):  # as the protocol would call it, within one loop iteration
        collector.datagram_received(good, "192.168.1.1")
    await hass.async_block_till_done(wait_background_tasks=True)
    assert collector.stats.rejected["backlog_full"] == 3
    assert collector.stats.accepted == 2


async def test_consumer_error_does_not_stop_collection(
    hass: HomeAssistant, sender: Callable[[bytes, int], None]
) -> None:
    """A failing callback is counted; later datagrams are still delivered."""
    calls: list[int] = []

    def consumer(flows: list[FlowRecord]) -> None:
        calls.append(len(flows))
        if len(calls) == 1:
            raise RuntimeError("consumer bug")

    collector = NetFlowListener(hass, consumer, host=LOCALHOST, port=0, join_hold_s=0)
    await collector.async_start()
    port = collector.bound_port
    assert port is not None
    sender(build_v5(records(1), unix_secs=EXPORT, sequence=0), port)
    await wait_until(hass, lambda: len(calls) == 1)
    sender(build_v5(records(2), unix_secs=EXPORT, sequence=1), port)
    await wait_until(hass, lambda: len(calls) == 2)
    assert collector.stats.callback_errors == 1
    await collector.async_stop()


async def test_stop_releases_the_port(hass: HomeAssistant) -> None:
    """The port is taken while running, free right after stop, and can be bound again."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind((LOCALHOST, 0))
    port = probe.getsockname()[1]
    assert not await async_check_port_free(LOCALHOST, port)
    probe.close()
    assert await async_check_port_free(LOCALHOST, port)
    assert await async_check_port_free(LOCALHOST, port)  # the check released its own probe

    collector = NetFlowListener(hass, Sink(), host=LOCALHOST, port=port)
    await collector.async_start()
    assert collector.running
    assert not await async_check_port_free(LOCALHOST, port)
    second = NetFlowListener(hass, Sink(), host=LOCALHOST, port=port)
    with pytest.raises(OSError, match="in use"):
        await second.async_start()
    await collector.async_stop()
    assert not collector.running
    assert await async_check_port_free(LOCALHOST, port)
    await second.async_start()
    await second.async_stop()
