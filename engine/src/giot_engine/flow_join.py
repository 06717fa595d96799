"""Which side of a exported flow started the connection, and joining the two halves of one.

Routers export both directions of a connection. A uniflow exporter (NetFlow v5, v9, IPFIX without
RFC 5103 reverse elements) sends the answer as a record of its own, whose *source* is the server:
read naively, a DNS reply is the resolver "initiating" a flow to the client's ephemeral port, and a
DHCP offer is the router "initiating" a flow to port 68. Zeek's conn.log, the model of truth the
detector learnt from, has one record per connection with the originator on the ``orig_*`` side and
the answer in ``resp_bytes``/``resp_pkts``. This module brings exports to that shape:

- :func:`initiator` is the one rule deciding which end of a record initiated (see its docstring).
- :func:`as_answer` turns an answer record round: the initiator (its destination) becomes
  ``orig_h``, the answer's counters become ``resp_bytes``/``resp_pkts``, and nothing is left on
  the originator's side that the initiator did not send (no MAC: the source MAC of an answer is
  the server's or the router's).
- :class:`FlowJoiner` holds the halves of a connection for a short time and joins a forward record
  with its answer (same endpoints, overlapping times) into one record. Halves whose partner never
  comes are released alone: a lone answer keeps its turned-round shape, so it is still the
  initiator's (answered) traffic and never the responder's initiation. The table is bounded by
  count (oldest released first) and by time (``hold_s`` of arrival time), and both are counted.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

from .records import FlowRecord

__all__ = [
    "CLIENT_PORTS",
    "SERVICE_PORTS",
    "FlowJoiner",
    "Half",
    "Initiator",
    "JoinStats",
    "as_answer",
    "initiator",
    "is_service_port",
]

Initiator = Literal["source", "destination"] | None
# Which half of a connection a record is: "f" forward (the source initiated), "a" an answer turned
# round by as_answer, "u" direction unknown (as exported), None a whole connection (a biflow).
Half = Literal["f", "a", "u"] | None

# Registered (>= 1024) ports that home devices and their clouds serve on. Below 1024 every port is
# a service port except the DHCP client ports, which only ever receive answers.
SERVICE_PORTS = frozenset(
    {
        1194, 1400, 1883, 1900, 1935, 2049, 2323, 3306, 3389, 3478, 4500, 5000, 5060, 5061,
        5353, 5355, 5432, 5555, 5683, 6053, 6379, 6667, 6668, 7547, 8000, 8008, 8009, 8080,
        8081, 8123, 8443, 8554, 8883, 9100, 27017, 32400,
    }
)  # fmt: skip
CLIENT_PORTS = frozenset({68, 546})  # bootpc, dhcpv6-client
# ICMP: reply type -> request type (echo, timestamp, information, address mask; ICMPv6 echo).
ICMP_ANSWERS = {1: {0: 8, 14: 13, 16: 15, 18: 17}, 58: {129: 128}}
ICMP_REQUESTS = {1: frozenset({8, 13, 15, 17}), 58: frozenset({128})}
ICMP_PROTOS = (1, 58)

BIFLOW_INITIATOR = 1  # biflowDirection (IE 239): the source is the initiator
BIFLOW_REVERSE_INITIATOR = 2  # the destination is the initiator
_BIFLOW: dict[int, Initiator] = {
    BIFLOW_INITIATOR: "source",
    BIFLOW_REVERSE_INITIATOR: "destination",
}
_PORT_PROTOS = (6, 17, 132)  # tcp, udp, sctp: the protocols with ports


def is_service_port(port: int) -> bool:
    """Say whether servers listen on a port: below 1024 (DHCP client ports aside), or listed."""
    if port < 1024:
        return port != 0 and port not in CLIENT_PORTS
    return port in SERVICE_PORTS


def initiator(proto: int, sport: int, dport: int, biflow_direction: int | None = None) -> Initiator:
    """Which end of a record started the connection: "source", "destination", or None (unknown).

    The one rule, in order:

    1. ``biflowDirection`` (IPFIX IE 239) where the exporter says it: 1 initiator (the source),
       2 reverseInitiator (the destination). 0 (arbitrary) and 3 (perimeter) say nothing.
    2. ICMP: an echo/timestamp/information/mask reply is an answer (its destination asked), the
       matching request is an initiation; errors (unreachable, time exceeded) are unknown.
    3. Ports: a server answers from its service port to the client's port, so a record from a
       service port to a non-service port is an answer, and the other way round an initiation.
       DHCP client ports (68, 546) are not service ports, so 67 -> 68 is the server's answer.
    4. Anything else (both ends service ports as NTP 123 -> 123 or mDNS, both ephemeral as P2P
       and RTP, port 0, no ports as GRE) is unknown: the record stays as exported.

    Why ports and not addresses: the rule must hold for every home whatever its addressing, for
    the inside and the outside of a NAT alike, and a LAN host may be a server (a camera's RTSP, a
    NAS) as well as a client. ``flowDirection`` (IE 61) is not used: it says whether the packets
    entered or left the observing interface, which is not who started the connection.
    """
    if biflow_direction in _BIFLOW:
        return _BIFLOW[biflow_direction]
    if proto in ICMP_PROTOS:
        source = sport in ICMP_REQUESTS[proto]
        destination = sport in ICMP_ANSWERS[proto]
    elif proto in _PORT_PROTOS and sport and dport:  # port 0 is nobody's client port
        source, destination = is_service_port(dport), is_service_port(sport)
    else:
        return None
    if source == destination:  # both ends servers, or neither: no telling
        return None
    return "source" if source else "destination"


def as_answer(record: FlowRecord, proto: int) -> FlowRecord:
    """Turn a record round: its destination (the initiator) becomes the originator.

    The two sides' counters swap: for a uniflow answer what it carried becomes the responder's
    counters and the originator's are unknown (None) until the forward record is joined; a biflow
    keeps both. The MAC goes (it is the source's, the server's or the router's). An ICMP reply
    takes its request's type, so that it meets the request's record.
    """
    orig_p, resp_p = record.resp_p, record.orig_p
    if proto in ICMP_PROTOS:
        orig_p = ICMP_ANSWERS[proto].get(record.orig_p, record.orig_p)
        resp_p = record.resp_p  # the code
    return dataclasses.replace(
        record,
        orig_h=record.resp_h,
        orig_p=orig_p,
        resp_h=record.orig_h,
        resp_p=resp_p,
        orig_bytes=record.resp_bytes,
        orig_pkts=record.resp_pkts,
        orig_ip_bytes=record.resp_ip_bytes,
        resp_bytes=record.orig_bytes,
        resp_pkts=record.orig_pkts,
        resp_ip_bytes=record.orig_ip_bytes,
        orig_mac=None,
    )


def _end(record: FlowRecord) -> float:
    return record.ts + (record.duration or 0.0)


def join(forward: FlowRecord, answer: FlowRecord) -> FlowRecord:
    """One record of a connection from its forward record and its (turned round) answer."""
    start = min(forward.ts, answer.ts)
    end = max(_end(forward), _end(answer))
    flags = None
    if forward.tcp_flags is not None or answer.tcp_flags is not None:
        flags = (forward.tcp_flags or 0) | (answer.tcp_flags or 0)
    timed = forward.duration is not None or answer.duration is not None
    duration = round(end - start, 6) if timed else None  # no float noise below a microsecond
    return dataclasses.replace(
        forward,
        ts=start,
        duration=duration,
        resp_bytes=answer.resp_bytes,
        resp_pkts=answer.resp_pkts,
        resp_ip_bytes=answer.resp_ip_bytes,
        tcp_flags=flags,
    )


@dataclass(slots=True)
class JoinStats:
    """What the joiner did (counts since start; ``pending`` is the table's size now)."""

    joined: int = 0  # forward record and answer made one record
    lone_answers: int = 0  # answers released without their forward record (initiator's traffic)
    lone_forward: int = 0  # forward or unknown-direction records released without an answer
    expired: int = 0  # released because they waited ``hold_s``
    evicted: int = 0  # released early because the table was full
    superseded: int = 0  # released because a newer record of the same half and endpoints came
    pending: int = 0


# Key of a half: (half, proto, orig_h, orig_p, resp_h, resp_p) with half "f" (forward, source
# initiated), "a" (answer, turned round) or "u" (unknown direction, as exported).
_Key = tuple[str, str, str, int, str, int]


@dataclass(slots=True)
class _Half:
    record: FlowRecord
    arrived: float


class FlowJoiner:
    """A small table of connection halves waiting for their other half.

    ``push`` takes a record with its half ("f" forward, "a" answer already turned round by
    :func:`as_answer`, "u" direction unknown, None a whole connection) and returns what is ready:
    a joined record as soon as the second half arrives, a whole record at once, and every half
    that waited ``hold_s`` (arrival seconds) or was pushed out by ``max_pending``. Two halves of
    unknown direction join too, when they are each other's mirror: the earlier is the initiator.
    Halves join only when their times overlap (``slack_s`` of tolerance), so a new connection
    reusing the same ports is not taken for the old one's answer.
    """

    def __init__(self, *, hold_s: float = 0.0, max_pending: int = 4096, slack_s: float = 2.0):
        self.hold_s = max(0.0, hold_s)
        self.max_pending = max(1, max_pending)
        self.slack_s = slack_s
        self._stats = JoinStats()
        self._pending: OrderedDict[_Key, _Half] = OrderedDict()  # arrival order

    @property
    def stats(self) -> JoinStats:
        """Counters, ``pending`` up to date."""
        self._stats.pending = len(self._pending)
        return self._stats

    def __len__(self) -> int:
        return len(self._pending)

    def push(self, record: FlowRecord, half: Half, now: float) -> list[FlowRecord]:
        """Offer one record; return the records ready now (``expire`` is not called here)."""
        if half is None:
            return [record]
        out: list[FlowRecord] = []
        r = record
        key: _Key = (half, r.proto, r.orig_h, r.orig_p, r.resp_h, r.resp_p)
        if half == "u":
            partner_key: _Key = ("u", r.proto, r.resp_h, r.resp_p, r.orig_h, r.orig_p)
        else:
            partner_key = ("a" if half == "f" else "f", *key[1:])
        partner = self._pending.get(partner_key)
        if partner is not None and self._overlap(partner.record, record):
            del self._pending[partner_key]
            self._stats.joined += 1
            out.append(self._join(half, partner.record, record))
            return out
        if (stale := self._pending.pop(key, None)) is not None:  # e.g. an active-timeout export
            self._stats.superseded += 1
            out.append(self._release(key, stale.record))
        if len(self._pending) >= self.max_pending:
            old_key, old = self._pending.popitem(last=False)
            self._stats.evicted += 1
            out.append(self._release(old_key, old.record))
        self._pending[key] = _Half(record, now)
        return out

    def expire(self, now: float) -> list[FlowRecord]:
        """Release the halves that have waited ``hold_s`` by ``now`` (oldest first)."""
        out: list[FlowRecord] = []
        while self._pending:
            key, first = next(iter(self._pending.items()))
            if first.arrived + self.hold_s > now:
                break
            del self._pending[key]
            self._stats.expired += 1
            out.append(self._release(key, first.record))
        return out

    def flush(self) -> list[FlowRecord]:
        """Release every waiting half (the collector stops)."""
        out = [self._release(key, half.record) for key, half in self._pending.items()]
        self._pending.clear()
        return out

    def _overlap(self, a: FlowRecord, b: FlowRecord) -> bool:
        return a.ts <= _end(b) + self.slack_s and b.ts <= _end(a) + self.slack_s

    @staticmethod
    def _join(half: str, pending: FlowRecord, new: FlowRecord) -> FlowRecord:
        if half == "a":
            return join(pending, new)
        if half == "f":
            return join(new, pending)
        first, second = (pending, new) if pending.ts <= new.ts else (new, pending)
        return join(first, as_answer(second, 0))

    def _release(self, key: _Key, record: FlowRecord) -> FlowRecord:
        if key[0] == "a":
            self._stats.lone_answers += 1
        else:
            self._stats.lone_forward += 1
        return record
