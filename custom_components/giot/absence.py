"""Absence: devices gone silent, or stuck in one state, judged on a clock.

A record can only be scored when it comes; the absence of records has to be looked for. Every
``ABSENCE_INTERVAL`` the detector's ``tick`` says which devices are absent; an episode is an
alarm until the device's next record, announced once (and at most once per hold).
"""

from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from typing import Any

from homeassistant.core import callback
from homeassistant.util import dt as dt_util

from giot_engine.detector_process import DetectorError
from giot_engine.hub_detector import HubVerdict, alarming
from giot_engine.records import Severity

from .alerts import Alerts, classify
from .const import LOGGER, AlertType
from .detector_runner import DetectorRunner
from .devices import WatchedDevices


class AbsenceWatch:
    """Turns the detector's absence verdicts into alarms and alerts."""

    def __init__(
        self,
        runner: DetectorRunner,
        devices: WatchedDevices,
        alerts: Alerts,
        bars: Callable[[], tuple[float, float]],
        notify: Callable[[], Coroutine[Any, Any, None]],
    ) -> None:
        """``bars()`` is the (flow, event) bar now; ``notify`` tells the entities."""
        self._runner = runner
        self._devices = devices
        self._alerts = alerts
        self._bars = bars
        self._notify = notify

    async def async_check(self, _now: datetime | None = None) -> None:
        """Ask the detector who is absent now and apply it.

        The verdicts are applied under the detector lock, so a record scored meanwhile cannot
        be overtaken.
        """
        now = dt_util.utcnow()
        async with self._runner.lock:
            try:
                verdicts = await self._runner.async_run(self._runner.detector.tick, now.timestamp())
            except DetectorError as err:
                LOGGER.debug("Absence not judged this time: %s", err)
                return
            changed = self._apply(verdicts, now)
        if changed:
            await self._notify()

    @callback
    def _apply(self, verdicts: Sequence[HubVerdict], now: datetime) -> bool:
        """Turn absence alarms on (one alert per episode and hold) and off; True if any moved."""
        flow_bar, event_bar = self._bars()
        absent = {
            verdict.device: verdict
            for verdict in verdicts
            if verdict.device in self._devices
            and alarming(verdict, event_bar if verdict.is_event else flow_bar)
        }
        changed = False
        for key, state in self._devices.items():
            if (verdict := absent.get(key)) is None:
                changed |= state.absence is not None
                state.absence = None
                continue
            alert, severity = classify(verdict, AlertType.DEVICE_SILENT, Severity.MEDIUM)
            state.raise_peak(verdict.score, now)
            state.score = verdict.score
            state.alert_type, state.severity = alert, severity
            state.explanation = verdict.explanation
            if state.absence is not alert:  # a new episode
                changed = True
                state.absence, state.absence_announced = alert, False
            # One event per episode, once no snooze keeps it quiet (and one per hold).
            if state.absence_announced or not state.alarm(now):
                continue
            state.absence_announced = changed = True
            self._alerts.async_fire_held(
                state, alert, severity, verdict.explanation, verdict.score, now=now
            )
        return changed
