"""NetFlow v5, NetFlow v9 (RFC 3954) and IPFIX (RFC 7011) datagrams to FlowRecords.

The Home Assistant collector owns the UDP socket and hands every datagram to one long-lived
:class:`NetFlowDecoder`, because v9 and IPFIX data only make sense with templates and sequence
numbers learnt from earlier datagrams. A home router is cheap and a LAN may be hostile, so decoding
never raises: each datagram ends either accepted or rejected under one reason in ``stats`` (the
first problem met; records decoded before it are kept), and every problem, sequence gap and
template change is counted in ``counters``.

Choices worth knowing:

- Templates are keyed by (exporter, version, source id / observation domain, template id): a v9
  and an IPFIX exporter on one address never share templates. The cache is bounded (oldest
  evicted first); templates never time out, a refresh or redefinition replaces them.
- Data sets that arrive before their template are dropped and counted as ``no_template``
  (no buffering: exporters resend templates often, and a buffer is memory an attacker can fill).
- Sequence gaps are counted per (exporter, version, domain): lost flows for v5 and IPFIX, lost
  packets for v9. A small step backwards is a late datagram (given back from the loss count), a
  large one an exporter restart.
- Only the information elements a FlowRecord needs are read; everything else, enterprise-specific
  fields included, is skipped by length. ICMP type and code go to ``orig_p``/``resp_p`` as Zeek
  has them (from icmpTypeCode 32/139, else from the Cisco ``type << 8 | code`` destination port).
  An all-zero MAC is "unknown". Counters are as exported: sampling rates are not applied.
- Direction (``flow_join``): routers export both directions of a connection, and a record is
  turned round to Zeek's shape where its *destination* initiated (:func:`flow_join.initiator`:
  biflowDirection 239, ICMP replies, service port to non-service port). RFC 5103 biflows (reverse
  elements, enterprise 29305: reverseOctetDeltaCount, reversePacketDeltaCount, their total-count
  forms and reverseTcpControlBits) and Cisco NSEL-style initiator/responder counters (231/232,
  298/299, the source being the initiator) decode into one record with both sides' counters.
  Uniflow halves go through a :class:`flow_join.FlowJoiner`: a forward record and its answer
  that meet within ``join_hold_s`` seconds of arrival (within one datagram by default) become one
  record; an answer left alone stays turned round, the initiator's answered traffic. flowDirection
  (61) is not read: ingress/egress of an interface says nothing about who initiated.
  NetFlow v9 OUT_BYTES/OUT_PKTS (23/24) are not read either: exporters disagree on their meaning.
"""

from __future__ import annotations

import socket
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .flow_join import FlowJoiner, Half, JoinStats, as_answer, initiator
from .records import FlowRecord, ParseStats

__all__ = ["REJECT_REASONS", "VARLEN", "NetFlowCounters", "NetFlowDecoder", "StreamStats"]

VARLEN = 0xFFFF  # IPFIX field length that announces a variable-length field
REJECT_REASONS = (
    "oversize",  # datagram longer than max_datagram
    "truncated_header",  # too short for its version's header
    "unknown_version",  # not 5, 9 or 10
    "bad_count",  # v5 header announces no record
    "truncated",  # v5 records or IPFIX message length past the end of the datagram
    "bad_length",  # IPFIX message length shorter than its header
    "length_mismatch",  # IPFIX message shorter than the datagram (the rest is ignored)
    "set_too_short",  # set length < 4: cannot advance, the rest of the datagram is dropped
    "set_past_end",  # set length beyond the end: the rest of the datagram is dropped
    "trailing_bytes",  # 1 to 3 non-zero bytes after the last set
    "bad_template_id",  # template id below 256 that is neither padding nor a withdrawal
    "template_too_many_fields",  # field count above max_template_fields
    "template_past_end",  # template record longer than its set
    "bad_template",  # records of length 0 (endless loop) or longer than any datagram
    "bad_options_template",  # scope count 0 or above the field count, lengths not 4 * n
    "no_template",  # data set whose template is unknown (withdrawn or not yet seen)
    "truncated_record",  # variable-length record running past the end of its set
    "internal_error",  # a decoder bug; caught so that the collector keeps running
)

_MASK32 = 0xFFFFFFFF
_HALF32 = 0x80000000
_MAX_RECORD = 65535 - 20  # a record longer than this fits in no datagram
_NTP_UNIX_OFFSET = 2208988800  # seconds from 1900 (NTP era 0) to 1970

_V5_HEADER = struct.Struct(">HHIIIIBBH")
# src, dst, (nexthop, ifindexes), pkts, octets, first, last, ports, (pad), flags, proto, (rest)
_V5_RECORD = struct.Struct(">4s4s8xIIIIHHxBB9x")
_V9_HEADER = struct.Struct(">HHIIII")
_IPFIX_HEADER = struct.Struct(">HHIII")
_H = struct.Struct(">H")
_HH = struct.Struct(">HH")
_HHH = struct.Struct(">HHH")
_HHI = struct.Struct(">HHI")

# Information elements read into a FlowRecord, by how their bytes are kept.
_ADDR4 = frozenset({8, 12})
_ADDR6 = frozenset({27, 28})
_MAC = frozenset({56, 81})
_INTS = frozenset(
    {1, 2, 4, 6, 7, 11, 21, 22, 32, 85, 86, 139, 150, 151, 152, 153, 154, 155, 156, 157}
    | {158, 159, 160, 161, 162, 231, 232, 239, 298, 299}
)
REVERSE_PEN = 29305  # RFC 5103: reverse information elements, same numbers as the forward ones
_REV = 1 << 16  # values key of a reverse element: IE | _REV
_REVERSE_INTS = frozenset({1, 2, 6, 85, 86})
_INIT_TIME = 160  # systemInitTimeMilliseconds: the only option value read (base of 21/22)
_INT_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}
_PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmp"}  # Zeek calls ICMPv6 "icmp" too

_Values = dict[int, Any]  # IE -> int, or bytes for addresses and MACs (fixed by _kind)


def _key(ie: int, enterprise: int) -> int | None:
    """Values key of a field: the IE, IE | _REV for an RFC 5103 reverse counter, None to skip."""
    if not enterprise:
        return ie
    return ie | _REV if enterprise == REVERSE_PEN and ie in _REVERSE_INTS else None


def _kind(ie: int, length: int, options: bool) -> str:
    """Say how to keep a field (by its values key): "" skip, "i" unsigned integer, "b" bytes."""
    if options and ie != _INIT_TIME:
        return ""
    if ie in _INTS or ie & _REV:
        return "i" if 1 <= length <= 8 else ""
    if ie in _ADDR4:
        return "b" if length == 4 else ""
    if ie in _ADDR6:
        return "b" if length == 16 else ""
    if ie in _MAC:
        return "b" if length == 6 else ""
    return ""


class _Template:
    """A template compiled once: a struct for fixed-length records, a field plan otherwise."""

    __slots__ = ("fields", "fixed", "int_slots", "min_length", "plan", "scope_count", "slots")

    def __init__(self, fields: tuple[tuple[int, int, int], ...], scope_count: int, ipfix: bool):
        self.fields = fields  # (ie, length, enterprise number or 0)
        self.scope_count = scope_count  # > 0: an options template
        varlen = ipfix and any(length == VARLEN for _, length, _ in fields)
        self.min_length = sum(1 if varlen and n == VARLEN else n for _, n, _ in fields)
        seen: set[int] = set()
        plan: list[tuple[int, int, str]] = []
        for ie, length, ent in fields:
            key = _key(ie, ent)
            kind = "" if key is None or key in seen else _kind(key, length, scope_count > 0)
            if kind and key is not None:
                seen.add(key)
            plan.append((key or 0, length, kind))
        self.plan = tuple(plan)
        self.slots = tuple(ie for ie, _, kind in plan if kind)
        self.fixed: struct.Struct | None = None
        self.int_slots: tuple[int, ...] = ()
        if not varlen and 0 < self.min_length <= _MAX_RECORD:
            codes: list[str] = []
            ints: list[int] = []
            for ie, length, kind in plan:
                if kind == "i" and length in _INT_CODES:
                    codes.append(_INT_CODES[length])
                elif kind:
                    codes.append(f"{length}s")
                    if kind == "i":
                        ints.append(ie)
                elif length:
                    codes.append(f"{length}x")
            self.fixed = struct.Struct(">" + "".join(codes))
            self.int_slots = tuple(ints)

    def records(self, buf: bytes, start: int, end: int) -> tuple[list[_Values], bool]:
        """Decode the records of one data set; False where one ran past the end."""
        if self.fixed is None:
            return self._variable(buf, start, end)
        size, unpack, slots = self.fixed.size, self.fixed.unpack_from, self.slots
        out = [
            dict(zip(slots, unpack(buf, p), strict=True))
            for p in range(start, end - size + 1, size)
        ]
        for values in out if self.int_slots else ():
            for ie in self.int_slots:
                values[ie] = int.from_bytes(values[ie], "big")
        return out, True

    def _variable(self, buf: bytes, start: int, end: int) -> tuple[list[_Values], bool]:
        out: list[_Values] = []
        p = start
        while end - p >= self.min_length:  # min_length >= 1, and each record eats >= min_length
            values: _Values = {}
            for ie, declared, kind in self.plan:
                length = declared
                if declared == VARLEN:  # RFC 7011 7: 1 length byte, or 255 and 2 length bytes
                    if p >= end:
                        return out, False
                    length, p = buf[p], p + 1
                    if length == 255:
                        if end - p < 2:
                            return out, False
                        length, p = _H.unpack_from(buf, p)[0], p + 2
                if end - p < length:
                    return out, False
                if kind:
                    raw = buf[p : p + length]
                    values[ie] = int.from_bytes(raw, "big") if kind == "i" else raw
                p += length
            out.append(values)
        return out, True


@dataclass(slots=True)
class StreamStats:
    """Sequence bookkeeping of one (exporter, version, source id / observation domain) stream."""

    expected: int | None = None  # next sequence number, None until known
    lost: int = 0  # flows (v5, IPFIX) or packets (v9) missing from the sequence
    reordered: int = 0  # late or duplicate datagrams
    resets: int = 0  # large steps backwards: the exporter restarted
    datagrams: int = 0
    system_init_ms: int | None = None  # IPFIX systemInitTimeMilliseconds from options data


@dataclass(slots=True)
class NetFlowCounters:
    """Everything the decoder saw besides the per-datagram verdict in ``ParseStats``."""

    records: int = 0  # FlowRecords returned
    options_records: int = 0  # options data records (parsed and ignored)
    incomplete_records: int = 0  # data records without addresses or protocol (dropped)
    templates_learned: int = 0
    templates_refreshed: int = 0  # same id, same layout
    templates_replaced: int = 0  # same id, new layout
    templates_withdrawn: int = 0
    templates_evicted: int = 0  # pushed out of the bounded cache
    skipped_sets: int = 0  # reserved set ids, skipped by length
    lost_flows: int = 0  # v5 and IPFIX sequence gaps
    lost_packets: int = 0  # v9 sequence gaps
    reordered: int = 0
    sequence_resets: int = 0
    answers: int = 0  # records turned round: their destination initiated the connection
    biflows: int = 0  # records carrying both directions (RFC 5103 reverse or 231/232 elements)
    problems: Counter[str] = field(default_factory=Counter)  # every problem, not only the first


@dataclass(slots=True)
class _Datagram:
    """What the sets and records of one datagram share while it is decoded."""

    buf: bytes
    out: list[FlowRecord]
    exporter: str
    version: int
    domain: int  # v9 source id, IPFIX observation domain, v5 engine type << 8 | engine id
    stream: StreamStats
    uid: str  # prefix: version, exporter, domain and sequence; the record index follows
    export_ms: float
    received_at: float = 0.0
    uptime_ms: int | None = None  # v5/v9 header sysUptime, base of FIRST/LAST_SWITCHED
    init_ms: int | None = None  # IPFIX systemInitTimeMilliseconds learnt from options data
    offset_s: float = 0.0


def _address(raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


def _signed32(value: int) -> int:
    value &= _MASK32
    return value - (1 << 32) if value & _HALF32 else value


def _time_ms(values: _Values, ctx: _Datagram, ies: tuple[int, ...]) -> float | None:
    """Epoch ms from the first present of the ms, ns, us, s, delta-us and sysUpTime IEs."""
    ms, ns, us, sec, delta, uptime = ies
    if (v := values.get(ms)) is not None:
        t = float(v)
    elif (v := values.get(ns, values.get(us))) is not None:  # NTP timestamps
        t = ((v >> 32) - _NTP_UNIX_OFFSET) * 1000.0 + (v & _MASK32) * 1000.0 / 2**32
    elif (v := values.get(sec)) is not None:
        t = v * 1000.0
    elif (v := values.get(delta)) is not None:
        t = ctx.export_ms - v / 1000.0
    elif (v := values.get(uptime)) is not None and ctx.uptime_ms is not None:
        t = ctx.export_ms - _signed32(ctx.uptime_ms - v)  # v5/v9: from the header's sysUptime
    elif v is not None and (boot := values.get(_INIT_TIME, ctx.init_ms)) is not None:
        t = boot + v  # IPFIX: ms since the exporter's systemInitTimeMilliseconds
    else:
        return None
    return float(t)


_HALVES: dict[str | None, Half] = {"source": "f", "destination": "a", None: "u"}
_START = (152, 156, 154, 150, 158, 22)
_END = (153, 157, 155, 151, 159, 21)


class NetFlowDecoder:
    """Stateful decoder for the datagrams of any number of exporters.

    ``trust_exporter_clock=False`` shifts every time by (received_at - export time of the header),
    for exporters whose clock is not set; relative times within a datagram are kept.
    ``join_hold_s`` is how long (seconds of arrival time) a connection half waits for its other
    half: 0 joins within one datagram only and returns every record of a datagram at once; more
    holds unmatched halves back until a later ``decode`` or ``expire`` (call it on a timer).
    """

    def __init__(
        self,
        *,
        max_datagram: int = 65535,
        max_templates: int = 4096,
        max_streams: int = 1024,
        max_template_fields: int = 512,
        reorder_window_packets: int = 64,
        reorder_window_flows: int = 4096,
        trust_exporter_clock: bool = True,
        join_hold_s: float = 0.0,
        max_join_pending: int = 4096,
    ) -> None:
        self.max_datagram = max_datagram
        self.max_templates = max(1, max_templates)
        self.max_streams = max(1, max_streams)
        self.max_template_fields = max_template_fields
        self.reorder_window_packets = reorder_window_packets
        self.reorder_window_flows = reorder_window_flows
        self.trust_exporter_clock = trust_exporter_clock
        self.stats = ParseStats()
        self.counters = NetFlowCounters()
        self._templates: dict[tuple[str, int, int, int], _Template] = {}
        self._streams: dict[tuple[str, int, int], StreamStats] = {}
        self._problems: list[str] = []  # of the datagram being decoded
        self._joiner = FlowJoiner(hold_s=join_hold_s, max_pending=max_join_pending)

    # -- public ---------------------------------------------------------------------------------

    def decode(
        self, datagram: bytes | bytearray | memoryview, exporter: str, received_at: float
    ) -> list[FlowRecord]:
        """Decode one datagram from ``exporter``; never raises.

        The datagram counts once in ``stats``: accepted, or rejected under its first problem.
        ``received_at`` (epoch seconds) is only used when the exporter's clock is not trusted.
        """
        out: list[FlowRecord] = []
        self._problems.clear()
        try:
            self._decode(bytes(datagram), exporter, received_at, out)
            out.extend(self._joiner.expire(received_at))
        except Exception:  # a bug must cost one datagram, not the collector
            self._problem("internal_error")
        if self._problems:
            self.stats.reject(self._problems[0])
        else:
            self.stats.accepted += 1
        self.counters.records += len(out)
        return out

    def expire(self, now: float) -> list[FlowRecord]:
        """Release connection halves that waited ``join_hold_s`` by ``now`` (a timer's job)."""
        out = self._joiner.expire(now)
        self.counters.records += len(out)
        return out

    def flush(self) -> list[FlowRecord]:
        """Release every waiting connection half (the collector stops)."""
        out = self._joiner.flush()
        self.counters.records += len(out)
        return out

    @property
    def joins(self) -> JoinStats:
        """What the joiner did: joined pairs, lone answers, expired and evicted halves."""
        return self._joiner.stats

    @property
    def pending_joins(self) -> int:
        """Connection halves waiting for their other half."""
        return len(self._joiner)

    def stream(self, exporter: str, version: int, domain: int) -> StreamStats | None:
        """Sequence state of one stream (v5 domain: engine type << 8 | engine id)."""
        return self._streams.get((exporter, version, domain))

    def has_template(self, exporter: str, version: int, domain: int, template_id: int) -> bool:
        """Say whether data of this template would be decoded now."""
        return (exporter, version, domain, template_id) in self._templates

    @property
    def template_count(self) -> int:
        """Templates in the cache, all exporters together."""
        return len(self._templates)

    # -- headers --------------------------------------------------------------------------------

    def _problem(self, reason: str) -> None:
        self.counters.problems[reason] += 1
        self._problems.append(reason)

    def _decode(self, buf: bytes, exporter: str, received_at: float, out: list[FlowRecord]) -> None:
        if len(buf) > self.max_datagram:
            self._problem("oversize")
        elif len(buf) < 2:
            self._problem("truncated_header")
        else:
            version = _H.unpack_from(buf)[0]
            header = {5: _V5_HEADER, 9: _V9_HEADER, 10: _IPFIX_HEADER}.get(version)
            if header is None:
                self._problem("unknown_version")
            elif len(buf) < header.size:
                self._problem("truncated_header")
            elif version == 5:
                self._v5(buf, exporter, received_at, out)
            elif version == 9:
                self._v9(buf, exporter, received_at, out)
            else:
                self._ipfix(buf, exporter, received_at, out)

    def _datagram(
        self,
        buf: bytes,
        out: list[FlowRecord],
        exporter: str,
        *,
        version: int,
        domain: int,
        sequence: int,
        export_ms: float,
        received_at: float,
    ) -> _Datagram:
        key = (exporter, version, domain)
        stream = self._streams.pop(key, None)  # re-inserted: most recently used last
        if stream is None:
            stream = StreamStats()
            if len(self._streams) >= self.max_streams:
                del self._streams[next(iter(self._streams))]
        self._streams[key] = stream
        stream.datagrams += 1
        return _Datagram(
            buf=buf,
            out=out,
            exporter=exporter,
            version=version,
            domain=domain,
            stream=stream,
            uid=f"nf{version}/{exporter}/{domain}/{sequence}/",
            export_ms=export_ms,
            received_at=received_at,
            init_ms=stream.system_init_ms,
            offset_s=0.0 if self.trust_exporter_clock else received_at - export_ms / 1000.0,
        )

    def _v5(self, buf: bytes, exporter: str, received_at: float, out: list[FlowRecord]) -> None:
        _, count, uptime, secs, nsecs, seq, engine_type, engine_id, _ = _V5_HEADER.unpack_from(buf)
        if count == 0:
            self._problem("bad_count")
            return
        if len(buf) < _V5_HEADER.size + count * _V5_RECORD.size:
            self._problem("truncated")
            return
        domain, export_ms = engine_type << 8 | engine_id, secs * 1000.0 + nsecs / 1e6
        ctx = self._datagram(
            buf,
            out,
            exporter,
            version=5,
            domain=domain,
            sequence=seq,
            export_ms=export_ms,
            received_at=received_at,
        )
        ctx.uptime_ms = uptime
        for i in range(count):
            src, dst, pkts, octets, first, last, sport, dport, flags, proto = (
                _V5_RECORD.unpack_from(buf, _V5_HEADER.size + i * _V5_RECORD.size)
            )
            values = {8: src, 12: dst, 2: pkts, 1: octets, 22: first, 21: last}
            values.update({7: sport, 11: dport, 6: flags, 4: proto})
            self._emit(values, ctx, i)
        self._sequence(ctx.stream, seq, count, flows=True)

    def _v9(self, buf: bytes, exporter: str, received_at: float, out: list[FlowRecord]) -> None:
        _, _, uptime, secs, seq, source_id = _V9_HEADER.unpack_from(buf)
        ctx = self._datagram(
            buf,
            out,
            exporter,
            version=9,
            domain=source_id,
            sequence=seq,
            export_ms=secs * 1000.0,
            received_at=received_at,
        )
        ctx.uptime_ms = uptime
        self._sets(ctx, _V9_HEADER.size, len(buf))  # the header's record count is not trusted
        self._sequence(ctx.stream, seq, 1, flows=False)

    def _ipfix(self, buf: bytes, exporter: str, received_at: float, out: list[FlowRecord]) -> None:
        _, length, export_s, seq, domain = _IPFIX_HEADER.unpack_from(buf)
        if length < _IPFIX_HEADER.size:
            self._problem("bad_length")
            return
        if length > len(buf):
            self._problem("truncated")
            return
        if length < len(buf):
            self._problem("length_mismatch")
        ctx = self._datagram(
            buf,
            out,
            exporter,
            version=10,
            domain=domain,
            sequence=seq,
            export_ms=export_s * 1000.0,
            received_at=received_at,
        )
        count = self._sets(ctx, _IPFIX_HEADER.size, length)
        self._sequence(ctx.stream, seq, count, flows=True)

    # -- sets -----------------------------------------------------------------------------------

    def _sets(self, ctx: _Datagram, off: int, end: int) -> int | None:
        """Walk the sets; return how many data records they held, None where unknown."""
        buf = ctx.buf
        template_set, options_set = (2, 3) if ctx.version == 10 else (0, 1)
        index, known = 0, True
        while off < end:
            if end - off < 4 or _H.unpack_from(buf, off + 2)[0] < 4:
                if any(buf[off:end]):  # all-zero tails are exporter padding
                    self._problem("trailing_bytes" if end - off < 4 else "set_too_short")
                    return None
                break
            set_id, length = _HH.unpack_from(buf, off)
            if length > end - off:
                self._problem("set_past_end")
                return None
            body, off = off + 4, off + length
            if set_id in (template_set, options_set):
                if ctx.version == 10:
                    self._ipfix_templates(ctx, body, off, set_id)
                else:
                    self._v9_templates(ctx, body, off, set_id == options_set)
            elif set_id >= 256:
                seen, complete = self._data(ctx, body, off, set_id, index)
                index, known = index + seen, known and complete
            else:
                self.counters.skipped_sets += 1
        return index if known else None

    def _padding_or_bad_id(self, buf: bytes, start: int, end: int) -> None:
        if any(buf[start:end]):
            self._problem("bad_template_id")

    def _fields_fit(self, count: int, available: int) -> bool:
        if count > self.max_template_fields:
            self._problem("template_too_many_fields")
            return False
        if count * 4 > available:
            self._problem("template_past_end")
            return False
        return True

    def _v9_templates(self, ctx: _Datagram, p: int, end: int, options: bool) -> None:
        buf, head = ctx.buf, 6 if options else 4
        while end - p >= head:
            if options:
                tid, scope_len, option_len = _HHH.unpack_from(buf, p)
                if tid >= 256 and (scope_len % 4 or option_len % 4 or not scope_len + option_len):
                    self._problem("bad_options_template")
                    return
                n_fields, scope = (scope_len + option_len) // 4, max(1, scope_len // 4)
            else:
                tid, n_fields = _HH.unpack_from(buf, p)
                scope = 0
            if tid < 256 or n_fields == 0:
                self._padding_or_bad_id(buf, p, end)
                return
            if not self._fields_fit(n_fields, end - p - head):
                return
            raw = struct.unpack_from(f">{2 * n_fields}H", buf, p + head)
            p += head + 4 * n_fields
            fields = tuple((raw[i], raw[i + 1], 0) for i in range(0, len(raw), 2))
            self._store((ctx.exporter, 9, ctx.domain, tid), fields, scope)

    def _ipfix_templates(self, ctx: _Datagram, p: int, end: int, set_id: int) -> None:
        buf, head = ctx.buf, 6 if set_id == 3 else 4
        while end - p >= 4:
            tid, n_fields = _HH.unpack_from(buf, p)
            if n_fields == 0 and (tid >= 256 or tid == set_id):  # RFC 7011 8.1 withdrawal
                self._withdraw(ctx, tid, options=set_id == 3)
                p += 4
                continue
            if tid < 256:
                self._padding_or_bad_id(buf, p, end)
                return
            scope = _H.unpack_from(buf, p + 4)[0] if set_id == 3 and end - p >= 6 else 0
            if set_id == 3 and not 1 <= scope <= n_fields:
                self._problem("bad_options_template")
                return
            if not self._fields_fit(n_fields, end - p - head):
                return
            parsed = self._ipfix_fields(buf, p + head, end, n_fields)
            if parsed is None:
                self._problem("template_past_end")
                return
            fields, p = parsed
            self._store((ctx.exporter, 10, ctx.domain, tid), fields, scope)

    @staticmethod
    def _ipfix_fields(
        buf: bytes, p: int, end: int, n_fields: int
    ) -> tuple[tuple[tuple[int, int, int], ...], int] | None:
        """Read field specifiers (enterprise number after the E bit); None if past the end."""
        fields: list[tuple[int, int, int]] = []
        for _ in range(n_fields):
            if end - p < 4:
                return None
            ie, length = _HH.unpack_from(buf, p)
            enterprise = 0
            if ie & 0x8000:
                if end - p < 8:
                    return None
                ie, enterprise = ie & 0x7FFF, _HHI.unpack_from(buf, p)[2]
                p += 4
            fields.append((ie, length, enterprise))
            p += 4
        return tuple(fields), p

    def _store(
        self, key: tuple[str, int, int, int], fields: tuple[tuple[int, int, int], ...], scope: int
    ) -> None:
        old = self._templates.get(key)
        if old is not None and old.fields == fields and old.scope_count == scope:
            self.counters.templates_refreshed += 1
            return
        template = _Template(fields, scope, ipfix=key[1] == 10)
        if not 0 < template.min_length <= _MAX_RECORD:
            self._problem("bad_template")
            return
        if old is not None:
            self.counters.templates_replaced += 1
        else:
            if len(self._templates) >= self.max_templates:
                del self._templates[next(iter(self._templates))]
                self.counters.templates_evicted += 1
            self.counters.templates_learned += 1
        self._templates[key] = template

    def _withdraw(self, ctx: _Datagram, tid: int, options: bool) -> None:
        if tid >= 256:
            gone = [(ctx.exporter, 10, ctx.domain, tid)]
        else:  # template id 2 (or 3): every template (or options template) of the domain
            gone = [
                key
                for key, template in self._templates.items()
                if key[:3] == (ctx.exporter, 10, ctx.domain)
                and (template.scope_count > 0) == options
            ]
        for key in gone:
            if self._templates.pop(key, None) is not None:
                self.counters.templates_withdrawn += 1

    # -- records --------------------------------------------------------------------------------

    def _data(
        self, ctx: _Datagram, start: int, end: int, template_id: int, index: int
    ) -> tuple[int, bool]:
        """Decode one data set; return its record count and whether that count is complete."""
        template = self._templates.get((ctx.exporter, ctx.version, ctx.domain, template_id))
        if template is None:
            self._problem("no_template")
            return 0, False
        records, complete = template.records(ctx.buf, start, end)
        if not complete:
            self._problem("truncated_record")
        if template.scope_count:
            self.counters.options_records += len(records)
            for values in records:
                if (init := values.get(_INIT_TIME)) is not None:
                    ctx.stream.system_init_ms = ctx.init_ms = init
        else:
            for i, values in enumerate(records, index):
                self._emit(values, ctx, i)
        return len(records), complete

    def _emit(self, values: _Values, ctx: _Datagram, index: int) -> None:
        src = values.get(8) or values.get(27)
        dst = values.get(12) or values.get(28)
        proto = values.get(4)
        if src is None or dst is None or proto is None:
            self.counters.incomplete_records += 1
            return
        proto &= 0xFF
        sport, dport = values.get(7, 0) & 0xFFFF, values.get(11, 0) & 0xFFFF
        if proto in (1, 58):
            type_code = values.get(32, values.get(139))
            if type_code is not None:
                sport, dport = (type_code >> 8) & 0xFF, type_code & 0xFF
            elif sport == 0:
                sport, dport = dport >> 8, dport & 0xFF
        start, end = _time_ms(values, ctx, _START), _time_ms(values, ctx, _END)
        span = None
        if start is not None and end is not None:
            span = end - start
        elif (v := values.get(161)) is not None or (v := values.get(162)) is not None:
            span = float(v) if 161 in values else v / 1000.0
            if start is None and end is not None:
                start = end - span
        ts = start if start is not None else end if end is not None else ctx.export_ms
        octets, flags = values.get(1, values.get(85)), values.get(6)
        pkts = values.get(2, values.get(86))
        rev_octets = values.get(_REV | 1, values.get(_REV | 85))
        rev_pkts = values.get(_REV | 2, values.get(_REV | 86))
        if (rev_flags := values.get(_REV | 6)) is not None:
            flags = (flags or 0) | rev_flags
        init_octets, resp_octets = values.get(231), values.get(232)
        ip_octets = octets
        if init_octets is not None or resp_octets is not None:  # payload bytes (as Zeek's)
            octets, rev_octets, rev_ip_octets = init_octets, resp_octets, None
            pkts = values.get(298, pkts)
            rev_pkts = values.get(299, rev_pkts)
        else:
            rev_ip_octets = rev_octets
        biflow = rev_octets is not None or rev_pkts is not None
        # exporters send zeros where they have no MAC
        mac = next((m for m in (values.get(56), values.get(81)) if m and any(m)), None)
        record = FlowRecord(
            ts=ts / 1000.0 + ctx.offset_s,
            orig_h=_address(src),
            orig_p=sport,
            resp_h=_address(dst),
            resp_p=dport,
            proto=_PROTO_NAMES.get(proto, str(proto)),
            uid=f"{ctx.uid}{index}",
            duration=span / 1000.0 if span is not None and span >= 0 else None,
            orig_bytes=octets,
            orig_pkts=pkts,
            orig_ip_bytes=ip_octets,  # NetFlow counts IP-layer octets
            resp_bytes=rev_octets,
            resp_pkts=rev_pkts,
            resp_ip_bytes=rev_ip_octets,
            tcp_flags=flags & 0xFF if flags is not None else None,
            orig_mac=mac.hex(":") if mac is not None else None,
        )
        who = initiator(proto, sport, dport, values.get(239))
        if who is None and (init_octets is not None or resp_octets is not None):
            who = "source"  # initiator/responder counters: the source is the initiator
        if who == "destination":
            record = as_answer(record, proto)
            self.counters.answers += 1
        self.counters.biflows += biflow
        half: Half = None if biflow else _HALVES[who]
        ctx.out.extend(self._joiner.push(record, half, ctx.received_at))

    # -- sequence numbers -----------------------------------------------------------------------

    def _sequence(self, stream: StreamStats, seq: int, count: int | None, flows: bool) -> None:
        """Compare ``seq`` with the expected number, then expect ``seq + count`` next."""
        if stream.expected is not None:
            gap = (seq - stream.expected) & _MASK32
            back = (stream.expected - seq) & _MASK32
            window = self.reorder_window_flows if flows else self.reorder_window_packets
            if 0 < gap < _HALF32:
                self._lost(stream, gap, flows)
            elif gap and back <= window:
                stream.reordered += 1
                self.counters.reordered += 1
                self._lost(stream, -min(count or 0, stream.lost), flows)
                return  # a late datagram does not move the expectation back
            elif gap:
                stream.resets += 1
                self.counters.sequence_resets += 1
        stream.expected = None if count is None else (seq + count) & _MASK32

    def _lost(self, stream: StreamStats, n: int, flows: bool) -> None:
        stream.lost += n
        if flows:
            self.counters.lost_flows += n
        else:
            self.counters.lost_packets += n
