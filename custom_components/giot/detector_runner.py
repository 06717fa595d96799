"""The one way to the detector: its calls run in the executor, one at a time where it matters.

The detector keeps per-device state and is not thread-safe, so every call that reads or
changes that state holds ``lock``; training works on copies and runs beside scoring. Where no
detector process can be started (an unusual host), detection moves into Home Assistant's
process instead, as it did before the detector had a process of its own.
"""

import asyncio
from collections.abc import Callable
from functools import partial

from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError

from giot_engine.detector_process import DetectorError, ProcessDetector
from giot_engine.hub_detector import HubDetector, InProcessDetector

from .const import BASE_MODEL_DIR, DOMAIN, LOGGER
from .store import WindowStore


class DetectorRunner:
    """Runs detector calls off the event loop and serialises those that touch its state."""

    def __init__(self, hass: HomeAssistant, detector: HubDetector, windows: WindowStore) -> None:
        """Hold the detector; ``async_load`` starts it (its process starts then)."""
        self._hass = hass
        self.detector = detector
        self._windows = windows
        # Held across a call and whatever the caller applies from it, so a record scored
        # meanwhile cannot be overtaken by an older verdict.
        self.lock = asyncio.Lock()

    async def async_run[**P, R](self, job: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run a detector call in the executor without the lock.

        For callers that hold the lock themselves, and for calls that touch no per-device state.
        """
        return await self._hass.async_add_executor_job(partial(job, *args, **kwargs))

    async def async_call[**P, R](self, job: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run a detector call in the executor, one at a time."""
        async with self.lock:
            return await self.async_run(job, *args, **kwargs)

    async def async_action[**P, R](
        self, job: Callable[P, R], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """Run a detector call for a user's action; a detector that died says so, translated.

        The next call starts a fresh process (``ProcessDetector``), so trying again may work.
        """
        try:
            return await self.async_run(job, *args, **kwargs)
        except DetectorError as err:
            raise HomeAssistantError(
                translation_domain=DOMAIN,
                translation_key="detector_unavailable",
                translation_placeholders={"error": str(err)},
            ) from err

    async def async_load(self) -> None:
        """Load the model and the saved state into the detector (its process starts now)."""
        try:
            await self.async_run(self.detector.load_model)
        except DetectorError as err:
            if not isinstance(self.detector, ProcessDetector):
                raise
            LOGGER.warning("GIoT detects in Home Assistant's process instead: %s", err)
            await self.async_run(self.detector.close)
            self.detector = InProcessDetector(self._windows.directory, BASE_MODEL_DIR)
            await self.async_run(self.detector.load_model)
        loaded = await self.async_run(self.detector.load_state_file, self._windows.detector_file)
        if loaded == "unreadable":
            self._windows.record_unreadable()

    async def async_save_state(self) -> None:
        """Have the detector write its state (home behaviour) beside the windows.

        The window store counts how that went (a full disk raises the storage repair).
        """
        try:
            err = await self.async_call(self.detector.save_state, self._windows.detector_file)
        except DetectorError as failed:
            LOGGER.warning("GIoT's detector state was not saved: %s", failed)
        else:
            self._windows.record_detector_save(err)

    async def async_close(self) -> None:
        """Stop the detector (its process ends)."""
        await self.async_run(self.detector.close)
