"""NetFlow v5/v9 and IPFIX collector: a UDP endpoint in Home Assistant's event loop.

The socket is read by asyncio (no thread of our own); datagrams are queued and decoded in the
executor in batches by one long-lived engine ``NetFlowDecoder``, because v9/IPFIX templates and
sequence numbers (per exporter and observation domain) are learnt from earlier datagrams. Only one
batch is decoded at a time, so the decoder is never used from two threads. A LAN can be hostile:
oversize datagrams and a flooded queue are dropped and counted before any decoding, malformed ones
are counted by the decoder under a reason; nothing a sender does can raise out of the collector.

Routers export both directions of a connection, often in separate datagrams: the decoder holds a
connection half for ``JOIN_HOLD_S`` seconds waiting for the other half (``giot_engine.flow_join``),
so that a connection is scored once, for its initiator. A timer releases the halves whose partner
did not come (a lone answer still belongs to its initiator) when no datagram does it first.
"""

import asyncio
import socket
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, override

from homeassistant.core import CALLBACK_TYPE, HassJob, HomeAssistant, callback
from homeassistant.helpers.event import async_call_later

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
JOIN_HOLD_S = 5.0  # how long a connection half waits for the other direction's record
MAX_JOIN_PENDING = 4096  # connection halves waiting at most (the oldest is released first)


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
    answers: int = 0  # records whose destination initiated: scored for the initiator
    biflows: int = 0  # records carrying both directions
    joined: int = 0  # forward record and its answer made one flow
    lone_answers: int = 0  # answers delivered without their forward record
    join_evicted: int = 0  # halves released early: the join table was full
    join_pending: int = 0  # halves waiting now
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
        join_hold_s: float = JOIN_HOLD_S,
    ) -> None:
        """Prepare the collector; the port is bound by ``async_start``.

        ``join_hold_s`` 0 joins the two directions of a connection only within one datagram and
        delivers every flow of a datagram at once.
        """
        self.hass = hass
        self.host = host
        self.port = port
        self.max_datagram = max_datagram
        self.max_backlog = max_backlog
        self._on_flows = on_flows
        self.join_hold_s = join_hold_s
        self.decoder = NetFlowDecoder(
            max_datagram=max_datagram,
            trust_exporter_clock=trust_exporter_clock,
            join_hold_s=join_hold_s,
            max_join_pending=MAX_JOIN_PENDING,
        )
        self._expiry: CALLBACK_TYPE | None = None
        self._expiry_job = HassJob(
            self._expire, "giot netflow join expiry", cancel_on_shutdown=True
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
        counters, joins = self.decoder.counters, self.decoder.joins
        return ListenerStats(
            datagrams=self._datagrams,
            bytes=self._bytes,
            accepted=self.decoder.stats.accepted,
            rejected=self.decoder.stats.rejected + self._dropped,
            flows=self._flows,
            lost_flows=counters.lost_flows,
            lost_packets=counters.lost_packets,
            sequence_resets=counters.sequence_resets,
            answers=counters.answers,
            biflows=counters.biflows,
            joined=joins.joined,
            lone_answers=joins.lone_answers,
            join_evicted=joins.evicted,
            join_pending=joins.pending,
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
        if self._expiry is not None:
            self._expiry()
            self._expiry = None
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
            self._deliver(flows)
        self._schedule_expiry()

    def _deliver(self, flows: list[FlowRecord]) -> None:
        if flows and self._transport is not None:
            self._flows += len(flows)
            try:
                self._on_flows(flows)
            except Exception:
                self._callback_errors += 1
                LOGGER.exception("GIoT flow consumer failed on NetFlow flows")

    @callback
    def _schedule_expiry(self) -> None:
        """Release waiting halves ``join_hold_s`` from now, unless datagrams do it first."""
        if self._expiry is None and self._transport is not None and self.decoder.pending_joins:
            self._expiry = async_call_later(self.hass, self.join_hold_s, self._expiry_job)

    @callback
    def _expire(self, now: datetime) -> None:
        """Timer: deliver the halves that waited ``join_hold_s`` by ``now`` (the timer's time).

        The decoder is only used by one batch at a time: while one runs, it releases the halves
        itself (each datagram expires what waited long enough) and sets the timer again.
        """
        self._expiry = None
        if self._drain is not None and not self._drain.done():
            return
        self._deliver(self.decoder.expire(now.timestamp()))
        self._schedule_expiry()

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
