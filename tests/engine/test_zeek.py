"""Zeek conn.log readers: TSV headers, IoT-23 quirks, JSON lines, CSV extracts, tailing, junk."""

from __future__ import annotations

import gzip
import json
import math
import os
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from giot_engine.records import FlowRecord, ParseStats
from giot_engine.zeek import (
    CONN_FIELDS,
    IOT23_FIELDS,
    FlowRow,
    ZeekLogParser,
    ZeekSchema,
    iter_flow_rows,
    parse_csv_line,
    parse_json_line,
    parse_tsv_line,
    read_flows,
)

DATA = Path(os.environ.get("GIOT_DATA", Path(__file__).parents[2] / ".." / "shared" / "data"))
IOT23 = DATA / "iot23"

HEADER = [
    "#separator \\x09",
    "#set_separator\t,",
    "#empty_field\t(empty)",
    "#unset_field\t-",
    "#path\tconn",
    "#open\t2024-05-01-10-00-00",
    "#fields\t" + "\t".join(CONN_FIELDS),
    "#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tstring\tinterval\tcount\tcount\tstring"
    "\tbool\tbool\tcount\tstring\tcount\tcount\tcount\tcount\tset[string]",
]
ROW_DNS = (
    "1714557600.123456\tCAbc123XyZ\t192.168.1.10\t53211\t192.168.1.1\t53\tudp\tdns\t0.012345"
    "\t40\t56\tSF\tT\tT\t0\tDd\t1\t68\t1\t84\t(empty)"
)
ROW_SYN = (
    "1714557601.5\tCdef456\tfe80::1\t443\t2001:db8::2\t8443\tTCP\t-\t-\t-\t-\tS0\t-\t-\t0\tS"
    "\t2\t120\t0\t0\t-"
)


def _conn_log() -> str:
    return "\n".join([*HEADER, ROW_DNS, ROW_SYN, "#close\t2024-05-01-11-00-00"]) + "\n"


def _iot23_lines() -> list[str]:
    head = "\t".join(IOT23_FIELDS[:20]) + "\t" + "   ".join(IOT23_FIELDS[20:])
    cells = "1545403816.962094 CrDn63WjJEmrWGjqf 192.168.1.195 41040 185.244.25.235 80 tcp -"
    cells += " 3.139211 0 0 S0 - - 0 S 3 180 0 0"
    base = "\t".join(cells.split())
    return [
        "#separator \\x09",
        "#unset_field\t-",
        "#fields\t" + head,
        base + "\t-   Benign   -",
        base.replace("CrDn63WjJEmrWGjqf", "C2") + "\t-   Malicious   C&C",
        base.replace("CrDn63WjJEmrWGjqf", "C3") + "\t(empty)   benign   -",
        base.replace("CrDn63WjJEmrWGjqf", "C4") + "\t-   MALICIOUS   PartOfAHorizontalPortScan",
    ]


def test_conn_log_with_headers_exact_values(tmp_path: Path) -> None:
    path = tmp_path / "conn.log"
    path.write_text(_conn_log())
    stats = ParseStats()
    flows = list(read_flows(path, stats))
    assert stats.accepted == 2
    assert stats.total_rejected == 0
    assert flows[0] == FlowRecord(
        ts=1714557600.123456,
        orig_h="192.168.1.10",
        orig_p=53211,
        resp_h="192.168.1.1",
        resp_p=53,
        proto="udp",
        uid="CAbc123XyZ",
        service="dns",
        duration=0.012345,
        orig_bytes=40,
        resp_bytes=56,
        conn_state="SF",
        history="Dd",
        orig_pkts=1,
        resp_pkts=1,
        orig_ip_bytes=68,
        resp_ip_bytes=84,
    )
    syn = flows[1]
    assert (syn.orig_h, syn.orig_p, syn.resp_h, syn.resp_p) == ("fe80::1", 443, "2001:db8::2", 8443)
    assert syn.proto == "tcp"  # lower-cased
    assert syn.service is None
    assert syn.duration is None
    assert syn.orig_bytes is None
    assert syn.resp_bytes is None
    assert (syn.orig_pkts, syn.orig_ip_bytes, syn.resp_pkts, syn.resp_ip_bytes) == (2, 120, 0, 0)
    assert syn.label is None
    assert syn.detailed_label is None


def test_iot23_three_space_quirk_no_trailing_newline(tmp_path: Path) -> None:
    path = tmp_path / "x.conn.log.labeled"
    path.write_text("\n".join(_iot23_lines()))  # no trailing newline, no #close
    stats = ParseStats()
    flows = list(read_flows(path, stats))
    assert stats.accepted == 4
    assert [f.uid for f in flows] == ["CrDn63WjJEmrWGjqf", "C2", "C3", "C4"]
    assert [f.label for f in flows] == ["benign", "malicious", "benign", "malicious"]
    assert [f.detailed_label for f in flows] == [None, "C&C", None, "PartOfAHorizontalPortScan"]
    first = flows[0]
    assert (first.ts, first.duration, first.orig_pkts, first.orig_ip_bytes) == (
        1545403816.962094,
        3.139211,
        3,
        180,
    )


def test_headerless_lines_guess_layout_from_width() -> None:
    stats = ParseStats()
    conn = list(read_flows([ROW_DNS, ROW_SYN], stats))
    assert [f.uid for f in conn] == ["CAbc123XyZ", "Cdef456"]
    iot = [line for line in _iot23_lines() if not line.startswith("#")]
    flows = list(read_flows(iot, stats))
    assert [f.label for f in flows] == ["benign", "malicious", "benign", "malicious"]
    tabs_only = iot[1].replace("   ", "\t")
    assert parse_tsv_line(tabs_only).record is not None
    assert parse_tsv_line(tabs_only).record.detailed_label == "C&C"  # type: ignore[union-attr]
    assert parse_tsv_line("1\t2\t3").reason == "no_schema"
    assert stats.accepted == 6


def test_json_lines_flat_nested_and_iso_ts(tmp_path: Path) -> None:
    lines = [
        {
            "ts": 1714557600.25,
            "uid": "CJ1",
            "id.orig_h": "10.0.0.5",
            "id.orig_p": 5353,
            "id.resp_h": "224.0.0.251",
            "id.resp_p": 5353,
            "proto": "udp",
            "service": "dns",
            "duration": 1.5,
            "orig_bytes": 100,
            "conn_state": "S0",
            "orig_l2_addr": "aa:bb:cc:dd:ee:ff",
        },
        {
            "ts": "2024-05-01T10:00:00.500000Z",
            "uid": "CJ2",
            "id": {"orig_h": "10.0.0.5", "orig_p": 1, "resp_h": "10.0.0.1", "resp_p": 80},
            "proto": "tcp",
            "label": "Malicious",
            "detailed-label": "C&C",
        },
    ]
    path = tmp_path / "conn.json"
    path.write_text("".join(json.dumps(obj) + "\n" for obj in lines))
    stats = ParseStats()
    flows = list(read_flows(path, stats))
    assert stats.accepted == 2
    first, second = flows
    assert (first.ts, first.uid, first.orig_p, first.resp_h, first.service) == (
        1714557600.25,
        "CJ1",
        5353,
        "224.0.0.251",
        "dns",
    )
    assert (first.duration, first.orig_bytes, first.resp_bytes) == (1.5, 100, None)
    assert first.orig_mac == "aa:bb:cc:dd:ee:ff"
    assert second.ts == 1714557600.5  # 2024-05-01T10:00:00.5Z
    assert (second.orig_h, second.resp_p, second.label, second.detailed_label) == (
        "10.0.0.5",
        80,
        "malicious",
        "C&C",
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"ts": NaN, "uid": "C1", "id.orig_h": "1.1.1.1", "id.orig_p": 1, '
         '"id.resp_h": "1.1.1.2", "id.resp_p": 2, "proto": "udp"}', "bad_ts"),
        ('{"ts": 1, "uid": "C1", "id.orig_h": "1.1.1.1", "id.orig_p": true, '
         '"id.resp_h": "1.1.1.2", "id.resp_p": 2, "proto": "udp"}', "bad_port"),
        ('{"ts": 1, "uid": "C1", "id.orig_h": "1.1.1.1", "id.orig_p": 1, "id.resp_h": "1.1.1.2", '
         '"id.resp_p": 2, "proto": "udp", "orig_bytes": 99999999999999999999999}', "bad_count"),
        ('{"ts": 1, "uid": "C1", "id.orig_h": "1.1.1.1", "id.orig_p": 1, "id.resp_h": "1.1.1.2", '
         '"id.resp_p": 2, "proto": "udp", "duration": -0.5}', "bad_duration"),
        ('{"ts": "yesterday", "uid": "C1", "id.orig_h": "1.1.1.1", "id.orig_p": 1, '
         '"id.resp_h": "1.1.1.2", "id.resp_p": 2, "proto": "udp"}', "bad_ts"),
        ('{"uid": "C9", "ts": 1, "id.orig_h": "1.1.1.1", ', "bad_json"),
        ("[1, 2, 3]", "bad_json"),
        ("{" * 100_000, "too_long"),
    ],
)  # fmt: skip
def test_json_rejects(text: str, reason: str) -> None:
    row = parse_json_line(text)
    assert row.record is None
    assert row.reason == reason


def test_json_reject_keeps_uid_even_when_undecodable() -> None:
    assert parse_json_line('{"uid": "C9", "ts": 1, "id.orig_h": ').uid == "C9"


def _csv_text(newline: str = "\n") -> str:
    rows = [
        ",".join(IOT23_FIELDS),
        "1540469303,CGm6jB4dXK71ZDWUDh,192.168.1.132,58687,216.239.35.4,123,udp,-,0.114184,48,48,"
        "SF,-,-,0,Dd,1,76,1,76,-,benign,-",
        '1540469304,Cq2,192.168.1.132,1,10.0.0.1,443,tcp,"ssl,http",1.5,1,2,SF,-,-,0,ShAD,3,4,5,6,'
        "(empty),Malicious,C&C-Torii",
    ]
    return newline.join(rows)


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_csv_extract(tmp_path: Path, newline: str) -> None:
    path = tmp_path / "x.csv"
    path.write_bytes(_csv_text(newline).encode())
    stats = ParseStats()
    flows = list(read_flows(path, stats))
    assert stats.accepted == 2
    assert stats.total_rejected == 0
    first, second = flows
    assert (first.ts, first.uid, first.resp_p, first.duration, first.history) == (
        1540469303.0,
        "CGm6jB4dXK71ZDWUDh",
        123,
        0.114184,
        "Dd",
    )
    assert (first.label, first.detailed_label) == ("benign", None)
    assert second.service == "ssl,http"  # quoted field with the separator inside
    assert (second.label, second.detailed_label) == ("malicious", "C&C-Torii")


def test_parse_csv_line_without_header_uses_iot23_columns() -> None:
    row = parse_csv_line(_csv_text().splitlines()[1])
    assert row.record is not None
    assert row.record.resp_h == "216.239.35.4"


def _mutate(field: int, value: str, base: str = ROW_DNS) -> str:
    cells = base.split("\t")
    cells[field] = value
    return "\t".join(cells)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (ROW_DNS + "\textra", "column_count"),
        ("\t".join(ROW_DNS.split("\t")[:10]), "column_count"),
        (_mutate(3, "http"), "bad_port"),
        (_mutate(3, "65536"), "bad_port"),
        (_mutate(5, "-1"), "bad_port"),
        (_mutate(5, "-"), "bad_port"),
        (_mutate(5, "٥٣"), "bad_port"),  # Arabic-Indic digits that int() would accept
        (_mutate(5, "5_3"), "bad_port"),
        (_mutate(8, "nan"), "bad_duration"),
        (_mutate(8, "inf"), "bad_duration"),
        (_mutate(8, "1e999"), "bad_duration"),
        (_mutate(8, "-0.5"), "bad_duration"),
        (_mutate(9, "-5"), "bad_count"),
        (_mutate(9, str(2**63)), "bad_count"),
        (_mutate(9, "9" * 5000), "bad_count"),
        (_mutate(9, "1.5"), "bad_count"),
        (_mutate(0, "yesterday"), "bad_ts"),
        (_mutate(0, "NaN"), "bad_ts"),
        (_mutate(0, "1e300"), "bad_ts"),
        (_mutate(2, "999.1.1.1"), "bad_addr"),
        (_mutate(2, "192.168.1.10 "), "bad_addr"),
        (_mutate(4, "héllo"), "bad_addr"),
        (_mutate(6, "t c p"), "bad_proto"),
        (_mutate(1, "Cé"), "bad_uid"),
        (_mutate(7, "dns\x07"), "bad_string"),
        (_mutate(7, "dns\x00"), "binary"),
        (_mutate(7, "d\ufffdns"), "binary"),
        (ROW_DNS + "x" * 70_000, "too_long"),
    ],
)
def test_tsv_rejects_with_stable_reasons(line: str, reason: str) -> None:
    schema = ZeekSchema(CONN_FIELDS)
    row = parse_tsv_line(line, schema)
    assert row == FlowRow(row.uid, None, reason)


def test_rejected_rows_keep_uid_and_file_order() -> None:
    lines = [*HEADER, ROW_DNS, _mutate(3, "http"), ROW_SYN, "garbage", _mutate(1, "Cé")]
    stats = ParseStats()
    rows = list(iter_flow_rows(lines, stats))
    assert [(r.uid, r.record is not None, r.reason) for r in rows] == [
        ("CAbc123XyZ", True, None),
        ("CAbc123XyZ", False, "bad_port"),
        ("Cdef456", True, None),
        (None, False, "column_count"),
        (None, False, "bad_uid"),
    ]
    assert stats.accepted == 2
    assert stats.rejected == Counter({"bad_port": 1, "column_count": 1, "bad_uid": 1})


def test_non_conn_schema_rejects_lines() -> None:
    rows = list(iter_flow_rows(["#fields\tts\tuid\tquery", "1.0\tC1\texample.com"]))
    assert rows == [FlowRow("C1", None, "bad_schema")]


def test_custom_separator_and_unset_markers() -> None:
    lines = [
        "#separator \\x2c",
        "#unset_field,NA",
        "#fields," + ",".join(CONN_FIELDS),
        ROW_DNS.replace("\t", ",").replace("(empty)", "NA").replace(",SF,", ",NA,"),
    ]
    (flow,) = read_flows(lines)
    assert flow.conn_state is None
    assert flow.resp_bytes == 56


def test_gzip_log(tmp_path: Path) -> None:
    path = tmp_path / "conn.log.gz"
    with gzip.open(path, "wt") as handle:
        handle.write(_conn_log())
    assert [f.uid for f in read_flows(path)] == ["CAbc123XyZ", "Cdef456"]


# --- incremental / tail parser -----------------------------------------------------------


def test_incremental_parser_partial_lines_and_flush() -> None:
    text = "\n".join(_iot23_lines())  # ends without a newline, as IoT-23 files do
    stats = ParseStats()
    parser = ZeekLogParser(stats)
    rows: list[FlowRow] = []
    for start in range(0, len(text), 37):
        rows += parser.feed(text[start : start + 37])
    assert len(rows) == 3  # the last line waits for its newline ...
    rows += parser.flush()  # ... until end of file
    assert [r.record.uid for r in rows if r.record] == ["CrDn63WjJEmrWGjqf", "C2", "C3", "C4"]
    assert stats.accepted == 4


def test_incremental_parser_bytes_split_inside_utf8() -> None:
    line = _mutate(7, "dnsé") + "\n"  # non-ASCII service: rejected, but as one line
    data = ("\n".join(HEADER) + "\n" + line + ROW_DNS + "\n").encode()
    cut = data.index("é".encode()) + 1  # split between the two bytes of é
    parser = ZeekLogParser()
    rows = parser.feed(data[:cut]) + parser.feed(data[cut:]) + parser.flush()
    assert [r.reason for r in rows] == ["bad_string", None]


def test_rotation_new_fields_header_resets_schema() -> None:
    parser = ZeekLogParser()
    first = parser.feed("\n".join([*HEADER, ROW_DNS]) + "\n#close\t2024-05-01-11-00-00\n")
    assert [r.record.uid for r in first if r.record] == ["CAbc123XyZ"]
    # After rotation the new file has the columns in another order, plus the MAC column.
    fields = ["uid", "ts", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto"]
    second = parser.feed(
        "#separator \\x09\n#fields\t" + "\t".join([*fields, "orig_l2_addr"]) + "\n"
        "CNew\t1714560000.0\t10.1.1.1\t1000\t10.1.1.2\t22\ttcp\t00:11:22:33:44:55\n"
    )
    (row,) = second
    assert row.record is not None
    assert (row.record.uid, row.record.ts, row.record.resp_p) == ("CNew", 1714560000.0, 22)
    assert row.record.orig_mac == "00:11:22:33:44:55"
    # A line of the old layout is now rejected, with its reason.
    (old,) = parser.feed(ROW_DNS + "\n")
    assert old.reason == "column_count"


def test_header_arriving_after_data_and_reset() -> None:
    parser = ZeekLogParser()
    (guessed,) = parser.feed(ROW_DNS + "\n")  # headerless: 21 columns -> default conn.log
    assert guessed.record is not None
    parser.feed("#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\n")
    (short,) = parser.feed("1.0\tC1\t1.2.3.4\t1\t5.6.7.8\t2\ticmp\n")
    assert short.record is not None
    assert short.record.proto == "icmp"
    parser.feed("partial line without newline")
    parser.reset()
    assert parser.schema is None
    assert parser.flush() == []


# --- fuzzing ------------------------------------------------------------------------------

VALID_LINES = [ROW_DNS, ROW_SYN, *[line for line in _iot23_lines() if not line.startswith("#")]]


def _is_flow_line(line: str) -> bool:
    """Independent restatement of which lines are flows (not headers, comments or blanks)."""
    text = line.rstrip("\r\n")
    if not text.strip() or text.startswith("#"):
        return False
    first = text.split("\t" if "\t" in text else ",")[0].strip()
    return not (text.startswith("ts") and "id.orig_h" in text and first == "ts")


junk = st.one_of(
    st.text(max_size=80),
    st.binary(max_size=80).map(lambda b: b.decode("latin-1")),
    st.integers(min_value=-(2**80), max_value=2**80).map(str),
    st.sampled_from(["nan", "-inf", "1e999", "", "-", "(empty)", "\x00", "\ufffd", "☃", "\t"]),
)


@st.composite
def mutated_line(draw: st.DrawFn) -> str:
    line = draw(st.sampled_from(VALID_LINES))
    action = draw(st.sampled_from(["keep", "truncate", "field", "drop", "dup", "junk"]))
    cells = line.split("\t")
    if action == "truncate":
        return line[: draw(st.integers(0, len(line)))]
    if action == "field":
        cells[draw(st.integers(0, len(cells) - 1))] = draw(junk)
    elif action == "drop":
        del cells[draw(st.integers(0, len(cells) - 1))]
    elif action == "dup":
        cells.insert(draw(st.integers(0, len(cells))), draw(junk))
    elif action == "junk":
        return draw(junk)
    return "\t".join(cells)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    header=st.sampled_from([[], HEADER, _iot23_lines()[:3]]),
    lines=st.lists(mutated_line(), max_size=30),
)
def test_fuzz_every_line_accounted_for(header: list[str], lines: list[str]) -> None:
    stats = ParseStats()
    rows = list(iter_flow_rows([*header, *lines], stats))
    flow_lines = [line for line in lines if _is_flow_line(line)]
    assert len(rows) == len(flow_lines)
    assert stats.accepted + stats.total_rejected == len(flow_lines)
    for row in rows:
        assert (row.record is None) != (row.reason is None)
        if row.reason is not None:
            assert row.reason.isidentifier()  # short stable token, not a message
        else:
            record = row.record
            assert record is not None
            assert math.isfinite(record.ts)
            assert 0 <= record.orig_p <= 65535
            assert 0 <= record.resp_p <= 65535
            assert record.duration is None or (
                math.isfinite(record.duration) and record.duration >= 0
            )
            assert record.label in (None, "benign", "malicious")
    assert stats.rejected.get("internal_error", 0) == 0


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children)
    ),
    max_leaves=10,
)
JSON_KEYS = "ts uid id.orig_h id.orig_p id.resp_h id.resp_p proto duration id orig_bytes label"
json_keys = st.sampled_from([*JSON_KEYS.split(), "service", "detailed-label"])


@settings(max_examples=300, deadline=None)
@given(obj=st.dictionaries(json_keys, json_values, max_size=12))
def test_fuzz_json_objects_never_raise(obj: dict[str, object]) -> None:
    row = parse_json_line(json.dumps(obj))
    assert (row.record is None) != (row.reason is None)


@settings(max_examples=100, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=12), as_bytes=st.booleans())
def test_fuzz_chunking_does_not_change_rows(cuts: list[int], as_bytes: bool) -> None:
    text = _conn_log() + "\n".join([*VALID_LINES[:2], "bad\tline", '{"uid": 1}', "é"])
    whole = list(iter_flow_rows(text.split("\n")))
    data: str | bytes = text.encode() if as_bytes else text
    parser = ZeekLogParser()
    rows: list[FlowRow] = []
    previous = 0
    for cut in sorted({min(c, len(data)) for c in cuts}):
        rows += parser.feed(data[previous:cut])
        previous = cut
    rows += parser.feed(data[previous:]) + parser.flush()
    assert rows == whole


# --- real data (IoT-23) -------------------------------------------------------------------

README_COUNTS = {
    "zeek/CTU-IoT-Malware-Capture-34-1.conn.log.labeled": {
        ("malicious", "DDoS"): 14394,
        ("malicious", "C&C"): 6706,
        ("benign", None): 1923,
        ("malicious", "PartOfAHorizontalPortScan"): 122,
    },
    "csv/CTU-IoT-Malware-Capture-34-1-labeled.csv": {
        ("malicious", "DDoS"): 14394,
        ("malicious", "C&C"): 6706,
        ("benign", None): 1923,
        ("malicious", "PartOfAHorizontalPortScan"): 122,
    },
    "csv/CTU-IoT-Malware-Capture-20-1-labeled.csv": {
        ("benign", None): 3193,
        ("malicious", "C&C-Torii"): 16,
    },
    "csv/CTU-Honeypot-Capture-4-1-labeled.csv": {("benign", None): 452},
    "csv/CTU-Honeypot-Capture-7-1-labeled.csv": {("benign", None): 130},
}
TOTALS = {"34-1": 23145, "20-1": 3209, "4-1": 452, "7-1": 130}


def _real(name: str) -> Path:
    path = IOT23 / name
    if not path.exists():
        pytest.skip(f"../shared/data/iot23/{name} absent (set GIOT_DATA to the data folder)")
    return path


_CACHE: dict[str, tuple[list[FlowRecord], ParseStats]] = {}


def _load(name: str) -> tuple[list[FlowRecord], ParseStats]:
    if name not in _CACHE:
        stats = ParseStats()
        _CACHE[name] = (list(read_flows(_real(name), stats)), stats)
    return _CACHE[name]


@pytest.mark.parametrize("name", sorted(README_COUNTS))
def test_real_iot23_counts_and_labels(name: str) -> None:
    flows, stats = _load(name)
    total = next(v for k, v in TOTALS.items() if f"-{k}" in name)
    assert len(flows) == total
    assert stats.accepted == total
    assert stats.total_rejected == 0
    assert Counter((f.label, f.detailed_label) for f in flows) == README_COUNTS[name]
    assert len({f.uid for f in flows}) == total


def test_real_iot23_csv_and_zeek_agree_field_by_field() -> None:
    zeek, _ = _load("zeek/CTU-IoT-Malware-Capture-34-1.conn.log.labeled")
    csv_flows, _ = _load("csv/CTU-IoT-Malware-Capture-34-1-labeled.csv")
    assert len(zeek) == len(csv_flows)
    mismatches = [i for i, (a, b) in enumerate(zip(zeek, csv_flows, strict=True)) if a != b]
    assert mismatches == []
    main = Counter(f.orig_h for f in zeek).most_common(1)[0][0]
    assert main == "192.168.1.195"


def test_embedded_newline_with_quote_is_rejected_not_crashed() -> None:
    """A line holding a newline and a quote (found by hypothesis) is counted as a bad line."""
    stats = ParseStats()
    rows = list(iter_flow_rows(['\n"'], stats))
    assert stats.rejected.get("internal_error", 0) == 0
    assert stats.accepted + stats.total_rejected == len(rows) == 1
