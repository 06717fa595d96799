"""Zeek conn.log readers (TSV, JSON lines, IoT-23 CSV extracts) producing ``FlowRecord``s.

Collectors tail live logs and benchmarks replay captures, so everything here streams line by line
and never raises on input: a bad line becomes a row with a short, stable rejection reason (counted
in ``ParseStats``) so that callers can still emit one output row per input flow, in file order.

Rejection reasons: ``column_count``, ``no_schema`` (headerless and neither 21 nor 23 columns),
``bad_schema`` (``#fields`` of a non-conn log), ``binary``, ``too_long``, ``bad_json``, ``bad_ts``,
``bad_uid``, ``bad_addr``, ``bad_port``, ``bad_proto``, ``bad_duration``, ``bad_count``,
``bad_string``, ``bad_label``.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import ipaddress
import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

from .records import FlowRecord, ParseStats

CONN_FIELDS: tuple[str, ...] = (
    "ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto", "service",
    "duration", "orig_bytes", "resp_bytes", "conn_state", "local_orig", "local_resp",
    "missed_bytes", "history", "orig_pkts", "orig_ip_bytes", "resp_pkts", "resp_ip_bytes",
    "tunnel_parents",
)  # fmt: skip
"""The 21 columns of a default Zeek conn.log, assumed for headerless files of that width."""

IOT23_FIELDS: tuple[str, ...] = (*CONN_FIELDS, "label", "detailed-label")
"""IoT-23's ``conn.log.labeled`` / CSV columns: conn.log plus the two evaluation-only labels."""

REQUIRED_FIELDS = frozenset({"ts", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto"})
INT64_MAX = 2**63 - 1
MAX_LINE = 1 << 16  # longer lines are junk (a conn.log line is ~200 bytes); cap work and memory
TS_MAX = 1e11  # year 5138: anything later is a corrupt timestamp, not a flow

_UNSET_VALUES = frozenset({"-", "(empty)", ""})
_FLOAT_RE = re.compile(r"[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\.[0-9]+")
_UID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_JSON_UID_RE = re.compile(r'"uid"\s*:\s*"([A-Za-z0-9][A-Za-z0-9_.:-]{0,63})"')
_PROTO_RE = re.compile(r"[a-z0-9_]{1,32}")
_QUIRK_RE = re.compile(r"\t| {3,}")  # IoT-23 joins its last three columns with three spaces
_HEX_ESCAPE_RE = re.compile(r"\\x([0-9a-fA-F]{2})")


class FlowRow(NamedTuple):
    """One input flow line: exactly one of ``record`` and ``reason`` is set.

    ``uid`` is recovered from rejected lines where the column is still readable, because the
    evaluation contract wants one output row per flow of the input, rejected ones included.
    """

    uid: str | None
    record: FlowRecord | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class ZeekSchema:
    """Column layout of a delimited log, as announced by ``#fields`` (or a CSV header)."""

    fields: tuple[str, ...]
    separator: str = "\t"
    unset: str = "-"
    empty: str = "(empty)"

    @property
    def missing(self) -> frozenset[str]:
        """Required columns this layout lacks (a non-conn log, e.g. dns.log, lacks some)."""
        return REQUIRED_FIELDS - set(self.fields)

    @property
    def uid_index(self) -> int | None:
        """Where the uid sits, to name rejected lines."""
        return self.fields.index("uid") if "uid" in self.fields else None


class _RejectError(Exception):
    """Internal: a field failed validation; ``args[0]`` is the rejection reason."""


_ADDR_CACHE: dict[str, bool] = {}


def _addr(value: object) -> str:
    # Captures repeat a handful of addresses, so validity is cached (bounded) rather than re-parsed.
    if not isinstance(value, str):
        raise _RejectError("bad_addr")
    ok = _ADDR_CACHE.get(value)
    if ok is None:
        try:
            ipaddress.ip_address(value)
            ok = True
        except ValueError:
            ok = False
        if len(_ADDR_CACHE) > 65536:
            _ADDR_CACHE.clear()
        _ADDR_CACHE[value] = ok
    if not ok:
        raise _RejectError("bad_addr")
    return value


def _int(value: object, hi: int, reason: str) -> int | None:
    if value is None:
        return None
    if type(value) is int:  # not bool: JSON true is no count
        number = value
    elif isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 20:
        number = int(value)  # isdigit+isascii keeps out int()'s "1_000", " 7" and non-ASCII digits
    else:
        raise _RejectError(reason)
    if not 0 <= number <= hi:
        raise _RejectError(reason)
    return number


def _float(value: object, reason: str) -> float | None:
    if value is None:
        return None
    if type(value) is int or type(value) is float:
        try:
            number = float(value)
        except OverflowError:
            raise _RejectError(reason) from None
    elif isinstance(value, str) and len(value) <= 64 and _FLOAT_RE.fullmatch(value):
        number = float(value)  # the regex keeps out float()'s "nan", "inf", "1_0" and spaces
    else:
        raise _RejectError(reason)
    if not (math.isfinite(number) and number >= 0.0):
        raise _RejectError(reason)
    return number


def _ts(value: object) -> float:
    if isinstance(value, str) and not _FLOAT_RE.fullmatch(value):
        try:  # Zeek's JSON writer can emit ISO 8601 (LogAscii::json_timestamps=JSON::TS_ISO8601)
            parsed = datetime.fromisoformat(value)
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            number: float | None = parsed.timestamp()
        except (ValueError, OverflowError, OSError):
            raise _RejectError("bad_ts") from None
    else:
        number = _float(value, "bad_ts")
    if number is None or not 0.0 <= number < TS_MAX:
        raise _RejectError("bad_ts")
    return number


def _str(value: object, reason: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str) and len(value) <= 256 and value.isascii() and value.isprintable():
        return value  # Zeek escapes non-printable bytes as \xHH, so anything else is corruption
    raise _RejectError(reason)


def _label(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        label = value.strip().lower()
        if label in ("benign", "malicious"):
            return label
    raise _RejectError("bad_label")


def _count(value: object) -> int | None:
    return _int(value, INT64_MAX, "bad_count")


def _build(row: Mapping[str, object]) -> FlowRecord:
    """Validate one row (column name -> raw value, unset already None) into a FlowRecord."""
    get = row.get
    uid = get("uid")
    if uid is not None and not (isinstance(uid, str) and _UID_RE.fullmatch(uid)):
        raise _RejectError("bad_uid")
    proto = get("proto")
    proto = proto.lower() if isinstance(proto, str) else None
    if proto is None or not _PROTO_RE.fullmatch(proto):
        raise _RejectError("bad_proto")
    orig_p = _int(get("id.orig_p"), 65535, "bad_port")
    resp_p = _int(get("id.resp_p"), 65535, "bad_port")
    if orig_p is None or resp_p is None:
        raise _RejectError("bad_port")
    return FlowRecord(
        ts=_ts(get("ts")),
        orig_h=_addr(get("id.orig_h")),
        orig_p=orig_p,
        resp_h=_addr(get("id.resp_h")),
        resp_p=resp_p,
        proto=proto,
        uid=uid or "",
        service=_str(get("service"), "bad_string"),
        duration=_float(get("duration"), "bad_duration"),
        conn_state=_str(get("conn_state"), "bad_string"),
        history=_str(get("history"), "bad_string"),
        orig_mac=_str(get("orig_l2_addr"), "bad_string"),
        label=_label(get("label")),
        detailed_label=_str(get("detailed-label"), "bad_label"),
        orig_bytes=_count(get("orig_bytes")),
        resp_bytes=_count(get("resp_bytes")),
        orig_pkts=_count(get("orig_pkts")),
        resp_pkts=_count(get("resp_pkts")),
        orig_ip_bytes=_count(get("orig_ip_bytes")),
        resp_ip_bytes=_count(get("resp_ip_bytes")),
    )


def _junk(line: str) -> str | None:
    if len(line) > MAX_LINE:
        return "too_long"
    if "\x00" in line or "\ufffd" in line:  # NUL or bytes that were not UTF-8: binary junk
        return "binary"
    return None


def _split(line: str, schema: ZeekSchema) -> list[str]:
    sep = schema.separator
    if sep == "," and '"' in line:
        try:
            return next(csv.reader([line]), [])
        except csv.Error:  # e.g. a newline inside an unquoted field: a wrong line, not a crash
            return []
    fields = line.split(sep)
    if len(fields) != len(schema.fields) and sep == "\t" and "   " in line:
        fields = _QUIRK_RE.split(line)
    return fields


def _guess_schema(line: str) -> ZeekSchema | None:
    """Guess a headerless line's layout from its width: 21 is conn.log, 23 is IoT-23."""
    sep = "\t" if "\t" in line else ","
    for fields in (IOT23_FIELDS, CONN_FIELDS):  # IoT-23 first: its quirk hides 2 columns
        schema = ZeekSchema(fields, separator=sep)
        if len(_split(line, schema)) == len(fields):
            return schema
    return None


def parse_delimited_line(line: str, schema: ZeekSchema | None = None) -> FlowRow:
    """Parse one TSV/CSV data line; ``schema=None`` guesses the layout from the column count."""
    line = line.rstrip("\r\n")
    if schema is None:
        schema = _guess_schema(line)
        if schema is None:
            return FlowRow(None, None, _junk(line) or "no_schema")
    fields = _split(line, schema)
    uid = None
    uid_index = schema.uid_index
    if uid_index is not None and len(fields) > uid_index and _UID_RE.fullmatch(fields[uid_index]):
        uid = fields[uid_index]
    reason = _junk(line)
    if reason is None and schema.missing:
        reason = "bad_schema"
    if reason is None and len(fields) != len(schema.fields):
        reason = "column_count"
    if reason is not None:
        return FlowRow(uid, None, reason)
    unset = _UNSET_VALUES | {schema.unset, schema.empty}
    row = {k: (None if v in unset else v) for k, v in zip(schema.fields, fields, strict=True)}
    try:
        return FlowRow(uid, _build(row), None)
    except _RejectError as bad:
        return FlowRow(uid, None, str(bad.args[0]))


def parse_tsv_line(line: str, schema: ZeekSchema | None = None) -> FlowRow:
    """Parse one Zeek TSV data line (``schema=None``: headerless, guessed from the width)."""
    return parse_delimited_line(line, schema)


def parse_csv_line(line: str, schema: ZeekSchema | None = None) -> FlowRow:
    """Parse one IoT-23 CSV extract line (``schema=None``: the 23 IoT-23 columns)."""
    return parse_delimited_line(line, schema or ZeekSchema(IOT23_FIELDS, separator=","))


def parse_json_line(line: str) -> FlowRow:
    """Parse one line of a Zeek JSON log (``LogAscii::use_json=T``), flat or nested ``id``."""
    line = line.strip()
    reason = _junk(line)
    if reason is not None:
        match = _JSON_UID_RE.search(line[:MAX_LINE])
        return FlowRow(match.group(1) if match else None, None, reason)
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):  # also int-digit limits
        match = _JSON_UID_RE.search(line)
        return FlowRow(match.group(1) if match else None, None, "bad_json")
    if not isinstance(obj, dict):
        return FlowRow(None, None, "bad_json")
    nested = obj.get("id")
    if isinstance(nested, dict):  # some shippers nest the 4-tuple as {"id": {"orig_h": ...}}
        obj = {**obj, **{f"id.{k}": v for k, v in nested.items()}}
    uid_value = obj.get("uid")
    uid = uid_value if isinstance(uid_value, str) and _UID_RE.fullmatch(uid_value) else None
    row = {k: (None if isinstance(v, str) and v in _UNSET_VALUES else v) for k, v in obj.items()}
    try:
        return FlowRow(uid, _build(row), None)
    except _RejectError as bad:
        return FlowRow(uid, None, str(bad.args[0]))


def _unescape(text: str) -> str:
    return _HEX_ESCAPE_RE.sub(lambda m: chr(int(m.group(1), 16)), text)


def _column_header(line: str) -> ZeekSchema | None:
    """Read the layout off a column-name row (CSV extracts, headerless TSV with names)."""
    if not line.startswith("ts") or "id.orig_h" not in line:
        return None
    separator = "\t" if "\t" in line else ","
    names = tuple(name.strip() for name in line.split(separator))
    return ZeekSchema(names, separator) if names[0] == "ts" else None


class ZeekLogParser:
    """Incremental conn.log parser for tailing: feed it text as it is appended to the file.

    Header lines may come at any point (log rotation writes a fresh header block): a ``#fields``
    line or a CSV header row replaces the layout for the lines after it. Lines without any header
    get a layout guessed from their width. JSON lines are recognised per line.
    """

    def __init__(self, stats: ParseStats | None = None) -> None:
        self.stats = stats if stats is not None else ParseStats()
        self.schema: ZeekSchema | None = None
        self._separator = "\t"
        self._unset = "-"
        self._empty = "(empty)"
        self._partial = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def reset(self) -> None:
        """Forget the layout and any partial line (the tailed file was truncated or replaced)."""
        self.schema = None
        self._separator, self._unset, self._empty = "\t", "-", "(empty)"
        self._partial = ""
        self._decoder.reset()

    def feed_line(self, line: str) -> FlowRow | None:
        """Parse one complete line; None for header, comment and blank lines (they are no flows)."""
        try:
            return self._feed_line(line)
        except Exception:  # last line of defence: a stream never raises
            row = FlowRow(None, None, "internal_error")
            self._count(row)
            return row

    def _feed_line(self, line: str) -> FlowRow | None:
        line = line.rstrip("\r\n")
        if not line.strip():
            return None
        if line.startswith("#"):
            self._directive(line)
            return None
        header = _column_header(line)
        if header is not None:
            self.schema = header
            return None
        if line.lstrip().startswith("{"):
            row = parse_json_line(line)
        else:
            if self.schema is None:
                self.schema = _guess_schema(line)
            row = parse_delimited_line(line, self.schema)
        self._count(row)
        return row

    def feed(self, chunk: str | bytes) -> list[FlowRow]:
        """Parse the complete lines of ``chunk``; a trailing partial line waits for more."""
        text = self._decoder.decode(chunk) if isinstance(chunk, bytes) else chunk
        if not text:
            return []
        pieces = (self._partial + text).split("\n")
        self._partial = pieces.pop()
        if len(self._partial) > MAX_LINE:  # never let a newline-less stream grow without bound
            self._partial = self._partial[: MAX_LINE + 1]
        return [row for line in pieces if (row := self.feed_line(line)) is not None]

    def flush(self) -> list[FlowRow]:
        """Parse what is left at end of file (IoT-23 files have no trailing newline)."""
        rest = self._partial + self._decoder.decode(b"", final=True)
        self._partial = ""
        row = self.feed_line(rest)
        return [] if row is None else [row]

    def _count(self, row: FlowRow) -> None:
        if row.record is not None:
            self.stats.accepted += 1
        else:
            self.stats.reject(row.reason or "unknown")

    def _directive(self, line: str) -> None:
        if line.startswith("#separator"):
            value = _unescape(line[len("#separator") :].strip())
            if len(value) == 1:
                self._separator = value
            return
        key, _, value = line.partition(self._separator)
        if key == "#unset_field":
            self._unset = _unescape(value)
        elif key == "#empty_field":
            self._empty = _unescape(value)
        elif key == "#fields":
            # Split names on whitespace too: IoT-23's header carries the three-space quirk as well.
            names = tuple(n for f in value.split(self._separator) for n in f.split())
            self.schema = ZeekSchema(names, self._separator, self._unset, self._empty)


def _open_lines(path: str | os.PathLike[str]) -> Iterator[str]:
    # newline="\n": only LF ends a line, so stray CRs stay inside their line (and CRLF is stripped).
    if os.fspath(path).endswith(".gz"):
        with gzip.open(path, "rt", encoding="utf-8", errors="replace", newline="\n") as handle:
            yield from handle
    else:
        with open(path, encoding="utf-8", errors="replace", newline="\n") as handle:
            yield from handle


def iter_flow_rows(
    source: str | os.PathLike[str] | Iterable[str], stats: ParseStats | None = None
) -> Iterator[FlowRow]:
    """Every flow line of a file (path) or of an iterable of lines, in order, accepted or not."""
    parser = ZeekLogParser(stats)
    lines: Iterable[str] = _open_lines(source) if isinstance(source, (str, os.PathLike)) else source
    for line in lines:
        row = parser.feed_line(line)
        if row is not None:
            yield row


def read_flows(
    source: str | os.PathLike[str] | Iterable[str], stats: ParseStats | None = None
) -> Iterator[FlowRecord]:
    """Yield the accepted flows of a conn.log (TSV, JSON or IoT-23 CSV); rejects go to stats."""
    for row in iter_flow_rows(source, stats):
        if row.record is not None:
            yield row.record
