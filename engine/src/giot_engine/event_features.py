"""Features of a device event, computed once for training and live scoring alike.

A Home Assistant state change (the integration's state collector) and a public home log's sensor
event (``home_events``) both become ``DeviceEvent``s here, so the model is scored on exactly the
features it was trained on: the signed relative change of a numeric state, and who caused the
change (a person, an automation, or the device itself).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from .records import DeviceEvent, EventSource

# Domains whose states change by themselves (a reading, a detection): without a context that names
# a person or an automation, their changes are the device's own.
SELF_REPORTING_DOMAINS = frozenset({"binary_sensor", "sensor"})


def number(text: str | None) -> float | None:
    """Read a state as a finite number; None for text, infinities and NaN."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def numeric_change(old: str | None, new: str) -> float | None:
    """Signed change of a numeric state relative to the old value; None unless both are numbers."""
    before, after = number(old), number(new)
    if before is None or after is None or before == 0.0:
        return None
    return (after - before) / abs(before)


def event_source(
    domain: str,
    *,
    user_id: str | None = None,
    parent_id: str | None = None,
    context_known: bool = True,
) -> EventSource:
    """Who caused a change: a person (user id), an automation or script (parent), or the device.

    Home Assistant knows the context of every change, so a change with neither a user nor a parent
    is the device's own. A home log has no context: there only a sensor's change is known to be
    its own; who switched a light or an outlet is unknown.
    """
    if user_id is not None:
        return "user"
    if parent_id is not None:
        return "automation"
    if context_known or domain in SELF_REPORTING_DOMAINS:
        return "device"
    return "unknown"


def user_initiated(event: DeviceEvent) -> bool:
    """Whether a person caused the change (away mode alarms on these)."""
    return event.source == "user"


def device_event(
    ts: float,
    entity_id: str,
    domain: str,
    new_state: str,
    old_state: str | None,
    *,
    source: EventSource,
    device_class: str | None = None,
    device_id: str | None = None,
    attributes: Mapping[str, str] | None = None,
) -> DeviceEvent:
    """One state change as the engine sees it, with its numeric change computed here."""
    return DeviceEvent(
        ts=ts,
        entity_id=entity_id,
        domain=domain,
        new_state=new_state,
        old_state=old_state,
        device_class=device_class,
        numeric_change=numeric_change(old_state, new_state),
        source=source,
        device_id=device_id,
        attributes=dict(attributes) if attributes is not None else {},
    )
