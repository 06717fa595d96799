"""Local training: the windows it learns from, and when it runs (nightly, or on demand).

The detector packs the token windows it saw; now and then (and before training) they move into
the window store, which keeps them bounded and across restarts. A window the user marked
normal is feedback and counts ``FEEDBACK_REPEAT`` times. Training runs nightly at
``TRAIN_HOUR`` when ``TRAIN_MIN_NEW_WINDOWS`` came in since the last one, or when asked.
"""

import asyncio
import math
import time
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any

import numpy as np
from homeassistant.core import CALLBACK_TYPE, HomeAssistant, callback
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers.event import async_track_time_change
from homeassistant.util import dt as dt_util

from giot_engine.detector_process import DetectorError
from giot_engine.model_manager import N_POSITIONS, TrainResult

from .const import DOMAIN, LOGGER, MODEL_ORIGIN_LOCAL
from .detector_runner import DetectorRunner
from .models import HubState
from .store import WindowStore

TRAIN_HOUR = 3
TRAIN_MIN_NEW_WINDOWS = 256
FEEDBACK_PREFIX = "feedback:"
FEEDBACK_REPEAT = 8
# Windows move from the detector into the store at most this often (seconds).
WINDOW_FLUSH_S = 60.0


class LocalTraining:
    """Gathers the training windows and trains the local model on them."""

    def __init__(
        self,
        hass: HomeAssistant,
        runner: DetectorRunner,
        windows: WindowStore,
        hub: HubState,
        *,
        changed: Callable[[], Coroutine[Any, Any, None]],
        trained: Callable[[], None],
        failed: Callable[[], None],
    ) -> None:
        """Train on the store's windows; the steps around training come from the coordinator.

        ``changed`` tells the entities; ``trained`` runs after a model was kept (repairs and
        saving), ``failed`` after one was not (repairs).
        """
        self._hass = hass
        self._runner = runner
        self._windows = windows
        self._hub = hub
        self._changed = changed
        self._trained = trained
        self._failed = failed
        self._lock = asyncio.Lock()
        self._collected = -math.inf

    @property
    def lock(self) -> asyncio.Lock:
        """Held while the model trains, locally or for a federated round (one at a time)."""
        return self._lock

    @callback
    def async_start_schedule(self) -> CALLBACK_TYPE:
        """Train nightly (when enough is new); return what stops it."""
        return async_track_time_change(
            self._hass, self._async_scheduled, hour=TRAIN_HOUR, minute=0, second=0
        )

    async def async_collect_due(self) -> None:
        """Collect the detector's new windows when ``WINDOW_FLUSH_S`` passed since last time."""
        if time.monotonic() - self._collected >= WINDOW_FLUSH_S:
            await self.async_collect()

    async def async_collect(self) -> None:
        """Take the detector's new windows into the store, a device at a time (an add copies).

        The detector keeps them packed until now; a detector process that died lost the ones
        since the last call (training material, not state), and its restart begins anew.
        """
        self._collected = time.monotonic()
        try:
            batch = await self._runner.async_call(self._runner.detector.drain_windows)
        except DetectorError as err:
            LOGGER.debug("New windows were not taken into the store: %s", err)
            return
        if not len(batch):
            return
        grouped = await self._hass.async_add_executor_job(batch.by_device)
        for key, (windows, stamps) in grouped.items():
            self._windows.add(key, windows, stamps)
            await asyncio.sleep(0)

    @callback
    def add_feedback(self, key: str, windows: np.ndarray) -> None:
        """Keep windows the user marked normal as feedback (they weigh more in training)."""
        if len(windows):
            self._windows.add(f"{FEEDBACK_PREFIX}{key}", windows, dt_util.utcnow().timestamp())

    def training_windows(self) -> np.ndarray:
        """Every stored window of the model's width, feedback windows repeated (extra weight)."""
        normal: list[np.ndarray] = []
        feedback: list[np.ndarray] = []
        for key in self._windows.devices():
            windows = self._windows.windows(key)
            if windows.shape[1] == N_POSITIONS:
                (feedback if key.startswith(FEEDBACK_PREFIX) else normal).append(windows)
        parts = normal + feedback * FEEDBACK_REPEAT
        return np.concatenate(parts) if parts else np.zeros((0, N_POSITIONS), np.int32)

    async def async_training_windows(self) -> np.ndarray:
        """Collect the detector's new windows, then copy all of them (``training_windows``).

        Megabytes of windows: copied together off the event loop.
        """
        await self.async_collect()
        return await self._hass.async_add_executor_job(self.training_windows)

    def new_windows(self) -> int:
        """Windows stored since the last local training."""
        last = self._hub.last_training
        since = last.timestamp() if last else float("-inf")
        return sum(
            int((self._windows.timestamps(key) > since).sum()) for key in self._windows.devices()
        )

    async def async_train(self) -> TrainResult | None:
        """Train the local model now on the stored windows (executor), keep it, record it.

        Scoring goes on meanwhile (training works on copies). Nothing to train on: None. A
        failed write keeps the previous model, raises the storage repair and the error.
        """
        async with self._lock:
            windows = await self.async_training_windows()
            if len(windows) == 0:
                return None
            self._hub.training = True
            await self._changed()
            seed = int(dt_util.utcnow().timestamp())
            try:
                result = await self._runner.async_action(self._runner.detector.train, windows, seed)
            except OSError as err:
                self._hub.training = False
                self._failed()
                raise HomeAssistantError(
                    translation_domain=DOMAIN,
                    translation_key="model_not_saved",
                    translation_placeholders={"error": str(err)},
                ) from err
            finally:
                self._hub.training = False
            LOGGER.debug("Local training: %s", result)
            self._hub.model_version = result.version
            self._hub.model_origin = MODEL_ORIGIN_LOCAL
            self._hub.last_training = dt_util.utcnow()
            self._trained()
            await self._changed()
            return result

    async def _async_scheduled(self, _now: datetime) -> None:
        """Nightly: train when enough new windows came in since the last training."""
        if self.new_windows() < TRAIN_MIN_NEW_WINDOWS:
            return
        try:
            await self.async_train()
        except (HomeAssistantError, DetectorError) as err:
            LOGGER.warning("Scheduled local training failed: %s", err)
