"""Build NetFlow v5, NetFlow v9 (RFC 3954) and IPFIX (RFC 7011) datagrams from FlowRecords.

Test helpers, kept out of the engine on purpose: the engine only ever decodes. The engine tests
round-trip these datagrams through ``NetFlowDecoder``, and the Home Assistant tests send the same
bytes over a real UDP socket to the collector. Header layouts follow the RFCs field by field:

- v5 (Cisco): 24-byte header (version, count, sysUptime, unix_secs, unix_nsecs, flow_sequence,
  engine_type, engine_id, sampling_interval) and 48-byte records.
- v9 (RFC 3954 section 5): 20-byte header (version, count, sysUptime, unix secs, sequence,
  source id); template FlowSet id 0, options template FlowSet id 1, data FlowSets id >= 256.
- IPFIX (RFC 7011 section 3): 16-byte header (version 10, message length, export time,
  sequence, observation domain id); template set id 2, options template set id 3, data sets
  id >= 256, enterprise bit with a 4-byte enterprise number, variable-length fields (65535).

Times: a record's ``ts`` and ``duration`` become FIRST/LAST_SWITCHED relative to sysUptime (v5,
v9: export time = unix secs (+ nsecs for v5) at sysUptime) or absolute milliseconds (IPFIX
152/153). Pick ``ts`` at or before the export time, in whole milliseconds, for exact round trips.
ICMP records carry their type in ``orig_p`` and code in ``resp_p`` (Zeek's way); they go on the
wire as source port 0 and destination port ``type << 8 | code`` (Cisco's way).

Typical use::

    records = [FlowRecord(ts=1700000000.5, orig_h="192.168.1.20", orig_p=51000,
                          resp_h="93.184.216.34", resp_p=443, proto="tcp", orig_bytes=1200,
                          orig_pkts=10, duration=1.25, tcp_flags=0x1B)]
    v5 = build_v5(records, unix_secs=1700000001, sequence=0)
    v9 = build_v9(records, unix_secs=1700000001, sequence=0)  # template and data in one packet
    ipfix = build_ipfix(records, export_time=1700000001, sequence=0)
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from giot_engine.records import FlowRecord

VARLEN = 0xFFFF
DOC_ENTERPRISE = 32473  # private enterprise number reserved for documentation (RFC 5612)
REVERSE_PEN = 29305  # RFC 5103: reverse information elements (same numbers as the forward ones)
REVERSE = 1 << 16  # ``record_values`` key of a reverse element: IE | REVERSE
PROTO_NUMBERS = {"icmp": 1, "tcp": 6, "udp": 17}


@dataclass(frozen=True)
class Field:
    """One field specifier of a template: information element, length, enterprise number."""

    ie: int
    length: int
    enterprise: int | None = None


V9_IPV4_FIELDS: tuple[Field, ...] = (
    Field(8, 4),  # IPV4_SRC_ADDR
    Field(12, 4),  # IPV4_DST_ADDR
    Field(7, 2),  # L4_SRC_PORT
    Field(11, 2),  # L4_DST_PORT
    Field(4, 1),  # PROTOCOL
    Field(6, 1),  # TCP_FLAGS
    Field(1, 8),  # IN_BYTES
    Field(2, 4),  # IN_PKTS
    Field(22, 4),  # FIRST_SWITCHED
    Field(21, 4),  # LAST_SWITCHED
    Field(10, 2),  # INPUT_SNMP: read by no one, skipped by length
    Field(56, 6),  # IN_SRC_MAC
)
V9_IPV6_FIELDS: tuple[Field, ...] = (Field(27, 16), Field(28, 16), *V9_IPV4_FIELDS[2:])
IPFIX_IPV4_FIELDS: tuple[Field, ...] = (
    Field(8, 4),  # sourceIPv4Address
    Field(12, 4),  # destinationIPv4Address
    Field(7, 2),  # sourceTransportPort
    Field(11, 2),  # destinationTransportPort
    Field(4, 1),  # protocolIdentifier
    Field(6, 2),  # tcpControlBits (16 bits since RFC 7125)
    Field(1, 8),  # octetDeltaCount
    Field(2, 8),  # packetDeltaCount
    Field(152, 8),  # flowStartMilliseconds
    Field(153, 8),  # flowEndMilliseconds
    Field(56, 6),  # sourceMacAddress
    Field(82, VARLEN),  # interfaceName: variable length
    Field(1, 4, DOC_ENTERPRISE),  # enterprise field reusing number 1: must not be octets
    Field(2, VARLEN, DOC_ENTERPRISE),  # variable-length enterprise field
)
IPFIX_IPV6_FIELDS: tuple[Field, ...] = (Field(27, 16), Field(28, 16), *IPFIX_IPV4_FIELDS[2:])
# An RFC 5103 biflow as YAF exports it: forward counters, then the reverse ones (enterprise 29305).
IPFIX_BIFLOW_FIELDS: tuple[Field, ...] = (
    *IPFIX_IPV4_FIELDS[:8],  # addresses, ports, protocol, flags, octets, packets
    Field(152, 8),  # flowStartMilliseconds
    Field(153, 8),  # flowEndMilliseconds
    Field(1, 8, REVERSE_PEN),  # reverseOctetDeltaCount
    Field(2, 8, REVERSE_PEN),  # reversePacketDeltaCount
    Field(6, 2, REVERSE_PEN),  # reverseTcpControlBits
    Field(56, 6),  # sourceMacAddress
)
IPFIX_BIFLOW_DIRECTION_FIELDS: tuple[Field, ...] = (*IPFIX_BIFLOW_FIELDS, Field(239, 1))
# Cisco NSEL (ASA) style: one record per connection, the source is the initiator.
IPFIX_INITIATOR_FIELDS: tuple[Field, ...] = (
    *IPFIX_IPV4_FIELDS[:6],
    Field(231, 8),  # initiatorOctets
    Field(232, 8),  # responderOctets
    Field(298, 8),  # initiatorPackets
    Field(299, 8),  # responderPackets
    Field(152, 8),
    Field(153, 8),
)


# -- values of one record ----------------------------------------------------------------------


def proto_number(proto: str) -> int:
    """IANA protocol number of a FlowRecord ``proto`` ("tcp", "udp", "icmp" or digits)."""
    return PROTO_NUMBERS.get(proto, 0) if not proto.isdigit() else int(proto)


def record_values(
    record: FlowRecord, *, export_ms: int, sys_uptime_ms: int
) -> dict[int, int | bytes]:
    """Information element values of ``record`` (IANA numbers, no enterprise fields).

    ``export_ms`` is the export time in epoch ms and ``sys_uptime_ms`` the exporter's uptime at
    that instant, so that sysUptime-relative times (21/22) can be computed.
    """
    start_ms = round(record.ts * 1000)
    end_ms = start_ms + round((record.duration or 0.0) * 1000)
    src, dst = ipaddress.ip_address(record.orig_h), ipaddress.ip_address(record.resp_h)
    proto = proto_number(record.proto)
    sport, dport = record.orig_p, record.resp_p
    if proto == 1:
        proto = 58 if src.version == 6 else 1  # ICMPv6 is "icmp" in Zeek's names too
        sport, dport = 0, (record.orig_p & 0xFF) << 8 | (record.resp_p & 0xFF)
    values: dict[int, int | bytes] = {
        8 if src.version == 4 else 27: src.packed,
        12 if dst.version == 4 else 28: dst.packed,
        7: sport,
        11: dport,
        4: proto,
        6: record.tcp_flags or 0,
        1: record.orig_bytes or 0,
        2: record.orig_pkts or 0,
        152: start_ms,
        153: end_ms,
        150: start_ms // 1000,
        151: end_ms // 1000,
        22: (sys_uptime_ms - (export_ms - start_ms)) & 0xFFFFFFFF,
        21: (sys_uptime_ms - (export_ms - end_ms)) & 0xFFFFFFFF,
    }
    if record.orig_mac is not None:
        values[56] = bytes.fromhex(record.orig_mac.replace(":", ""))
    # biflows: the responder's counters as reverse elements and initiator/responder counters
    values[REVERSE | 1] = values[232] = record.resp_bytes or 0
    values[REVERSE | 2] = values[299] = record.resp_pkts or 0
    values[231], values[298] = record.orig_bytes or 0, record.orig_pkts or 0
    return values


def reply_of(record: FlowRecord, *, delay: float = 0.0) -> FlowRecord:
    """The answer of ``record`` as a uniflow exporter reports it: the responder as the source.

    Its counters are the responder's (``resp_bytes``/``resp_pkts``), it starts ``delay`` seconds
    later and has no MAC (a reply's source MAC is the server's or the router's, not the client's).
    ICMP echo requests (8, 128) become echo replies (0, 129).
    """
    orig_p, resp_p = record.resp_p, record.orig_p
    if record.proto == "icmp":
        orig_p, resp_p = {8: 0, 128: 129, 13: 14}.get(record.orig_p, record.orig_p), record.resp_p
    duration = None if record.duration is None else max(0.0, record.duration - delay)
    return FlowRecord(
        ts=record.ts + delay,
        orig_h=record.resp_h,
        orig_p=orig_p,
        resp_h=record.orig_h,
        resp_p=resp_p,
        proto=record.proto,
        duration=duration,
        orig_bytes=record.resp_bytes,
        orig_pkts=record.resp_pkts,
        tcp_flags=record.tcp_flags,
    )


def encode_varlen(value: bytes, *, long_form: bool = False) -> bytes:
    """RFC 7011 section 7: one length byte, or 255 and two length bytes (always from 255 up)."""
    if long_form or len(value) >= 255:
        return b"\xff" + struct.pack(">H", len(value)) + value
    return bytes([len(value)]) + value


def encode_record(
    fields: Sequence[Field],
    values: Mapping[int, int | bytes],
    *,
    extra: Mapping[Field, bytes] | None = None,
) -> bytes:
    """One data record: fixed fields big-endian and zero-filled when absent.

    ``extra`` gives the raw bytes of other fields (enterprise or variable-length ones); an absent
    variable-length field is sent empty.
    """
    out = bytearray()
    for spec in fields:
        raw = (extra or {}).get(spec)
        if spec.length == VARLEN:
            out += encode_varlen(raw or b"")
            continue
        if raw is not None:
            out += raw[: spec.length].ljust(spec.length, b"\x00")
            continue
        key = {None: spec.ie, REVERSE_PEN: REVERSE | spec.ie}.get(spec.enterprise)
        value = values.get(key) if key is not None else None
        if isinstance(value, int):
            out += (value & ((1 << (8 * spec.length)) - 1)).to_bytes(spec.length, "big")
        elif isinstance(value, bytes) and len(value) == spec.length:
            out += value
        else:
            out += bytes(spec.length)
    return bytes(out)


def _set(set_id: int, body: bytes, *, pad: bool = True) -> bytes:
    """A v9 FlowSet / IPFIX set: id, length, body, zero padding to 4 bytes."""
    if pad:
        body += bytes(-len(body) % 4)
    return struct.pack(">HH", set_id, 4 + len(body)) + body


def data_set(set_id: int, rows: Iterable[bytes], *, pad: bool = True) -> bytes:
    """A v9 data FlowSet or IPFIX data set of already encoded records."""
    return _set(set_id, b"".join(rows), pad=pad)


# -- NetFlow v5 --------------------------------------------------------------------------------


def build_v5(
    records: Sequence[FlowRecord],
    *,
    unix_secs: int,
    unix_nsecs: int = 0,
    sys_uptime_ms: int = 3_600_000,
    sequence: int = 0,
    engine_type: int = 0,
    engine_id: int = 0,
    sampling_interval: int = 0,
) -> bytes:
    """A v5 datagram (IPv4 only, at most 30 records by Cisco's rule, not enforced here)."""
    export_ms = unix_secs * 1000 + unix_nsecs // 1_000_000
    header = struct.pack(
        ">HHIIIIBBH",
        5,
        len(records),
        sys_uptime_ms,
        unix_secs,
        unix_nsecs,
        sequence & 0xFFFFFFFF,
        engine_type,
        engine_id,
        sampling_interval,
    )
    rows = []
    for record in records:
        v = record_values(record, export_ms=export_ms, sys_uptime_ms=sys_uptime_ms)
        rows.append(
            struct.pack(
                ">4s4s4sHHIIIIHHBBBBHHBBH",
                v.get(8, bytes(4)),
                v.get(12, bytes(4)),
                bytes(4),  # nexthop
                0,  # input ifIndex
                0,  # output ifIndex
                int(v[2]) & 0xFFFFFFFF,
                int(v[1]) & 0xFFFFFFFF,
                v[22],
                v[21],
                v[7],
                v[11],
                0,  # pad1
                int(v[6]) & 0xFF,
                v[4],
                0,  # tos
                0,  # src_as
                0,  # dst_as
                0,  # src_mask
                0,  # dst_mask
                0,  # pad2
            )
        )
    return header + b"".join(rows)


# -- NetFlow v9 --------------------------------------------------------------------------------


def v9_template_flowset(templates: Mapping[int, Sequence[Field]]) -> bytes:
    """Template FlowSet (id 0) holding one template record per template id."""
    body = b"".join(
        struct.pack(">HH", tid, len(fields))
        + b"".join(struct.pack(">HH", f.ie, f.length) for f in fields)
        for tid, fields in templates.items()
    )
    return _set(0, body)


def v9_options_template_flowset(
    template_id: int, scope_fields: Sequence[Field], option_fields: Sequence[Field]
) -> bytes:
    """Options template FlowSet (id 1): scope and option lengths are in bytes."""
    specs = [*scope_fields, *option_fields]
    body = struct.pack(">HHH", template_id, 4 * len(scope_fields), 4 * len(option_fields))
    body += b"".join(struct.pack(">HH", f.ie, f.length) for f in specs)
    return _set(1, body)


def v9_datagram(
    flowsets: Sequence[bytes],
    *,
    unix_secs: int,
    sys_uptime_ms: int = 3_600_000,
    sequence: int = 0,
    source_id: int = 0,
    count: int | None = None,
) -> bytes:
    """v9 export packet; ``count`` (records of all FlowSets) defaults to the number of sets."""
    header = struct.pack(
        ">HHIIII",
        9,
        len(flowsets) if count is None else count,
        sys_uptime_ms,
        unix_secs,
        sequence & 0xFFFFFFFF,
        source_id,
    )
    return header + b"".join(flowsets)


def build_v9(
    records: Sequence[FlowRecord],
    *,
    unix_secs: int,
    sys_uptime_ms: int = 3_600_000,
    sequence: int = 0,
    source_id: int = 0,
    template_id: int = 256,
    fields: Sequence[Field] = V9_IPV4_FIELDS,
    include_template: bool = True,
    include_data: bool = True,
) -> bytes:
    """A v9 packet: the template FlowSet, then one data FlowSet of ``records``."""
    export_ms = unix_secs * 1000
    sets = []
    if include_template:
        sets.append(v9_template_flowset({template_id: fields}))
    if include_data:
        rows = [
            encode_record(
                fields, record_values(r, export_ms=export_ms, sys_uptime_ms=sys_uptime_ms)
            )
            for r in records
        ]
        sets.append(data_set(template_id, rows))
    count = int(include_template) + (len(records) if include_data else 0)
    return v9_datagram(
        sets,
        unix_secs=unix_secs,
        sys_uptime_ms=sys_uptime_ms,
        sequence=sequence,
        source_id=source_id,
        count=count,
    )


# -- IPFIX -------------------------------------------------------------------------------------


def _ipfix_specifiers(fields: Sequence[Field]) -> bytes:
    out = bytearray()
    for f in fields:
        if f.enterprise is None:
            out += struct.pack(">HH", f.ie, f.length)
        else:
            out += struct.pack(">HHI", f.ie | 0x8000, f.length, f.enterprise)
    return bytes(out)


def ipfix_template_set(templates: Mapping[int, Sequence[Field]]) -> bytes:
    """Template set (id 2); an empty field list is a withdrawal of that template id."""
    body = b"".join(
        struct.pack(">HH", tid, len(fields)) + _ipfix_specifiers(fields)
        for tid, fields in templates.items()
    )
    return _set(2, body)


def ipfix_options_template_set(
    template_id: int, scope_fields: Sequence[Field], option_fields: Sequence[Field]
) -> bytes:
    """Options template set (id 3): field count, scope field count, scope fields first."""
    specs = [*scope_fields, *option_fields]
    head = struct.pack(">HHH", template_id, len(specs), len(scope_fields))
    return _set(3, head + _ipfix_specifiers(specs))


def ipfix_withdrawal_set(template_ids: Iterable[int], *, set_id: int = 2) -> bytes:
    """Withdrawal records (field count 0); id 2 in set 2 (3 in set 3) withdraws them all."""
    return _set(set_id, b"".join(struct.pack(">HH", tid, 0) for tid in template_ids), pad=False)


def ipfix_message(
    sets: Sequence[bytes], *, export_time: int, sequence: int = 0, domain_id: int = 0
) -> bytes:
    """IPFIX message: header with the total length, then the sets."""
    body = b"".join(sets)
    header = struct.pack(
        ">HHIII", 10, 16 + len(body), export_time, sequence & 0xFFFFFFFF, domain_id
    )
    return header + body


def ipfix_rows(
    records: Sequence[FlowRecord],
    fields: Sequence[Field],
    *,
    export_time: int,
    extra: Mapping[Field, bytes] | None = None,
) -> list[bytes]:
    """Encode ``records`` with ``fields``; ``extra`` fills enterprise and varlen fields."""
    fill = {
        Field(82, VARLEN): b"eth0",
        Field(1, 4, DOC_ENTERPRISE): b"\xde\xad\xbe\xef",
        Field(2, VARLEN, DOC_ENTERPRISE): b"x" * 300,  # forces the 3-byte length form
        **(extra or {}),
    }
    return [
        encode_record(
            fields, record_values(r, export_ms=export_time * 1000, sys_uptime_ms=0), extra=fill
        )
        for r in records
    ]


def build_ipfix(
    records: Sequence[FlowRecord],
    *,
    export_time: int,
    sequence: int = 0,
    domain_id: int = 0,
    template_id: int = 256,
    fields: Sequence[Field] = IPFIX_IPV4_FIELDS,
    include_template: bool = True,
    include_data: bool = True,
    extra: Mapping[Field, bytes] | None = None,
) -> bytes:
    """An IPFIX message: the template set, then one data set of ``records``.

    The default template holds a variable-length field (interfaceName, 1-byte length form), an
    enterprise field reusing IE number 1 and a 300-byte enterprise field (3-byte length form).
    """
    sets = []
    if include_template:
        sets.append(ipfix_template_set({template_id: fields}))
    if include_data:
        rows = ipfix_rows(records, fields, export_time=export_time, extra=extra)
        sets.append(data_set(template_id, rows))
    return ipfix_message(sets, export_time=export_time, sequence=sequence, domain_id=domain_id)
