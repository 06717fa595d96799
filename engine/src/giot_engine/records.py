"""Normalised inputs of the engine: one flow record type and one device event type.

Every source (Zeek conn.log, NetFlow v5/v9, IPFIX, Home Assistant state changes, public home logs)
is mapped onto these two types, so that the tokenizer and the model see one vocabulary whatever
the collector was. Ground-truth labels ride along for evaluation only and are never features.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, fields, is_dataclass
from enum import StrEnum
from typing import Any, Literal

EventSource = Literal["user", "automation", "device", "unknown"]


class Severity(StrEnum):
    """How urgent an alarm is: the detector's verdicts and Home Assistant's alerts share it."""

    NONE = "none"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


@dataclass(slots=True)
class FlowRecord:
    """One connection as Zeek's conn.log or a NetFlow/IPFIX exporter reports it.

    Optional fields are None where the source does not carry them (NetFlow has no Zeek
    ``conn_state`` or ``service``; Zeek has no MAC address). ``ts`` is epoch seconds and is only
    ever used for relative quantities (gaps, rates, hour of day), never as an identity.
    """

    ts: float
    orig_h: str
    orig_p: int
    resp_h: str
    resp_p: int
    proto: str  # lower case: "tcp", "udp", "icmp", or the IANA protocol number as text
    uid: str = ""
    service: str | None = None
    duration: float | None = None
    orig_bytes: int | None = None
    resp_bytes: int | None = None
    conn_state: str | None = None
    history: str | None = None
    orig_pkts: int | None = None
    resp_pkts: int | None = None
    orig_ip_bytes: int | None = None
    resp_ip_bytes: int | None = None
    tcp_flags: int | None = None  # cumulative TCP flags (NetFlow/IPFIX), None for Zeek
    orig_mac: str | None = None
    label: str | None = None  # evaluation only: "benign" or "malicious" (lower case)
    detailed_label: str | None = None  # evaluation only: e.g. "PartOfAHorizontalPortScan"


@dataclass(slots=True)
class DeviceEvent:
    """One Home Assistant state change (or a public home log's sensor event mapped onto one).

    ``numeric_change`` carries the signed relative change of a numeric state so the tokenizer can
    bucket it; ``attributes`` holds only the attributes that matter for behaviour (the collector
    drops the rest before they are stored).
    """

    ts: float
    entity_id: str
    domain: str
    new_state: str
    old_state: str | None = None
    device_class: str | None = None
    numeric_change: float | None = None
    source: EventSource = "unknown"
    device_id: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    label: str | None = None  # evaluation only (injected anomalies)


@dataclass(slots=True)
class ParseStats:
    """What a parser accepted and what it rejected, with the reason for each rejection.

    Parsers never raise out of a stream: a bad line or datagram is counted here and skipped.
    """

    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    def reject(self, reason: str) -> None:
        """Count one rejected input under ``reason``."""
        self.rejected[reason] += 1

    @property
    def total_rejected(self) -> int:
        """All rejections, whatever the reason."""
        return sum(self.rejected.values())


def counts_dict(stats: Any) -> dict[str, Any]:
    """Turn a stats dataclass into plain JSON values for diagnostics.

    Counters become dicts; a nested stats dataclass (a parser's ``ParseStats``) is flattened into
    its owner, so a source's diagnostics read as one level of counts.
    """
    out: dict[str, Any] = {}
    for spec in fields(stats):
        value = getattr(stats, spec.name)
        if is_dataclass(value) and not isinstance(value, type):
            out.update(counts_dict(value))
        else:
            out[spec.name] = dict(value) if isinstance(value, Counter) else value
    return out
