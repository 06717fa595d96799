"""NetFlow v5 / v9 / IPFIX decoding: round trips, template state, sequence gaps, hostile input."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import struct
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from giot_engine.flow_join import initiator
from giot_engine.netflow import REJECT_REASONS, NetFlowDecoder
from giot_engine.records import FlowRecord
from tests.engine.netflow_packets import (
    DOC_ENTERPRISE,
    IPFIX_BIFLOW_DIRECTION_FIELDS,
    IPFIX_BIFLOW_FIELDS,
    IPFIX_INITIATOR_FIELDS,
    IPFIX_IPV4_FIELDS,
    IPFIX_IPV6_FIELDS,
    V9_IPV4_FIELDS,
    V9_IPV6_FIELDS,
    VARLEN,
    Field,
    build_ipfix,
    build_v5,
    build_v9,
    data_set,
    encode_record,
    ipfix_message,
    ipfix_options_template_set,
    ipfix_rows,
    ipfix_template_set,
    ipfix_withdrawal_set,
    record_values,
    reply_of,
    v9_datagram,
    v9_options_template_flowset,
    v9_template_flowset,
)

EXPORTER = "192.0.2.1"
T0 = 1_700_000_000  # export time (unix seconds) of most datagrams here

TCP = FlowRecord(
    ts=T0 - 3.25,
    orig_h="192.168.1.20",
    orig_p=51000,
    resp_h="93.184.216.34",
    resp_p=443,
    proto="tcp",
    duration=1.5,
    orig_bytes=123_456,
    orig_pkts=97,
    tcp_flags=0x1B,
    orig_mac="aa:bb:cc:00:11:22",
)
UDP = FlowRecord(
    ts=T0 - 0.125,
    orig_h="192.168.1.31",
    orig_p=5353,
    resp_h="224.0.0.251",
    resp_p=5353,
    proto="udp",
    duration=0.0,
    orig_bytes=312,
    orig_pkts=2,
    tcp_flags=0,
)
ICMP = FlowRecord(
    ts=T0 - 10.0,
    orig_h="192.168.1.20",
    orig_p=8,  # echo request
    resp_h="8.8.8.8",
    resp_p=0,
    proto="icmp",
    duration=2.0,
    orig_bytes=168,
    orig_pkts=2,
    tcp_flags=0,
)
GRE = dataclasses.replace(UDP, proto="47", orig_p=0, resp_p=0, ts=T0 - 1.0)
V6 = FlowRecord(
    ts=T0 - 0.5,
    orig_h="2001:db8::20",
    orig_p=40000,
    resp_h="2606:4700::6810:84e5",
    resp_p=443,
    proto="tcp",
    duration=0.25,
    orig_bytes=5000,
    orig_pkts=8,
    tcp_flags=0x12,
    orig_mac="02:00:00:00:00:07",
)
FLOWS = [TCP, UDP, ICMP, GRE]


def expected(record: FlowRecord, uid: str, *, mac: bool = True) -> FlowRecord:
    """What a NetFlow exporter can say about ``record``: one direction, no Zeek fields."""
    return dataclasses.replace(
        record,
        uid=uid,
        orig_ip_bytes=record.orig_bytes,
        orig_mac=record.orig_mac if mac else None,
    )


def decode(decoder: NetFlowDecoder, datagram: bytes, exporter: str = EXPORTER) -> list[FlowRecord]:
    return decoder.decode(datagram, exporter, float(T0))


def set_offsets(datagram: bytes) -> list[int]:
    """Offsets of the set headers of a v9 packet or IPFIX message."""
    off = 20 if datagram[1] == 9 else 16
    out = []
    while off + 4 <= len(datagram):
        out.append(off)
        length = struct.unpack_from(">H", datagram, off + 2)[0]
        if length < 4:
            break
        off += length
    return out


# -- round trips -------------------------------------------------------------------------------


def test_v5_round_trip() -> None:
    dec = NetFlowDecoder()
    datagram = build_v5(FLOWS, unix_secs=T0, sequence=77, engine_type=1, engine_id=2)
    got = decode(dec, datagram)
    domain = 1 << 8 | 2
    assert got == [
        expected(r, f"nf5/{EXPORTER}/{domain}/77/{i}", mac=False) for i, r in enumerate(FLOWS)
    ]
    assert got[0].resp_bytes is None
    assert got[0].conn_state is None
    assert got[0].service is None
    assert dec.stats.accepted == 1
    assert dec.stats.total_rejected == 0
    assert dec.counters.records == 4


def test_v5_sub_second_export_time_and_uptime_wrap() -> None:
    """unix_nsecs counts, and FIRST_SWITCHED before a 32-bit sysUptime wrap still works."""
    record = dataclasses.replace(UDP, ts=T0 + 0.25 - 5.0, duration=3.0)
    datagram = build_v5([record], unix_secs=T0, unix_nsecs=250_000_000, sys_uptime_ms=1000)
    (got,) = decode(NetFlowDecoder(), datagram)
    assert got.ts == record.ts
    assert got.duration == 3.0


def test_v9_round_trip_ipv4_and_ipv6_in_one_packet() -> None:
    dec = NetFlowDecoder()
    v4 = FLOWS
    sets = [
        v9_template_flowset({256: V9_IPV4_FIELDS, 257: V9_IPV6_FIELDS}),
        data_set(256, [encode_record(V9_IPV4_FIELDS, _v9_values(r)) for r in v4]),
        data_set(257, [encode_record(V9_IPV6_FIELDS, _v9_values(V6))]),
    ]
    got = decode(dec, v9_datagram(sets, unix_secs=T0, sequence=5, source_id=9))
    assert got == [
        *(expected(r, f"nf9/{EXPORTER}/9/5/{i}") for i, r in enumerate(v4)),
        expected(V6, f"nf9/{EXPORTER}/9/5/4"),
    ]
    assert dec.stats.accepted == 1


def _v9_values(record: FlowRecord) -> dict[int, int | bytes]:
    return record_values(record, export_ms=T0 * 1000, sys_uptime_ms=3_600_000)


def test_v9_high_level_builder_and_zero_mac_is_none() -> None:
    (got,) = decode(NetFlowDecoder(), build_v9([UDP], unix_secs=T0, sequence=3))
    assert got == expected(UDP, f"nf9/{EXPORTER}/0/3/0")
    assert got.orig_mac is None  # the builder sent six zero bytes


def test_ipfix_round_trip_with_varlen_and_enterprise_fields() -> None:
    dec = NetFlowDecoder()
    datagram = build_ipfix(FLOWS, export_time=T0, sequence=1000, domain_id=42)
    assert b"\xff\x01\x2c" in datagram  # 3-byte length form of the 300-byte field
    assert b"\x04eth0" in datagram  # 1-byte length form
    got = decode(dec, datagram)
    # the enterprise field numbered 1 (0xdeadbeef) must not be taken for octetDeltaCount
    assert got == [expected(r, f"nf10/{EXPORTER}/42/1000/{i}") for i, r in enumerate(FLOWS)]
    assert dec.stats.accepted == 1


def test_ipfix_ipv6_and_three_byte_form_of_a_short_value() -> None:
    dec = NetFlowDecoder()
    ping6 = dataclasses.replace(V6, proto="icmp", orig_p=128, resp_p=0, tcp_flags=0)
    datagram = build_ipfix([V6, ping6], export_time=T0, fields=IPFIX_IPV6_FIELDS)
    assert datagram.count(b"\x00\x00\x80\x00\x3a") == 1  # ports 0, 128 << 8; protocol 58
    assert decode(dec, datagram) == [
        expected(V6, f"nf10/{EXPORTER}/0/0/0"),
        expected(ping6, f"nf10/{EXPORTER}/0/0/1"),
    ]
    # RFC 7011 7 lets a short value use the 3-byte form too
    fields = (Field(82, VARLEN), *IPFIX_IPV4_FIELDS[:10])
    row = b"\xff\x00\x04eth0" + encode_record(fields[1:], _v9_values(TCP) | {152: 0, 153: 0})
    msg = ipfix_message(
        [ipfix_template_set({300: fields}), data_set(300, [row])], export_time=T0, sequence=1
    )
    (got,) = decode(dec, msg)
    assert (got.orig_h, got.resp_p, got.orig_bytes, got.ts) == (TCP.orig_h, 443, 123_456, 0.0)


@pytest.mark.parametrize(
    ("fields", "values", "ts", "duration"),
    [
        ((Field(150, 4), Field(151, 4)), {150: T0 - 7, 151: T0 - 2}, T0 - 7.0, 5.0),
        ((Field(152, 8), Field(161, 4)), {152: T0 * 1000 - 1500, 161: 250}, T0 - 1.5, 0.25),
        ((Field(153, 8), Field(161, 4)), {153: T0 * 1000 - 1000, 161: 500}, T0 - 1.5, 0.5),
        (
            (Field(156, 8), Field(157, 8)),  # NTP format nanoseconds
            {156: (T0 + 2208988800) << 32, 157: (T0 + 2208988800) << 32 | 1 << 31},
            float(T0),
            0.5,
        ),
        ((Field(158, 4), Field(159, 4)), {158: 3_000_000, 159: 1_000_000}, T0 - 3.0, 2.0),
        (
            (Field(160, 8), Field(22, 4), Field(21, 4)),  # sysUpTime from the record's 160
            {160: T0 * 1000 - 60_000, 22: 10_000, 21: 12_500},
            T0 - 50.0,
            2.5,
        ),
        ((), {}, float(T0), None),  # no times: export time
    ],
)
def test_ipfix_time_encodings(
    fields: tuple[Field, ...], values: dict[int, int], ts: float, duration: float | None
) -> None:
    base = (Field(8, 4), Field(12, 4), Field(4, 1))
    specs = (*base, *fields)
    row = encode_record(specs, {8: bytes(4), 12: bytes(4), 4: 17, **values})
    msg = ipfix_message(
        [ipfix_template_set({256: specs}), data_set(256, [row])], export_time=T0, sequence=0
    )
    (got,) = decode(NetFlowDecoder(), msg)
    assert got.ts == pytest.approx(ts, abs=1e-9)
    assert got.duration == duration
    assert (got.orig_p, got.resp_p, got.proto) == (0, 0, "udp")


def test_ipfix_sysuptime_from_options_data_and_options_templates_ignored() -> None:
    dec = NetFlowDecoder()
    scope, option = [Field(149, 4)], [Field(160, 8), Field(41, 8)]
    opt_row = struct.pack(">IQQ", 42, T0 * 1000 - 100_000, 123)
    first = ipfix_message(
        [ipfix_options_template_set(400, scope, option), data_set(400, [opt_row, opt_row])],
        export_time=T0,
        sequence=0,
        domain_id=42,
    )
    assert decode(dec, first) == []
    assert dec.counters.options_records == 2
    assert dec.stats.accepted == 1
    specs = (Field(8, 4), Field(12, 4), Field(4, 1), Field(22, 4), Field(21, 4))
    row = encode_record(specs, {8: bytes(4), 12: bytes(4), 4: 6, 22: 40_000, 21: 41_000})
    second = ipfix_message(
        [ipfix_template_set({256: specs}), data_set(256, [row])],
        export_time=T0,
        sequence=2,
        domain_id=42,
    )
    (got,) = decode(dec, second)
    assert (got.ts, got.duration) == (T0 - 60.0, 1.0)
    assert dec.counters.lost_flows == 0  # options data records count in the sequence


def test_v9_options_template_and_data_parsed_and_ignored() -> None:
    dec = NetFlowDecoder()
    sets = [
        v9_options_template_flowset(300, [Field(1, 4)], [Field(34, 4), Field(35, 1)]),
        data_set(300, [struct.pack(">IIB", 0, 100, 2)] * 3),
        v9_template_flowset({256: V9_IPV4_FIELDS}),
        data_set(256, [encode_record(V9_IPV4_FIELDS, _v9_values(TCP))]),
    ]
    got = decode(dec, v9_datagram(sets, unix_secs=T0))
    assert got == [expected(TCP, f"nf9/{EXPORTER}/0/0/3")]  # index counts every data record
    assert dec.counters.options_records == 3
    assert dec.stats.accepted == 1
    assert not dec.counters.problems


def test_padding_at_set_ends_and_after_the_last_set_is_accepted() -> None:
    dec = NetFlowDecoder()
    specs = (Field(8, 4), Field(12, 4), Field(4, 1))  # 9-byte records: 3 bytes of padding
    rows = [encode_record(specs, {8: b"\x0a\x00\x00\x01", 12: b"\x0a\x00\x00\x02", 4: 17})] * 3
    msg = ipfix_message(
        [ipfix_template_set({256: specs}), data_set(256, rows), bytes(8)], export_time=T0
    )
    assert len(decode(dec, msg)) == 3
    v9 = build_v9([UDP], unix_secs=T0) + bytes(3)
    assert len(decode(dec, v9)) == 1
    assert dec.stats.accepted == 2
    assert dec.stats.total_rejected == 0


def test_icmp_type_code_from_information_element() -> None:
    specs = (Field(8, 4), Field(12, 4), Field(4, 1), Field(7, 2), Field(11, 2), Field(32, 2))
    row = encode_record(specs, {8: bytes(4), 12: bytes(4), 4: 1, 7: 0, 11: 0, 32: 3 << 8 | 3})
    msg = ipfix_message([ipfix_template_set({256: specs}), data_set(256, [row])], export_time=T0)
    (got,) = decode(NetFlowDecoder(), msg)
    assert (got.proto, got.orig_p, got.resp_p) == ("icmp", 3, 3)


def test_records_without_addresses_are_dropped_and_counted() -> None:
    dec = NetFlowDecoder()
    specs = (Field(7, 2), Field(11, 2), Field(4, 1))
    row = encode_record(specs, {7: 1, 11: 2, 4: 6})
    msg = ipfix_message([ipfix_template_set({256: specs}), data_set(256, [row])], export_time=T0)
    assert decode(dec, msg) == []
    assert dec.counters.incomplete_records == 1


def test_exporter_clock_can_be_replaced_by_arrival_time() -> None:
    dec = NetFlowDecoder(trust_exporter_clock=False)
    (got,) = dec.decode(build_v9([UDP], unix_secs=T0), EXPORTER, T0 + 3600.0)
    assert got.ts == pytest.approx(UDP.ts + 3600.0)
    assert got.duration == UDP.duration


def test_uids_are_deterministic_and_unique() -> None:
    datagram = build_ipfix(FLOWS * 5, export_time=T0, sequence=9)
    first = [r.uid for r in decode(NetFlowDecoder(), datagram)]
    assert first == [r.uid for r in decode(NetFlowDecoder(), datagram)]
    assert len(set(first)) == 20


# -- template state ----------------------------------------------------------------------------


def test_templates_are_per_exporter_and_per_domain() -> None:
    dec = NetFlowDecoder()
    # same template id 256, different layouts: IPv4 at exporter A, IPv6 at exporter B and at
    # A's observation domain 2
    decode(dec, build_ipfix([], export_time=T0, include_data=False), "192.0.2.1")
    decode(dec, build_ipfix([], export_time=T0, fields=IPFIX_IPV6_FIELDS), "192.0.2.2")
    decode(dec, build_ipfix([], export_time=T0, fields=IPFIX_IPV6_FIELDS, domain_id=2), "192.0.2.1")
    data_a = build_ipfix([TCP], export_time=T0, include_template=False)
    data_b = build_ipfix([V6], export_time=T0, include_template=False, fields=IPFIX_IPV6_FIELDS)
    data_a2 = build_ipfix(
        [V6], export_time=T0, include_template=False, fields=IPFIX_IPV6_FIELDS, domain_id=2
    )
    assert [r.orig_h for r in decode(dec, data_a, "192.0.2.1")] == [TCP.orig_h]
    assert [r.orig_h for r in decode(dec, data_b, "192.0.2.2")] == [V6.orig_h]
    assert [r.orig_h for r in decode(dec, data_a2, "192.0.2.1")] == [V6.orig_h]
    assert decode(dec, data_b, "192.0.2.3") == []  # an unknown exporter has no templates
    assert dec.stats.rejected == {"no_template": 1}
    assert dec.template_count == 3


def test_v9_and_ipfix_templates_of_one_exporter_do_not_mix() -> None:
    dec = NetFlowDecoder()
    decode(dec, build_ipfix([], export_time=T0, include_data=False))
    assert decode(dec, build_v9([TCP], unix_secs=T0, include_template=False)) == []
    assert dec.stats.rejected["no_template"] == 1


def test_template_refresh_and_redefinition() -> None:
    dec = NetFlowDecoder()
    assert len(decode(dec, build_v9([TCP], unix_secs=T0, sequence=0))) == 1
    assert len(decode(dec, build_v9([TCP], unix_secs=T0, sequence=1))) == 1
    assert dec.counters.templates_refreshed == 1
    # template 256 redefined as IPv6: the same id now decodes a different layout
    (got,) = decode(dec, build_v9([V6], unix_secs=T0, sequence=2, fields=V9_IPV6_FIELDS))
    assert got.orig_h == V6.orig_h
    assert dec.counters.templates_replaced == 1
    data_only = build_v9(
        [V6], unix_secs=T0, sequence=3, fields=V9_IPV6_FIELDS, include_template=False
    )
    assert [r.orig_h for r in decode(dec, data_only)] == [V6.orig_h]
    # IPFIX: a narrower redefinition changes how the same data bytes are read
    narrow = (Field(8, 4), Field(12, 4), Field(4, 1))
    decode(dec, ipfix_message([ipfix_template_set({256: narrow})], export_time=T0))
    row = encode_record(narrow, {8: b"\x01\x02\x03\x04", 12: b"\x05\x06\x07\x08", 4: 6})
    (got,) = decode(dec, ipfix_message([data_set(256, [row])], export_time=T0))
    assert (got.orig_h, got.resp_h, got.orig_bytes) == ("1.2.3.4", "5.6.7.8", None)
    wide = (Field(12, 4), Field(8, 4), Field(4, 1))  # same length, addresses swapped
    decode(dec, ipfix_message([ipfix_template_set({256: wide})], export_time=T0))
    (got,) = decode(dec, ipfix_message([data_set(256, [row])], export_time=T0))
    assert (got.orig_h, got.resp_h) == ("5.6.7.8", "1.2.3.4")
    assert dec.counters.templates_replaced == 2


def test_ipfix_template_withdrawal_single_and_all() -> None:
    dec = NetFlowDecoder()
    decode(dec, build_ipfix([], export_time=T0, include_data=False, template_id=256))
    decode(dec, build_ipfix([], export_time=T0, include_data=False, template_id=257))
    decode(
        dec,
        ipfix_message(
            [ipfix_options_template_set(258, [Field(149, 4)], [Field(160, 8)])], export_time=T0
        ),
    )
    assert dec.template_count == 3
    decode(dec, ipfix_message([ipfix_withdrawal_set([256])], export_time=T0))
    assert not dec.has_template(EXPORTER, 10, 0, 256)
    assert dec.has_template(EXPORTER, 10, 0, 257)
    assert decode(dec, build_ipfix([TCP], export_time=T0, include_template=False)) == []
    assert dec.stats.rejected["no_template"] == 1
    decode(dec, ipfix_message([ipfix_withdrawal_set([2])], export_time=T0))  # all data templates
    assert dec.template_count == 1  # the options template stays
    decode(dec, ipfix_message([ipfix_withdrawal_set([3], set_id=3)], export_time=T0))
    assert dec.template_count == 0
    assert dec.counters.templates_withdrawn == 3
    assert dec.stats.rejected == {"no_template": 1}


def test_data_before_template_is_counted_then_decoded_once_the_template_arrives() -> None:
    dec = NetFlowDecoder()
    assert decode(dec, build_v9([TCP], unix_secs=T0, sequence=0, include_template=False)) == []
    assert decode(dec, build_ipfix([TCP], export_time=T0, include_template=False)) == []
    assert dec.stats.rejected == {"no_template": 2}
    assert dec.counters.problems["no_template"] == 2
    assert len(decode(dec, build_v9([TCP], unix_secs=T0, sequence=1))) == 1
    assert len(decode(dec, build_ipfix([TCP], export_time=T0, sequence=0))) == 1
    assert dec.stats.accepted == 2


def test_template_cache_is_bounded() -> None:
    dec = NetFlowDecoder(max_templates=2)
    for tid in (256, 257, 258):
        decode(dec, build_v9([], unix_secs=T0, template_id=tid, include_data=False))
    assert dec.template_count == 2
    assert dec.counters.templates_evicted == 1
    assert not dec.has_template(EXPORTER, 9, 0, 256)


# -- sequence numbers --------------------------------------------------------------------------


def test_v5_lost_flows_with_wrap_around() -> None:
    dec = NetFlowDecoder()
    two = [TCP, UDP]
    for seq in (0, 2, 10):  # 2..9 missing after the second: 6 flows
        decode(dec, build_v5(two, unix_secs=T0, sequence=seq))
    assert dec.counters.lost_flows == 6
    for seq in (0xFFFFFFFF, 1, 8):  # wraps: 0xFFFFFFFF + 2 = 1; then 3..7 missing: 5 flows
        decode(dec, build_v5(two, unix_secs=T0, sequence=seq, engine_id=1))
    stream = dec.stream(EXPORTER, 5, 1)
    assert stream is not None
    assert stream.lost == 5
    assert dec.counters.lost_flows == 11
    assert dec.counters.sequence_resets == 0


def test_v9_lost_packets_wrap_reorder_and_reset() -> None:
    dec = NetFlowDecoder()
    for seq in (0xFFFFFFFD, 0xFFFFFFFE, 1):  # 0xFFFFFFFF and 0 missing across the wrap
        decode(dec, build_v9([UDP], unix_secs=T0, sequence=seq))
    assert dec.counters.lost_packets == 2
    decode(dec, build_v9([UDP], unix_secs=T0, sequence=0))  # late: no longer lost
    assert dec.counters.lost_packets == 1
    assert dec.counters.reordered == 1
    decode(dec, build_v9([UDP], unix_secs=T0, sequence=2))  # in order after the late one
    assert dec.counters.lost_packets == 1
    decode(dec, build_v9([UDP], unix_secs=T0, sequence=7))
    assert dec.counters.lost_packets == 5
    decode(dec, build_v9([UDP], unix_secs=T0, sequence=0x10000000))  # forward: counted as lost
    decode(dec, build_v9([UDP], unix_secs=T0, sequence=0x10000001))
    lost = dec.counters.lost_packets
    decode(dec, build_v9([UDP], unix_secs=T0, sequence=3))  # far back: exporter restart
    decode(dec, build_v9([UDP], unix_secs=T0, sequence=4))
    assert dec.counters.sequence_resets == 1
    assert dec.counters.lost_packets == lost
    assert dec.counters.lost_flows == 0


def test_ipfix_lost_flows_counted_in_data_records() -> None:
    dec = NetFlowDecoder()
    decode(dec, build_ipfix(FLOWS, export_time=T0, sequence=0xFFFFFFFE))  # next: 2 (wrapped)
    decode(dec, build_ipfix([], export_time=T0, sequence=2, include_data=False))  # templates only
    decode(dec, build_ipfix([TCP], export_time=T0, sequence=2))
    assert dec.counters.lost_flows == 0
    decode(dec, build_ipfix([TCP], export_time=T0, sequence=10))  # 3..9 missing
    assert dec.counters.lost_flows == 7
    # a data set without template leaves the count unknown: no loss is guessed from it
    decode(
        dec,
        build_ipfix([TCP], export_time=T0, sequence=11, template_id=999, include_template=False),
    )
    decode(dec, build_ipfix([TCP], export_time=T0, sequence=500))
    assert dec.counters.lost_flows == 7
    decode(dec, build_ipfix([TCP], export_time=T0, sequence=502))
    assert dec.counters.lost_flows == 8


# -- malformed input ---------------------------------------------------------------------------


def _v9_with(*sets: bytes) -> bytes:
    return v9_datagram(list(sets), unix_secs=T0)


_TEMPLATE = v9_template_flowset({256: V9_IPV4_FIELDS})
_DATA = data_set(256, [encode_record(V9_IPV4_FIELDS, _v9_values(TCP))])
_IPFIX = build_ipfix([TCP], export_time=T0)


@pytest.mark.parametrize(
    ("datagram", "reason", "records"),
    [
        (b"", "truncated_header", 0),
        (b"\x00", "truncated_header", 0),
        (b"\x00\x05" + bytes(10), "truncated_header", 0),
        (b"\x00\x09" + bytes(10), "truncated_header", 0),
        (b"\x00\x0a" + bytes(10), "truncated_header", 0),
        (b"\x00\x07" + bytes(40), "unknown_version", 0),
        (bytes(70_000), "oversize", 0),
        (build_v5([TCP], unix_secs=T0)[:24], "truncated", 0),
        (b"\x00\x05\x00\x00" + bytes(20), "bad_count", 0),
        (build_v5([TCP, UDP], unix_secs=T0)[:-1], "truncated", 0),
        (_IPFIX[:-1], "truncated", 0),
        (_IPFIX[:2] + b"\x00\x08" + _IPFIX[4:], "bad_length", 0),
        (_IPFIX + b"\x00\x00", "length_mismatch", 1),
        # zero-length set after valid ones: records already decoded are kept
        (_v9_with(_TEMPLATE, _DATA, b"\x01\x00\x00\x00\xff"), "set_too_short", 1),
        (_v9_with(_TEMPLATE, _DATA, b"\x01\x00\x00\x02"), "set_too_short", 1),
        (_v9_with(_TEMPLATE, _DATA, b"\x01\x00\x00\x40\x00\x00"), "set_past_end", 1),
        (_v9_with(_TEMPLATE, _DATA, b"\x01\x02"), "trailing_bytes", 1),
        (_v9_with(_DATA), "no_template", 0),
        (_v9_with(b"\x00\x00\x00\x0c\x00\x05\x00\x01\x00\x08\x00\x04"), "bad_template_id", 0),
        (_v9_with(b"\x00\x00\x00\x0c\x01\x00\x00\x10\x00\x08\x00\x04"), "template_past_end", 0),
        # all fields of length 0: records of length 0 would loop forever
        (
            _v9_with(b"\x00\x00\x00\x10\x01\x00\x00\x02\x00\x08\x00\x00\x00\x0c\x00\x00"),
            "bad_template",
            0,
        ),
        (_v9_with(b"\x00\x01\x00\x0c\x01\x00\x00\x03\x00\x04\x00\x00"), "bad_options_template", 0),
    ],
)
def test_malformed_datagrams_are_counted_by_reason(
    datagram: bytes, reason: str, records: int
) -> None:
    dec = NetFlowDecoder()
    got = decode(dec, datagram)
    assert len(got) == records
    assert dec.stats.rejected == {reason: 1}
    assert dec.stats.accepted == 0
    assert reason in REJECT_REASONS


def test_configurable_size_limit_and_field_count_limit() -> None:
    dec = NetFlowDecoder(max_datagram=100, max_template_fields=4)
    assert decode(dec, build_v5([TCP, UDP], unix_secs=T0)) == []  # 120 bytes
    assert decode(dec, _v9_with(_TEMPLATE)) == []  # 12 fields
    assert dec.stats.rejected == {"oversize": 1, "template_too_many_fields": 1}


def test_ipfix_template_and_record_errors() -> None:
    dec = NetFlowDecoder()
    # options template with scope count 0
    bad_scope = ipfix_message(
        [b"\x00\x03\x00\x0e\x01\x00\x00\x01\x00\x00\x00\xa0\x00\x08"], export_time=T0
    )
    # enterprise bit on the last field but no room for its enterprise number
    no_pen = ipfix_message([b"\x00\x02\x00\x0c\x01\x00\x00\x01\x80\x01\x00\x04"], export_time=T0)
    # variable-length record whose length byte points past the end of its set
    specs = (Field(8, 4), Field(12, 4), Field(4, 1), Field(82, VARLEN))
    template = ipfix_template_set({256: specs})
    row = bytes(9) + b"\x20" + b"abc"
    truncated = ipfix_message([template, data_set(256, [row], pad=False)], export_time=T0)
    for msg in (bad_scope, no_pen, truncated):
        assert decode(dec, msg) == []
    assert dec.stats.rejected == {
        "bad_options_template": 1,
        "template_past_end": 1,
        "truncated_record": 1,
    }
    # a good record before the broken one is kept
    good = encode_record(specs, {8: bytes(4), 12: bytes(4), 4: 17})
    msg = ipfix_message([template, data_set(256, [good, row], pad=False)], export_time=T0)
    assert len(decode(dec, msg)) == 1


def test_reduced_size_encoding_of_counters() -> None:
    """RFC 7011 6.2: counters may be sent in fewer bytes than their type, e.g. 3 or 5."""
    specs = (Field(8, 4), Field(12, 4), Field(4, 1), Field(1, 3), Field(2, 5), Field(7, 4))
    values: dict[int, int | bytes] = {
        8: bytes(4),
        12: bytes(4),
        4: 6,
        1: 0xABCDEF,
        2: 0x0102030405,
        7: 8080,
    }
    msg = ipfix_message(
        [ipfix_template_set({256: specs}), data_set(256, [encode_record(specs, values)])],
        export_time=T0,
    )
    (got,) = decode(NetFlowDecoder(), msg)
    assert (got.orig_bytes, got.orig_pkts, got.orig_p) == (0xABCDEF, 0x0102030405, 8080)


@pytest.mark.parametrize(
    "row",
    [
        bytes(9) + b"\x01a",  # the second variable-length field has no length byte
        bytes(9) + b"\xff\x00",  # 3-byte length form cut after its first length byte
    ],
)
def test_variable_length_prefix_past_the_end(row: bytes) -> None:
    specs = (Field(8, 4), Field(12, 4), Field(4, 1), Field(82, VARLEN), Field(83, VARLEN))
    msg = ipfix_message(
        [ipfix_template_set({256: specs}), data_set(256, [row], pad=False)], export_time=T0
    )
    dec = NetFlowDecoder()
    assert decode(dec, msg) == []
    assert dec.stats.rejected == {"truncated_record": 1}


def test_enterprise_number_that_pushes_a_template_past_its_set() -> None:
    # two fields fit as 2 x 4 bytes, but the first one's enterprise number eats the second
    body = b"\x01\x00\x00\x02" + b"\x80\x01\x00\x04" + struct.pack(">I", DOC_ENTERPRISE)
    dec = NetFlowDecoder()
    decode(dec, ipfix_message([struct.pack(">HH", 2, 4 + len(body)) + body], export_time=T0))
    assert dec.stats.rejected == {"template_past_end": 1}
    assert dec.template_count == 0


def test_stream_table_is_bounded() -> None:
    dec = NetFlowDecoder(max_streams=2)
    for domain in (1, 2, 3):
        decode(dec, build_v9([UDP], unix_secs=T0, source_id=domain))
    assert dec.stream(EXPORTER, 9, 1) is None
    assert dec.stream(EXPORTER, 9, 3) is not None


def test_a_decoder_bug_costs_one_datagram_not_the_collector(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dec = NetFlowDecoder()

    def broken(*args: object) -> None:
        raise ValueError("bug")

    monkeypatch.setattr(dec, "_v9", broken)
    assert decode(dec, build_v9([UDP], unix_secs=T0)) == []
    assert len(decode(dec, build_v5([UDP], unix_secs=T0))) == 1
    assert dec.stats.rejected == {"internal_error": 1}
    assert dec.stats.accepted == 1


def test_reserved_set_ids_are_skipped() -> None:
    dec = NetFlowDecoder()
    got = decode(dec, _v9_with(b"\x00\x05\x00\x08abcd", _TEMPLATE, _DATA))
    assert len(got) == 1
    assert dec.stats.accepted == 1
    assert dec.counters.skipped_sets == 1


# -- fuzzing -----------------------------------------------------------------------------------


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Turn a decode that never ends into a failure (where the platform has SIGALRM)."""
    if not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError("decode did not finish")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check_outcome(dec: NetFlowDecoder, datagrams: list[bytes]) -> None:
    """Every datagram ends decoded or rejected, and what comes out is a well-formed record."""
    before = dec.stats.accepted + dec.stats.total_rejected
    with time_limit(10.0):
        for datagram in datagrams:
            for r in decode(dec, datagram):
                assert isinstance(r, FlowRecord)
                assert 0 <= r.orig_p <= 0xFFFF
                assert 0 <= r.resp_p <= 0xFFFF
                assert math.isfinite(r.ts)
                assert r.duration is None or r.duration >= 0
                assert r.proto in {"tcp", "udp", "icmp"} or r.proto.isdigit()
    assert dec.stats.accepted + dec.stats.total_rejected == before + len(datagrams)
    assert dec.stats.rejected["internal_error"] == 0
    assert set(dec.stats.rejected) <= set(REJECT_REASONS)
    assert dec.template_count <= dec.max_templates


FUZZ = settings(
    max_examples=250,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@FUZZ
@given(st.lists(st.binary(max_size=600), max_size=4))
def test_fuzz_arbitrary_bytes(datagrams: list[bytes]) -> None:
    check_outcome(NetFlowDecoder(), datagrams)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from([5, 9, 10]), st.binary(max_size=600)), max_size=4))
def test_fuzz_bytes_after_a_valid_version(datagrams: list[tuple[int, bytes]]) -> None:
    check_outcome(NetFlowDecoder(), [struct.pack(">H", v) + body for v, body in datagrams])


def _seeds() -> list[bytes]:
    opt = ipfix_options_template_set(400, [Field(149, 4)], [Field(160, 8), Field(82, VARLEN)])
    return [
        ipfix_message(
            [
                opt,
                data_set(400, [struct.pack(">IQ", 0, T0 * 1000) + b"\x03abc"]),
                ipfix_template_set({256: IPFIX_IPV4_FIELDS, 258: ()}),
                data_set(256, ipfix_rows([TCP, UDP], IPFIX_IPV4_FIELDS, export_time=T0)),
                ipfix_withdrawal_set([2]),
            ],
            export_time=T0,
        ),
        build_v5(FLOWS, unix_secs=T0, sequence=5),
        build_v9(FLOWS, unix_secs=T0, sequence=5),
        _v9_with(
            v9_options_template_flowset(300, [Field(1, 4)], [Field(34, 4)]),
            data_set(300, [bytes(8)]),
            _TEMPLATE,
            _DATA,
        ),
        build_ipfix(FLOWS, export_time=T0, sequence=5),
        build_ipfix([V6, V6], export_time=T0, fields=IPFIX_IPV6_FIELDS, template_id=257),
    ]


SEEDS = _seeds()
HOSTILE = st.sampled_from([0, 1, 2, 3, 4, 5, 0xFF, 0x7FFF, 0xFFFF]) | st.integers(0, 0xFFFF)


def mutate(data: bytearray, kind: str, pos: int, arg: int, junk: bytes) -> None:
    """Bit flip, truncation, 16-bit length/count overwrite or insertion at ``pos``."""
    if kind == "flip" and pos < len(data):
        data[pos] ^= 1 << arg
    elif kind == "truncate":
        del data[pos:]
    elif kind == "length" and pos + 2 <= len(data):
        data[pos : pos + 2] = struct.pack(">H", arg)
    elif kind == "splice":
        data[pos:pos] = junk


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    length_fields = [2] if data[1] in (5, 10) else []
    if data[1] != 5:
        length_fields += [o + 2 for o in set_offsets(bytes(data))]
    if draw(st.booleans()):  # aim at a real length field
        off = draw(st.sampled_from(length_fields))
        data[off : off + 2] = struct.pack(">H", draw(HOSTILE))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "length", "splice"]))
        pos = draw(st.integers(0, len(data)))
        arg = draw(st.integers(0, 7)) if kind == "flip" else draw(HOSTILE)
        mutate(data, kind, pos, arg, draw(st.binary(min_size=1, max_size=16)))
    return bytes(data)


@FUZZ
@given(st.lists(mutated(), min_size=1, max_size=5))
def test_fuzz_mutated_valid_datagrams(datagrams: list[bytes]) -> None:
    dec = NetFlowDecoder(max_templates=8)
    check_outcome(dec, SEEDS)  # learn the templates, so that mutated data meets them
    assert dec.stats.accepted == len(SEEDS)
    check_outcome(dec, datagrams)


def test_seeds_decode_cleanly() -> None:
    dec = NetFlowDecoder()
    counts = [len(decode(dec, s)) for s in SEEDS]
    assert counts == [2, 4, 4, 1, 4, 2]
    assert dec.stats.accepted == len(SEEDS)
    assert not dec.counters.problems
    assert dec.counters.templates_withdrawn == 1  # 256, by the first seed's "withdraw all"
    assert dec.template_count == 5  # v9 256 and 300, IPFIX 256, 257 and options 400


# -- directions: biflows, answers and joined halves ---------------------------------------------

ROUTER = "192.168.1.1"
DNS = FlowRecord(
    ts=T0 - 2.0,
    orig_h="192.168.1.20",
    orig_p=53124,
    resp_h=ROUTER,
    resp_p=53,
    proto="udp",
    duration=0.02,
    orig_bytes=71,
    orig_pkts=1,
    resp_bytes=187,
    resp_pkts=1,
    tcp_flags=0,
    orig_mac="aa:bb:cc:00:11:22",
)
HTTPS = dataclasses.replace(TCP, resp_bytes=987_654, resp_pkts=120)
DHCP_OFFER = FlowRecord(  # the router's answer to a DHCP request: 67 -> 68
    ts=T0 - 1.0,
    orig_h=ROUTER,
    orig_p=67,
    resp_h="192.168.1.77",
    resp_p=68,
    proto="udp",
    duration=0.0,
    orig_bytes=342,
    orig_pkts=1,
    tcp_flags=0,
    orig_mac="02:00:00:00:00:01",  # the router's MAC: must not name the originator
)


def whole(record: FlowRecord, uid: str, **changes: object) -> FlowRecord:
    """``record`` as one connection record with both sides' counters (what Zeek would log)."""
    fields: dict[str, object] = {
        "uid": uid,
        "orig_ip_bytes": record.orig_bytes,
        "resp_ip_bytes": record.resp_bytes,
        **changes,
    }
    return dataclasses.replace(record, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("proto", "sport", "dport", "direction", "who"),
    [
        (17, 53124, 53, None, "source"),  # DNS query
        (17, 53, 53124, None, "destination"),  # its answer
        (17, 67, 68, None, "destination"),  # DHCP offer/ack: 68 is a client port
        (17, 68, 67, None, "source"),
        (17, 547, 546, None, "destination"),  # DHCPv6
        (6, 443, 51000, None, "destination"),
        (6, 51000, 8883, None, "source"),  # MQTT over TLS: a registered service
        (6, 1883, 40000, None, "destination"),
        (17, 123, 123, None, None),  # NTP symmetric: no telling
        (17, 5353, 5353, None, None),
        (17, 40000, 50000, None, None),  # both ephemeral: P2P, RTP
        (6, 8080, 0, None, None),  # port 0 is nobody's client port
        (47, 0, 0, None, None),  # GRE
        (1, 8, 0, None, "source"),  # echo request (type in the source port)
        (1, 0, 0, None, "destination"),  # echo reply
        (58, 129, 0, None, "destination"),  # ICMPv6 echo reply
        (1, 3, 3, None, None),  # unreachable
        (6, 443, 51000, 1, "source"),  # biflowDirection initiator overrides the ports
        (6, 51000, 443, 2, "destination"),  # reverseInitiator
        (6, 51000, 443, 0, "source"),  # arbitrary: the ports decide
    ],
)
def test_initiator_rule(
    proto: int, sport: int, dport: int, direction: int | None, who: str | None
) -> None:
    assert initiator(proto, sport, dport, direction) == who


def test_ipfix_biflow_of_a_dns_query_is_one_record_with_both_byte_counts() -> None:
    dec = NetFlowDecoder()
    datagram = build_ipfix([DNS], export_time=T0, sequence=7, fields=IPFIX_BIFLOW_FIELDS)
    assert b"\x80\x01\x00\x08\x00\x00\x72\x79" in datagram  # reverseOctetDeltaCount, PEN 29305
    (got,) = decode(dec, datagram)
    assert got == whole(DNS, f"nf10/{EXPORTER}/0/7/0")
    assert (got.orig_bytes, got.resp_bytes, got.orig_pkts, got.resp_pkts) == (71, 187, 1, 1)
    assert dec.counters.biflows == 1
    assert dec.counters.answers == 0
    assert dec.joins.joined == 0  # nothing to join: the exporter did it


def test_ipfix_biflow_with_the_server_as_source_is_turned_round() -> None:
    """A biflow whose source is the server (reverseInitiator, or ports saying so) is turned."""
    served = dataclasses.replace(
        reply_of(HTTPS), orig_bytes=HTTPS.resp_bytes, resp_bytes=HTTPS.orig_bytes
    )
    served.orig_pkts, served.resp_pkts = HTTPS.resp_pkts, HTTPS.orig_pkts
    for fields, extra in (
        (IPFIX_BIFLOW_FIELDS, {}),
        (IPFIX_BIFLOW_DIRECTION_FIELDS, {Field(239, 1): b"\x02"}),
    ):
        dec = NetFlowDecoder()
        msg = build_ipfix([served], export_time=T0, fields=fields, extra=extra)
        (got,) = decode(dec, msg)
        assert got == whole(HTTPS, f"nf10/{EXPORTER}/0/0/0", orig_mac=None)
        assert dec.counters.answers == 1
    # biflowDirection 1 (initiator) keeps the exported orientation even against the ports
    msg = build_ipfix(
        [served],
        export_time=T0,
        fields=IPFIX_BIFLOW_DIRECTION_FIELDS,
        extra={Field(239, 1): b"\x01"},
    )
    (got,) = decode(NetFlowDecoder(), msg)
    assert (got.orig_h, got.orig_p) == (HTTPS.resp_h, 443)


def test_initiator_and_responder_counters_make_one_record() -> None:
    """Cisco NSEL style (initiatorOctets/responderOctets): the source is the initiator."""
    msg = build_ipfix([HTTPS], export_time=T0, fields=IPFIX_INITIATOR_FIELDS)
    (got,) = decode(NetFlowDecoder(), msg)
    # 231/232 count payload bytes (Zeek's orig_bytes); the template has no IP-layer octets
    assert got == whole(
        HTTPS, f"nf10/{EXPORTER}/0/0/0", orig_mac=None, orig_ip_bytes=None, resp_ip_bytes=None
    )


def test_v9_forward_and_reverse_records_of_one_tcp_connection_join() -> None:
    dec = NetFlowDecoder()
    reply = reply_of(HTTPS, delay=0.05)
    got = decode(dec, build_v9([HTTPS, reply, UDP], unix_secs=T0, sequence=11))
    assert got == [
        whole(HTTPS, f"nf9/{EXPORTER}/0/11/0"),  # the forward record's uid, both counters
        expected(UDP, f"nf9/{EXPORTER}/0/11/2"),  # unknown direction (5353 -> 5353), alone
    ]
    assert dec.joins.joined == 1
    assert dec.counters.answers == 1
    assert dec.counters.records == 2
    # reply first works the same
    got = decode(NetFlowDecoder(), build_v9([reply, HTTPS], unix_secs=T0, sequence=11))
    assert got == [whole(HTTPS, f"nf9/{EXPORTER}/0/11/1")]


def test_halves_in_two_datagrams_join_within_the_hold_time() -> None:
    dec = NetFlowDecoder(join_hold_s=5.0)
    assert dec.decode(build_v9([HTTPS], unix_secs=T0, sequence=0), EXPORTER, T0) == []
    assert dec.pending_joins == 1
    reply = reply_of(HTTPS, delay=0.05)
    got = dec.decode(build_v9([reply], unix_secs=T0 + 1, sequence=1), EXPORTER, T0 + 1.0)
    assert got == [whole(HTTPS, f"nf9/{EXPORTER}/0/0/0")]
    assert dec.pending_joins == 0
    # ICMP echo: request and reply join as Zeek logs a ping (type 8, code 0)
    ping = dataclasses.replace(ICMP, resp_bytes=168, resp_pkts=2)
    assert dec.decode(build_v5([ping], unix_secs=T0, sequence=0), EXPORTER, T0 + 2) == []
    got = dec.decode(build_v5([reply_of(ping)], unix_secs=T0, sequence=1), EXPORTER, T0 + 3)
    assert got == [whole(ping, f"nf5/{EXPORTER}/0/0/0", orig_mac=None)]
    # mirrored records of unknown direction (NTP 123 <-> 123): the earlier one initiated
    ntp = FlowRecord(
        ts=T0 - 5.0, orig_h="192.168.1.20", orig_p=123, resp_h="162.159.200.1", resp_p=123,
        proto="udp", duration=0.05, orig_bytes=76, orig_pkts=1, resp_bytes=76, resp_pkts=1,
        tcp_flags=0,
    )  # fmt: skip
    answer = reply_of(ntp, delay=0.03)
    assert dec.decode(build_v5([answer], unix_secs=T0, sequence=2), EXPORTER, T0 + 4) == []
    got = dec.decode(build_v5([ntp], unix_secs=T0, sequence=3), EXPORTER, T0 + 4)
    assert got == [whole(ntp, f"nf5/{EXPORTER}/0/3/0", orig_mac=None)]
    assert dec.joins.joined == 3


def test_a_lone_reply_is_the_initiators_answered_traffic() -> None:
    """The forward record was lost: the reply is turned round onto its destination."""
    dec = NetFlowDecoder(join_hold_s=5.0)
    reply = reply_of(DNS)
    assert dec.decode(build_v9([reply], unix_secs=T0, sequence=0), EXPORTER, T0) == []
    assert dec.expire(T0 + 4.9) == []
    (got,) = dec.expire(T0 + 5.0)
    assert (got.orig_h, got.orig_p, got.resp_h, got.resp_p) == (DNS.orig_h, 53124, ROUTER, 53)
    assert (got.orig_bytes, got.orig_pkts, got.resp_bytes, got.resp_pkts) == (None, None, 187, 1)
    assert got.orig_mac is None
    assert dec.joins.lone_answers == 1
    assert dec.joins.expired == 1
    assert dec.counters.records == 1


def test_a_dhcp_server_reply_is_not_the_routers_initiation() -> None:
    got = decode(NetFlowDecoder(), build_v9([DHCP_OFFER], unix_secs=T0, sequence=0))
    assert [(r.orig_h, r.orig_p, r.resp_h, r.resp_p) for r in got] == [
        ("192.168.1.77", 68, ROUTER, 67)
    ]
    assert got[0].orig_mac is None  # the router's MAC does not name the client
    assert got[0].resp_bytes == 342
    assert got[0].orig_bytes is None
    # broadcast offers too: the router is the responder, never the originator
    broadcast = dataclasses.replace(DHCP_OFFER, resp_h="255.255.255.255")
    (got_b,) = decode(NetFlowDecoder(), build_v5([broadcast], unix_secs=T0))
    assert (got_b.orig_h, got_b.resp_h, got_b.resp_p) == ("255.255.255.255", ROUTER, 67)


def test_the_join_table_is_bounded_and_counts_what_it_released() -> None:
    dec = NetFlowDecoder(join_hold_s=60.0, max_join_pending=3)
    flows = [dataclasses.replace(HTTPS, orig_p=51000 + i) for i in range(5)]
    got = dec.decode(build_v9(flows, unix_secs=T0), EXPORTER, T0)
    assert [r.orig_p for r in got] == [51000, 51001]  # the oldest, pushed out
    assert dec.joins.evicted == 2
    assert dec.pending_joins == dec.joins.pending == 3
    # a reply whose forward record was evicted comes out alone, turned round
    got = dec.decode(build_v9([reply_of(flows[0])], unix_secs=T0, sequence=1), EXPORTER, T0)
    assert [r.orig_p for r in got] == [51002]  # evicted to make room for the reply
    assert [(r.orig_p, r.resp_bytes) for r in dec.flush()] == [
        (51003, None),
        (51004, None),
        (51000, HTTPS.resp_bytes),
    ]
    assert dec.joins.lone_answers == 1
    assert dec.joins.lone_forward == 5
    assert dec.pending_joins == 0


def test_halves_far_apart_in_time_are_not_joined() -> None:
    """A new connection reusing the ports is not the old one's answer."""
    late = reply_of(DNS, delay=600.0)
    got = decode(NetFlowDecoder(), build_v9([DNS, late], unix_secs=T0 + 700))
    assert [(r.orig_bytes, r.resp_bytes) for r in got] == [(71, None), (None, 187)]
    assert {r.orig_h for r in got} == {DNS.orig_h}
