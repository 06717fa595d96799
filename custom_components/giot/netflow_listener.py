"""NetFlow v5/v9 and IPFIX collector: a UDP endpoint in Home Assistant's event loop.

The socket is read by asyncio (no thread of our own); datagrams are queued and decoded in the
executor in batches by one long-lived engine ``NetFlowDecoder``, because v9/IPFIX templates and
sequence numbers (per exporter and observation domain) are learnt from earlier datagrams. Only one
batch is decoded at a time, so the decoder is never used from two threads. A LAN can be hostile:
oversize datagrams and a flooded queue are dropped and counted before any decoding, malformed ones
are counted by the decoder under a reason; nothing a sender does can raise out of the collector.
"""

import asyncio
import socket
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, override

from homeassistant.core import HomeAssistant, callback

from giot_engine.gil import GilYielder
from giot_engine.netflow import NetFlowDecoder
from giot_engine.records import FlowRecord

from .const import LOGGER

DEFAULT_PORT = 2055
MAX_DATAGRAM = 16384  # v5 is at most 1464 bytes; v9/IPFIX exporters stay within a (jumbo) MTU
MAX_BACKLOG = 4096  # datagrams waiting for the decoder; beyond this a flood is dropped
MAX_BATCH = 512  # datagrams per executor job
MAX_EXPORTERS = 1024  # distinct senders counted for diagnostics
YIELD_EVERY_S = 0.002  # decoding lets the event loop have the GIL this often
RECEIVE_BUFFER = 1 << 20  # ask the kernel to absorb bursts while the loop is busy


@dataclass(slots=True)
class ListenerStats:
    """A snapshot of what the collector received, decoded and dropped."""

    datagrams: int = 0  # received on the socket
    bytes: int = 0
    accepted: int = 0  # datagrams decoded without a problem
    rejected: Counter[str] = field(default_factory=Counter)  # datagrams, by first reason
    flows: int = 0  # FlowRecords delivered
    lost_flows: int = 0  # sequence gaps, v5 and IPFIX
    lost_packets: int = 0  # sequence gaps, v9
    sequence_resets: int = 0
    templates: int = 0  # in the decoder's cache now
    exporters: int = 0
    socket_errors: int = 0
    callback_errors: int = 0

    @property
    def total_rejected(self) -> int:
        """All rejected or dropped datagrams."""
        return sum(self.rejected.values())


class _Protocol(asyncio.DatagramProtocol):
    """Hands datagrams to the listener; tells it when the socket is really closed."""

    def __init__(self, listener: NetFlowListener) -> None:
        self._listener = listener
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @override
    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self._listener.datagram_received(data, str(addr[0]))

    @override
    def error_received(self, exc: Exception) -> None:
        self._listener.error_received(exc)

    @override
    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class NetFlowListener:
    """Receive NetFlow/IPFIX on ``host:port``; decoded flows go to ``on_flows`` in the loop."""

    def __init__(
        self,
        hass: HomeAssistant,
        on_flows: Callable[[list[FlowRecord]], None],
        *,
        host: str = "0.0.0.0",
        port: int = DEFAULT_PORT,
        max_datagram: int = MAX_DATAGRAM,
        max_backlog: int = MAX_BACKLOG,
        trust_exporter_clock: bool = True,
    ) -> None:
        """Prepare the collector; the port is bound by ``async_start``."""
        self.hass = hass
        self.host = host
        self.port = port
        self.max_datagram = max_datagram
        self.max_backlog = max_backlog
        self._on_flows = on_flows
        self.decoder = NetFlowDecoder(
            max_datagram=max_datagram, trust_exporter_clock=trust_exporter_clock
        )
        self._queue: deque[tuple[bytes, str, float]] = deque()
        self._dropped: Counter[str] = Counter()
        self._exporters: set[str] = set()
        self._datagrams = 0
        self._bytes = 0
        self._flows = 0
        self._socket_errors = 0
        self._callback_errors = 0
        self._transport: asyncio.DatagramTransport | None = None
        self._protocol: _Protocol | None = None
        self._drain: asyncio.Task[None] | None = None

    @property
    def stats(self) -> ListenerStats:
        """Counters for diagnostics (decoder counters included)."""
        counters = self.decoder.counters
        return ListenerStats(
            datagrams=self._datagrams,
            bytes=self._bytes,
            accepted=self.decoder.stats.accepted,
            rejected=self.decoder.stats.rejected + self._dropped,
            flows=self._flows,
            lost_flows=counters.lost_flows,
            lost_packets=counters.lost_packets,
            sequence_resets=counters.sequence_resets,
            templates=self.decoder.template_count,
            exporters=len(self._exporters),
            socket_errors=self._socket_errors,
            callback_errors=self._callback_errors,
        )

    @property
    def running(self) -> bool:
        """Whether the port is bound."""
        return self._transport is not None

    @property
    def bound_port(self) -> int | None:
        """The port actually bound (useful when 0 asked the system for a free one)."""
        if self._transport is None:
            return None
        sockname = self._transport.get_extra_info("sockname")
        return int(sockname[1]) if sockname else None

    async def async_start(self) -> None:
        """Bind the UDP port; raises ``OSError`` if it cannot be bound (e.g. in use)."""
        if self._transport is not None:
            return
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(self.host, self.port)
        )
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            except OSError as err:  # a smaller kernel limit is fine, only bursts suffer
                LOGGER.debug("Could not enlarge the NetFlow receive buffer: %s", err)
        self._transport, self._protocol = transport, protocol
        LOGGER.info("Listening for NetFlow/IPFIX on %s:%s", self.host, self.bound_port)

    async def async_stop(self) -> None:
        """Close the socket (the port is free when this returns) and finish the current batch."""
        transport, protocol = self._transport, self._protocol
        self._transport = self._protocol = None
        self._queue.clear()
        if transport is not None and protocol is not None:
            transport.close()
            await protocol.closed
        if self._drain is not None:
            await self._drain
            self._drain = None

    @callback
    def datagram_received(self, data: bytes, exporter: str) -> None:
        """Queue one datagram for decoding; drop (counted) what is too big or too much."""
        self._datagrams += 1
        self._bytes += len(data)
        if len(data) > self.max_datagram:
            self._dropped["oversize"] += 1
            return
        if len(self._queue) >= self.max_backlog:
            self._dropped["backlog_full"] += 1
            return
        self._queue.append((data, exporter, time.time()))
        if self._drain is None or self._drain.done():
            self._drain = self.hass.async_create_background_task(
                self._async_drain(), "giot netflow decode", eager_start=False
            )

    @callback
    def error_received(self, exc: Exception) -> None:
        """Count socket errors (e.g. ICMP port unreachable reflected back); never stop."""
        self._socket_errors += 1
        LOGGER.debug("NetFlow socket error: %s", exc)

    async def _async_drain(self) -> None:
        while self._queue:
            batch = [self._queue.popleft() for _ in range(min(MAX_BATCH, len(self._queue)))]
            flows = await self.hass.async_add_executor_job(self._decode, batch)
            if len(self._exporters) < MAX_EXPORTERS:  # spoofed sources must not grow it forever
                self._exporters.update(exporter for _, exporter, _ in batch)
            if flows and self._transport is not None:
                self._flows += len(flows)
                try:
                    self._on_flows(flows)
                except Exception:
                    self._callback_errors += 1
                    LOGGER.exception("GIoT flow consumer failed on NetFlow flows")

    def _decode(self, batch: list[tuple[bytes, str, float]]) -> list[FlowRecord]:
        """Executor side: decode a batch in arrival order (the decoder never raises)."""
        flows: list[FlowRecord] = []
        gil = GilYielder(YIELD_EVERY_S)
        for data, exporter, received_at in batch:
            flows.extend(self.decoder.decode(data, exporter, received_at))
            gil.maybe_yield()
        return flows


class _Probe(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @override
    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def async_check_port_free(host: str, port: int) -> bool:
    """Whether a UDP port can be bound now (options flow validation); the probe is released."""
    loop = asyncio.get_running_loop()
    try:
        transport, probe = await loop.create_datagram_endpoint(_Probe, local_addr=(host, port))
    except OSError:
        return False
    transport.close()
    await probe.closed
    return True
