"""Every sentence and phrase the engine writes for a homeowner, in one place.

Alarm explanations (a flow, a state change, a device gone silent or stuck), the reasons the habit
checks give, and the descriptions of what a device normally does are all rendered here from
templates, so the same situation always reads the same way and no text is invented by a model.
The modules that detect and describe (``detector``, ``describe``, ``hub_detector``) compute the
facts and hand them here. Home Assistant's own translatable strings stay in the integration.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from .records import DeviceEvent, FlowRecord
from .tokenizer import address_scope, port_class

SCOPE_WORDS = {
    "remote": "internet hosts",
    "local": "local hosts",
    "mcast": "multicast groups",
    "bcast": "the broadcast address",
    "link": "link-local hosts",
    "loop": "itself",
    "unspec": "unspecified addresses",
}
STATE_WORDS = {
    "S0": "no answer",
    "REJ": "rejected",
    "SF": "completed",
    "OTH": "mid-stream, no handshake seen",
    "RSTO": "reset by the device",
    "RSTR": "reset by the peer",
}
FAMILY_WORDS = {
    "port_scan": "port scan",
    "cnc": "command-and-control traffic",
    "ddos": "flood",
    "file_download": "file download",
}

# a device the hub has not seen do anything yet: (short, full) description
NOTHING_OBSERVED = ("Not enough data yet", "Nothing has been observed yet.")
NO_TRAFFIC = "No traffic seen yet."


# -- quantities ---------------------------------------------------------------------------------
def duration(seconds: float) -> str:
    """Word a span of time in the unit that reads best ("45 s", "12 min", "3.5 h")."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def pace(seconds: float) -> str:
    """Word a typical gap between connections; under a second reads as such."""
    return "under a second" if seconds < 1 else duration(seconds)


def volume(n: int) -> str:
    """Word a number of bytes in the unit that reads best."""
    if n < 1024:
        return f"{n} bytes"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 1024 / 1024:.1f} MiB"


# -- what a device normally does ------------------------------------------------------------------
def behaviour_sentences(
    flows: int,
    services: Sequence[tuple[tuple[str, int, str], int]],
    *,
    typical_gap: float | None,
    regular: bool,
    typical_volume: int,
    active_hours: Sequence[int],
) -> list[str]:
    """Short sentences about a device's usual flows: top services, pace, volume, hours."""
    if flows == 0:
        return [NO_TRAFFIC]
    parts = []
    for (proto, port, scope), n in services:
        svc = port_class(port) if proto in ("tcp", "udp") else proto
        label = f"{svc} ({port}/{proto})" if proto in ("tcp", "udp") else proto
        parts.append(f"{label} to {SCOPE_WORDS.get(scope, scope)} ({100 * n / flows:.0f}%)")
    out = [f"Mostly talks {', '.join(parts)}."]
    if typical_gap is not None:
        how = "regularly" if regular else "irregularly"
        out.append(f"Starts a connection {how}, typically every {pace(typical_gap)}.")
    out.append(f"A typical connection moves {volume(typical_volume)}.")
    if len(active_hours) >= 20:
        out.append("Active around the clock.")
    elif active_hours:
        out.append(f"Active at {', '.join(f'{h:02d}h' for h in active_hours)}.")
    return out


def change_words(event: DeviceEvent) -> str:
    """Word a state change as the description of a device's usual changes counts it."""
    return f"{event.entity_id} {event.new_state}"


def usual_changes(changes: Counter[str]) -> str:
    """Word the device's three most common state changes, with their shares."""
    total = changes.total()
    common = ", ".join(f"{change} ({100 * n // total}%)" for change, n in changes.most_common(3))
    return f"Usual changes: {common}."


def expected_flows(expected: Sequence[tuple[str, float]]) -> str:
    """Word the kinds of flow the model expects next (``describe.expected_next``)."""
    words = [
        f"{tok.split('/')[1]} over {tok.split('/')[0]} ({100 * p:.0f}%)" for tok, p in expected
    ]
    return "Next, the model expects " + ", ".join(words) + "."


# -- why an alarm ---------------------------------------------------------------------------------
def token_words(tok: str) -> str:  # noqa: PLR0911
    """One token of a record in plain words."""
    parts = tok.split("/")
    head = parts[0]
    if head in ("tcp", "udp", "icmp", "other"):
        return f"{parts[1]} over {head}"
    if head in ("out", "in"):
        return f"{'to' if head == 'out' else 'from'} {SCOPE_WORDS.get(parts[1], parts[1])}"
    if head == "st":
        return f"state {parts[1]} ({STATE_WORDS.get(parts[1], 'other')})"
    if head == "B":
        return "this volume of bytes"
    if head == "D":
        return "this duration and packet count"
    if head == "G":
        return "this pace of connections"
    if head.startswith("h"):
        return "this time of day"
    if head == "T":
        return f"the change {parts[1]}"
    return tok


def unusual(tokens: Sequence[tuple[str, float]]) -> str:
    """Word the two most surprising tokens of a record, with their surprise."""
    top = sorted(tokens, key=lambda tv: -tv[1])[:2]
    return ", ".join(f"{token_words(t)} ({v:.1f} nats)" for t, v in top)


def flow_alarm(
    flow: FlowRecord,
    peer: str,
    n: int,
    family: str | None,
    *,
    tokens: Sequence[tuple[str, float]] | None,
    expected: Sequence[tuple[str, float]] = (),
) -> str:
    """Why a flow alarmed: its family, the minute's like flows, what was unusual and expected."""
    what = "connection attempt" if flow.proto == "tcp" else "flow"
    what += "" if n == 1 else "s"
    state = f", state {flow.conn_state}" if flow.conn_state else ""
    lead = f"{FAMILY_WORDS[family]}: " if family in FAMILY_WORDS else "unusual behaviour: "
    text = (
        f"{lead}{n:,} {what} in the last minute to port {flow.resp_p}/{flow.proto} "
        f"on {SCOPE_WORDS.get(address_scope(peer), 'hosts')}{state}"
    )
    if tokens is not None:
        text += "; unusual for this device: " + unusual(tokens)
        if expected:
            said = expected_flows(expected).rstrip(".")
            text += "; " + said.replace("Next, the model expects", "the model expected")
    return text


def event_alarm(event: DeviceEvent, why: str, tokens: Sequence[tuple[str, float]]) -> str:
    """Why a state change alarmed: the habit check's reason, else its most surprising tokens."""
    return f"{event.entity_id} changed {event.old_state} -> {event.new_state}; unusual: " + (
        why or unusual(tokens)
    )


def burst_reason(in_minute: int) -> str:
    """Word a device changing state more often in a minute than it ever did."""
    return f"{in_minute} changes in a minute"


def odd_hour_reason(hour: int) -> str:
    """Word a device active at an hour it never was."""
    return f"active at {hour:02d}h, an hour it never was"


def absence_alarm(kind: str, quiet: float, state: str | None, usual: float) -> str:
    """Word a device silent (no report) or stuck (in one state) for longer than ever."""
    what = f"in state {state}" if kind == "stuck" else "without a report"
    return (
        f"{'stuck' if kind == 'stuck' else 'silent'}: {duration(quiet)} {what}; "
        f"its longest so far was {duration(usual)}"
    )


def operated_while_away(explanation: str) -> str:
    """Explain away mode's alarm: a person changed a device while the home is said empty."""
    return f"{explanation or 'operated'} by hand while the home is away"


def new_address(name: str, mac: str | None) -> str:
    """Say that an address was seen for the first time (the Network event's text)."""
    return f"{name} appeared on the network" + (f" ({mac})" if mac else "")
