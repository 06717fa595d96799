"""Alerts: the verdicts worth telling automations about, sent to the event entities.

An alert goes out on a dispatcher signal per device (``HUB_KEY`` for new addresses on the
network); the event entity of that device listens. One device fires one alert per type per
``ALARM_HOLD``, so a scan of a thousand flows is one alert, not a thousand.
"""

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers.dispatcher import async_dispatcher_send

from giot_engine import wording
from giot_engine.hub_detector import HubVerdict
from giot_engine.records import Severity

from .attribution import NewAddress
from .const import ALARM_HOLD, DOMAIN, HUB_KEY, AlertType
from .models import WatchedDevice

# Families the engine's signature stage names, mapped onto the alert event types.
FAMILY_TO_ALERT: Mapping[str, AlertType] = {
    "port_scan": AlertType.PORT_SCAN,
    "scan": AlertType.PORT_SCAN,
    "cnc": AlertType.C2_BEACON,
    "c2": AlertType.C2_BEACON,
    "c2_beacon": AlertType.C2_BEACON,
    "ddos": AlertType.FLOOD,
    "flood": AlertType.FLOOD,
    "silent": AlertType.DEVICE_SILENT,
    "stuck": AlertType.STUCK_STATE,
}


def signal_alert(entry_id: str, key: str) -> str:
    """Name the signal that carries device ``key``'s alerts (``HUB_KEY``: new addresses)."""
    return f"{DOMAIN}_{entry_id}_alert_{key}"


def classify(
    verdict: HubVerdict, alert: AlertType, severity: Severity
) -> tuple[AlertType, Severity]:
    """Read a verdict's alert type and severity; ``alert`` and ``severity`` where it names none."""
    return (
        FAMILY_TO_ALERT.get(verdict.family or "", alert),
        Severity(verdict.severity) if verdict.severity else severity,
    )


class Alerts:
    """Sends one entry's alerts to its event entities."""

    def __init__(self, hass: HomeAssistant, entry_id: str) -> None:
        """Alerts of this entry go out on its own signals."""
        self._hass = hass
        self._entry_id = entry_id

    @callback
    def async_fire_held(
        self,
        state: WatchedDevice,
        alert: AlertType,
        severity: Severity,
        explanation: str,
        score: float,
        *,
        now: datetime,
    ) -> bool:
        """Fire the device's alert unless one of its type went out within the hold; True if sent."""
        if now - state.last_fired.get(alert, now - ALARM_HOLD) < ALARM_HOLD:
            return False
        state.last_fired[alert] = now
        self._send(state.key, alert, severity, explanation, score)
        return True

    @callback
    def async_new_address(self, address: NewAddress) -> None:
        """Announce an address no Home Assistant device has on the hub's network event."""
        name = address.ip or address.key
        self._send(
            HUB_KEY,
            AlertType.NEW_DEVICE,
            Severity.LOW,
            wording.new_address(name, address.mac if address.ip else None),
            0.0,
            device=name,
        )

    @callback
    def _send(
        self,
        key: str,
        alert: AlertType,
        severity: Severity,
        explanation: str,
        score: float,
        *,
        device: str | None = None,
    ) -> None:
        data: dict[str, Any] = {
            "severity": severity.value,
            "explanation": explanation,
            "score": round(score, 4),
        }
        if device is not None:
            data["device"] = device
        async_dispatcher_send(self._hass, signal_alert(self._entry_id, key), alert, data)
