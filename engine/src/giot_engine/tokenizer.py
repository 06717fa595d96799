"""Structured tokens for flows and device events, over one fixed, versioned vocabulary.

A flow becomes 7 tokens and an event 6, each token fusing two related fields (protocol with port
class, direction with destination scope, state with history, ...) so that a 64-token context holds
about nine flows and scoring stays cheap on a hub. Nothing that identifies a host, a connection or
an instant is a token: addresses only become scopes, ports only classes, timestamps only gaps and
coarse hour / weekday buckets in the device's local time.

The vocabulary is generated from the enumerations below, so every model trained anywhere agrees on
ids for a given ``VOCAB_VERSION``; bump the version whenever an enumeration changes.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

from .records import DeviceEvent, FlowRecord

VOCAB_VERSION = "giot-vocab-1"
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[BOS]", "[SEP]")
PAD_ID, UNK_ID, BOS_ID, SEP_ID = 0, 1, 2, 3
FLOW_TOKENS = 7
EVENT_TOKENS = 6

# Named destination ports. Several ports share a class when they mean the same service to a device.
NAMED_PORTS: dict[int, str] = {
    20: "ftp", 21: "ftp", 22: "ssh", 23: "telnet", 2323: "telnet", 25: "smtp", 587: "smtp",
    53: "dns", 67: "dhcp", 68: "dhcp", 547: "dhcp", 546: "dhcp", 80: "http", 8080: "http",
    8000: "http", 8008: "http", 8081: "http", 443: "https", 8443: "https", 123: "ntp",
    1900: "ssdp", 5353: "mdns", 5355: "llmnr", 137: "netbios", 138: "netbios", 139: "netbios",
    445: "smb", 554: "rtsp", 1883: "mqtt", 8883: "mqtt", 5683: "coap", 7547: "cwmp",
    5555: "adb", 6667: "irc", 3478: "stun", 161: "snmp", 514: "syslog",
}  # fmt: skip
PORT_CLASSES = (*sorted(set(NAMED_PORTS.values())), "wk", "reg", "eph", "zero")
ICMP_CLASSES = ("echo", "unreach", "nd", "mld", "other")
PROTOS = ("tcp", "udp", "icmp", "other")
DIRECTIONS = ("out", "in")
SCOPES = ("local", "remote", "mcast", "bcast", "link", "loop", "unspec")
STATES = (
    "S0", "S1", "S2", "S3", "SF", "REJ", "RSTO", "RSTR", "RSTOS0", "RSTRH", "SH", "SHR", "OTH",
    "none",
)  # fmt: skip
HISTORY = ("x", "o", "r", "b")  # payload: none, originator only, responder only, both
N_BYTE_BUCKETS = 8
N_DUR_BUCKETS = 7
N_PKT_BUCKETS = 6
GAP_BUCKETS = ("first", "late", "0", "1", "10", "60", "300", "1800", "3h", "long")
RATE_BUCKETS = 6  # device's flows in the previous 60 s: 0, 1, 2-3, 4-15, 16-63, 64+
HOUR_BUCKETS = 8  # three-hour blocks of the device's local time
TIMELESS_TOKEN = "h0/wd"  # the time token of the ablation without time (a vocabulary token)
EVENT_STATES = (
    "on", "off", "open", "closed", "locked", "unlocked", "home", "not_home", "playing", "idle",
    "heat", "cool", "num", "unavailable", "unknown", "none", "other",
)  # fmt: skip
SOURCES = ("user", "automation", "device", "unknown")
NUM_CHANGE = ("none", "zero", "dn3", "dn2", "dn1", "up1", "up2", "up3")
DOMAINS = (
    "binary_sensor", "sensor", "light", "switch", "cover", "lock", "climate", "fan",
    "media_player", "camera", "alarm_control_panel", "device_tracker", "person", "vacuum",
    "button", "input_boolean", "automation", "other",
)  # fmt: skip
DEVICE_CLASSES = (
    "motion", "occupancy", "door", "window", "opening", "presence", "temperature", "humidity",
    "illuminance", "power", "energy", "battery", "smoke", "moisture", "sound", "plug", "outlet",
    "none", "other",
)  # fmt: skip


def _log_bucket(value: float | None, base: float, n: int) -> str:
    """Log-scale bucket: "n" for unknown, 0 for zero, then one bucket per factor of ``base``."""
    if value is None or math.isnan(value):
        return "n"
    if value <= 0:
        return "0"
    return str(min(n - 1, 1 + int(math.log(value + 1.0, base))))


def byte_bucket(value: int | None) -> str:
    """Bytes in 8 classes: 0, then factors of 8 (1-7, 8-63, ..., 256 KiB+)."""
    return _log_bucket(None if value is None else float(value), 8.0, N_BYTE_BUCKETS)


def _all_log_buckets(n: int) -> list[str]:
    return ["n", *(str(i) for i in range(n))]


@lru_cache(maxsize=4096)
def address_scope(addr: str) -> str:  # noqa: PLR0911
    """Scope of an address, never the address: local, remote, mcast, bcast, link, loop, unspec."""
    try:
        ip = ipaddress.ip_address(addr.split("%", maxsplit=1)[0])
    except ValueError:
        return "unspec"
    if ip.is_unspecified:
        return "unspec"
    if ip.is_multicast:
        return "mcast"
    if isinstance(ip, ipaddress.IPv4Address) and (
        ip == ipaddress.IPv4Address("255.255.255.255") or (int(ip) & 0xFF == 0xFF and ip.is_private)
    ):
        return "bcast"
    if ip.is_loopback:
        return "loop"
    if ip.is_link_local:
        return "link"
    if ip.is_private:
        return "local"
    return "remote"


def is_lan(addr: str) -> bool:
    """Whether an address can be a device of the home (not a remote host, not multicast)."""
    return address_scope(addr) in ("local", "link", "unspec", "loop")


def port_class(port: int) -> str:
    """Named class for well-known service ports, else the IANA range."""
    if port in NAMED_PORTS:
        return NAMED_PORTS[port]
    if port == 0:
        return "zero"
    if port < 1024:
        return "wk"
    return "reg" if port < 49152 else "eph"


def icmp_class(icmp_type: int) -> str:
    """ICMP / ICMPv6 message families (Zeek puts the type in the originator port)."""
    if icmp_type in (0, 8, 128, 129):
        return "echo"
    if icmp_type in (1, 3, 11):
        return "unreach"
    if 133 <= icmp_type <= 137:
        return "nd"
    if icmp_type in (130, 131, 132, 143):
        return "mld"
    return "other"


def history_class(history: str | None, orig_bytes: int | None, resp_bytes: int | None) -> str:
    """Who sent payload: from Zeek's history letters (D upper = originator), else from bytes."""
    if history:
        o, r = "D" in history, "d" in history
    else:
        o, r = bool(orig_bytes), bool(resp_bytes)
    return "b" if o and r else "o" if o else "r" if r else "x"


def gap_bucket(gap: float | None) -> str:
    """Time since the device's previous flow or event.

    Zeek logs a connection when it ends, so a long-lived flow arrives after later-starting ones:
    a start more than a second before the previous one is "late", not a burst.
    """
    if gap is None:
        return "first"
    if gap < -1.0:
        return "late"
    for name, upper in (("0", 0.1), ("1", 1.0), ("10", 10.0), ("60", 60.0), ("300", 300.0)):
        if gap < upper:
            return name
    if gap < 1800:
        return "1800"
    return "3h" if gap < 10800 else "long"


def rate_bucket(recent: int) -> str:
    """How busy the device has been: its flows in the previous 60 seconds."""
    for i, upper in enumerate((1, 2, 4, 16, 64)):
        if recent < upper:
            return str(i)
    return str(RATE_BUCKETS - 1)


def utc_offset(ts: float, time_zone: str | None, fixed_s: int = 0) -> int:
    """Seconds local time is ahead of UTC at ``ts`` in ``time_zone`` (an IANA name, with DST).

    Without a time zone, the fixed ``fixed_s``. Pass the result as ``utc_offset_s`` to
    ``time_token`` / ``TokenContext``: the offset of the record's own instant, so a flow just
    after a DST change gets the new hour.
    """
    if time_zone is None:
        return fixed_s
    offset = datetime.fromtimestamp(ts, UTC).astimezone(_zone(time_zone)).utcoffset()
    return int(offset.total_seconds()) if offset is not None else fixed_s


@lru_cache(maxsize=8)
def _zone(name: str) -> ZoneInfo:
    """Look an IANA name up (raises ``ZoneInfoNotFoundError`` for an unknown one)."""
    return ZoneInfo(name)


def time_token(ts: float, utc_offset_s: int) -> str:
    """Three-hour block of the local day and weekday / weekend; used only relative to the device."""
    t = time.gmtime(ts + utc_offset_s)
    return f"h{t.tm_hour // 3}/{'we' if t.tm_wday >= 5 else 'wd'}"


def _time_of(*, ts: float, context: TokenContext) -> str:
    """Give the record's time token; one constant for every record when ``context.timeless``."""
    return TIMELESS_TOKEN if context.timeless else time_token(ts, context.utc_offset_s)


@dataclass(slots=True)
class TokenContext:
    """What the tokenizer needs beyond the record: the device's recent past, never its identity."""

    prev_ts: float | None = None
    recent_flows: int = 0
    utc_offset_s: int = 0
    timeless: bool = False  # the time token says nothing (an ablation: what time adds)


def flow_direction(flow: FlowRecord, device: str | None) -> str:
    """Outbound when the device originated the flow (the default when no device is named)."""
    return "in" if device is not None and device == flow.resp_h else "out"


def flow_tokens(flow: FlowRecord, context: TokenContext, device: str | None = None) -> list[str]:
    """Seven tokens of a flow.

    proto/port, direction/scope, state/history, bytes, duration/packets, gap/rate, time.
    """
    proto = flow.proto if flow.proto in PROTOS else "other"
    if proto == "icmp":
        svc = icmp_class(flow.orig_p)
    elif proto == "other":
        svc = "zero"
    else:
        svc = port_class(flow.resp_p)
    direction = flow_direction(flow, device)
    peer = flow.resp_h if direction == "out" else flow.orig_h
    state = flow.conn_state if flow.conn_state in STATES else "none"
    hist = history_class(flow.history, flow.orig_bytes, flow.resp_bytes)
    pkts = None
    if flow.orig_pkts is not None or flow.resp_pkts is not None:
        pkts = (flow.orig_pkts or 0) + (flow.resp_pkts or 0)
    gap = None if context.prev_ts is None else flow.ts - context.prev_ts
    return [
        f"{proto}/{svc}",
        f"{direction}/{address_scope(peer)}",
        f"st/{state}/{hist}",
        f"B/{byte_bucket(flow.orig_bytes)}/{byte_bucket(flow.resp_bytes)}",
        f"D/{_log_bucket(flow.duration, 4.0, N_DUR_BUCKETS)}/"
        f"{_log_bucket(None if pkts is None else float(pkts), 4.0, N_PKT_BUCKETS)}",
        f"G/{gap_bucket(gap)}/{rate_bucket(context.recent_flows)}",
        _time_of(ts=flow.ts, context=context),
    ]


def state_class(state: str | None) -> str:
    """Collapse a Home Assistant state into a behaviour class (values become "num")."""
    if state is None:
        return "none"
    s = state.lower()
    if s in EVENT_STATES:
        return s
    try:
        float(s)
    except ValueError:
        return "other"
    return "num"


def numeric_change_bucket(change: float | None) -> str:
    """Signed relative change in three log steps each way (<10%, <100%, larger)."""
    if change is None or math.isnan(change):
        return "none"
    if change == 0:
        return "zero"
    mag = abs(change)
    step = 1 if mag < 0.1 else 2 if mag < 1.0 else 3
    return f"{'up' if change > 0 else 'dn'}{step}"


def event_tokens(event: DeviceEvent, context: TokenContext) -> list[str]:
    """Six tokens: type (domain/device class), transition, numeric change, source, gap, time."""
    domain = event.domain if event.domain in DOMAINS else "other"
    dclass = event.device_class or "none"
    dclass = dclass if dclass in DEVICE_CLASSES else "other"
    gap = None if context.prev_ts is None else event.ts - context.prev_ts
    return [
        f"E/{domain}/{dclass}",
        f"T/{state_class(event.old_state)}>{state_class(event.new_state)}",
        f"N/{numeric_change_bucket(event.numeric_change)}",
        f"src/{event.source if event.source in SOURCES else 'unknown'}",
        f"G/{gap_bucket(gap)}/{rate_bucket(context.recent_flows)}",
        _time_of(ts=event.ts, context=context),
    ]


def _vocabulary_tokens() -> list[str]:
    toks: list[str] = list(SPECIAL_TOKENS)
    for proto in PROTOS:
        classes = (
            ICMP_CLASSES if proto == "icmp" else ("zero",) if proto == "other" else PORT_CLASSES
        )
        toks += [f"{proto}/{c}" for c in classes]
    toks += [f"{d}/{s}" for d in DIRECTIONS for s in SCOPES]
    toks += [f"st/{s}/{h}" for s in STATES for h in HISTORY]
    bb = _all_log_buckets(N_BYTE_BUCKETS)
    toks += [f"B/{o}/{r}" for o in bb for r in bb]
    toks += [
        f"D/{d}/{p}"
        for d in _all_log_buckets(N_DUR_BUCKETS)
        for p in _all_log_buckets(N_PKT_BUCKETS)
    ]
    toks += [f"G/{g}/{r}" for g in GAP_BUCKETS for r in range(RATE_BUCKETS)]
    toks += [f"h{h}/{w}" for h in range(HOUR_BUCKETS) for w in ("wd", "we")]
    toks += [f"E/{d}/{c}" for d in DOMAINS for c in DEVICE_CLASSES]
    toks += [f"T/{a}>{b}" for a in EVENT_STATES for b in EVENT_STATES]
    toks += [f"N/{n}" for n in NUM_CHANGE]
    toks += [f"src/{s}" for s in SOURCES]
    return toks


class Vocabulary:
    """Token strings to ids and back; unknown tokens map to ``[UNK]``."""

    def __init__(self, tokens: Sequence[str], version: str = VOCAB_VERSION) -> None:
        self.tokens = list(tokens)
        self.version = version
        self.index = {t: i for i, t in enumerate(self.tokens)}
        if len(self.index) != len(self.tokens):
            raise ValueError("duplicate tokens in vocabulary")

    @classmethod
    def default(cls) -> Vocabulary:
        """Return the fixed vocabulary of ``VOCAB_VERSION``."""
        return _default_vocabulary()

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, tokens: Iterable[str]) -> list[int]:
        """Ids of ``tokens``."""
        return [self.index.get(t, UNK_ID) for t in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Tokens of ``ids`` (out-of-range ids decode as ``[UNK]``)."""
        n = len(self.tokens)
        return [self.tokens[i] if 0 <= i < n else "[UNK]" for i in ids]

    def to_tokenizers_json(self) -> dict[str, object]:
        """Render as a Hugging Face ``tokenizers`` WordLevel tokenizer.json (whitespace split)."""
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": [
                {
                    "id": i,
                    "content": t,
                    "single_word": False,
                    "lstrip": False,
                    "rstrip": False,
                    "normalized": False,
                    "special": True,
                }
                for i, t in enumerate(SPECIAL_TOKENS)
            ],
            "normalizer": None,
            "pre_tokenizer": {"type": "WhitespaceSplit"},
            "post_processor": None,
            "decoder": None,
            "model": {"type": "WordLevel", "vocab": dict(self.index), "unk_token": "[UNK]"},
        }


@lru_cache(maxsize=1)
def _default_vocabulary() -> Vocabulary:
    return Vocabulary(_vocabulary_tokens())


def device_of(flow: FlowRecord) -> str:
    """Name the home device a flow belongs to: its LAN-side end, the originator when both are."""
    if is_lan(flow.orig_h) or not is_lan(flow.resp_h):
        return flow.orig_h
    return flow.resp_h
