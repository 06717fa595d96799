"""Local training of the GIoT model in a real Home Assistant: learns, persists, fails safely."""

import errno
import time
from collections.abc import Generator
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest.mock import patch

import numpy as np
import pytest
from freezegun.api import FrozenDateTimeFactory
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers import issue_registry as ir
from homeassistant.util import dt as dt_util
from pytest_homeassistant_custom_component.common import MockConfigEntry, async_fire_time_changed

from custom_components.giot.const import DOMAIN
from custom_components.giot.coordinator import GIoTCoordinator
from custom_components.giot.training import FEEDBACK_PREFIX
from giot_engine.detector_process import ProcessDetector
from giot_engine.hub_detector import InProcessDetector
from giot_engine.model import GIoTModel

from .conftest import CAMERA_ENTITY, normal_flows, scan_flows

MODEL = "sensor.giot_model_version"
CONFIG = InProcessDetector().models.config


def _detector(coordinator: GIoTCoordinator) -> ProcessDetector:
    assert isinstance(coordinator.detector, ProcessDetector)
    return coordinator.detector


async def _params(hass: HomeAssistant, coordinator: GIoTCoordinator) -> dict[str, np.ndarray]:
    """The weights that score in the detector's process."""
    return await hass.async_add_executor_job(_detector(coordinator).model_params)


def _nll(params: dict[str, np.ndarray], windows: np.ndarray) -> float:
    return float(GIoTModel(CONFIG, params).token_nll(windows).mean())


@pytest.fixture
def in_process() -> Generator[None]:
    """Detect in Home Assistant's process, where a test can patch what the model does."""
    with patch("custom_components.giot.coordinator.ProcessDetector", InProcessDetector):
        yield


def _model_dir(hass: HomeAssistant) -> Path:
    return Path(hass.config.path(".storage", DOMAIN, "model"))


async def _feed(hass: HomeAssistant, coordinator: GIoTCoordinator, count: int = 200) -> float:
    """Feed the camera's routine; return when it ended."""
    start = time.time() - 30.0 * count - 600
    coordinator.ingest.async_add_flows(normal_flows(start, count))
    await hass.async_block_till_done()
    return start + 30.0 * count


async def test_train_now_learns_from_stored_windows(
    hass: HomeAssistant, coordinator: GIoTCoordinator
) -> None:
    """Training lowers the model's loss on the stored windows, bumps the version, writes files."""
    await _feed(hass, coordinator)
    windows = coordinator.training.training_windows()
    assert windows.shape[0] >= 40
    assert windows.shape[1] == 64
    assert np.all(windows[:, 0] == 2)  # every window starts with [BOS], as scoring does
    detector = _detector(coordinator)
    before = _nll(await _params(hass, coordinator), windows)
    assert hass.states.get(MODEL).state == "giot-untrained"
    assert hass.states.get(MODEL).attributes["scorer"] == "bigram"

    await hass.services.async_call("button", "press", {"entity_id": "button.giot_train_now"})
    await hass.async_block_till_done()

    params = await _params(hass, coordinator)
    after = _nll(params, windows)
    assert after < before - 0.5
    state = hass.states.get(MODEL)
    assert state.state == "giot-1"
    assert state.attributes["trained_windows"] > 0
    assert state.attributes["last_loss"] == pytest.approx(after, abs=0.3)
    assert detector.model_info["optimizer_steps"] >= 20
    files = {path.name for path in _model_dir(hass).iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "optimizer.npz"} <= files
    saved = GIoTModel.from_pretrained(_model_dir(hass))
    for name, value in params.items():
        assert np.array_equal(saved.params[name], value)

    await hass.services.async_call(DOMAIN, "train_now", {}, blocking=True)
    assert hass.states.get(MODEL).state == "giot-2"
    assert detector.model_info["optimizer_steps"] >= 40  # AdamW resumed, not restarted


async def test_model_survives_restart(
    hass: HomeAssistant, init_integration: MockConfigEntry
) -> None:
    """Unload and set up again: the same weights, optimizer state, scorer and version."""
    coordinator: GIoTCoordinator = init_integration.runtime_data.coordinator
    await _feed(hass, coordinator)
    await hass.services.async_call(DOMAIN, "train_now", {}, blocking=True)
    params = await _params(hass, coordinator)
    info = _detector(coordinator).model_info
    assert info["optimizer_steps"] > 0

    assert await hass.config_entries.async_unload(init_integration.entry_id)
    await hass.async_block_till_done()
    assert await hass.config_entries.async_setup(init_integration.entry_id)
    await hass.async_block_till_done()

    restored = init_integration.runtime_data.coordinator
    assert restored is not coordinator
    restored_params = await _params(hass, restored)
    assert restored_params.keys() == params.keys()
    for name, value in params.items():
        assert np.array_equal(restored_params[name], value)
    # the optimizer's step count, scorer, losses: all but what the last run took
    assert _detector(restored).model_info | {
        "last_training_steps": None,
        "last_training_seconds": None,
    } == (info | {"last_training_steps": None, "last_training_seconds": None})
    assert hass.states.get(MODEL).state == "giot-1"


async def test_mark_normal_lowers_the_pattern_and_survives_restart(
    hass: HomeAssistant, init_integration: MockConfigEntry
) -> None:
    """The action lowers later scores of the alarm's kind by 8 nats; a restart keeps that."""
    coordinator: GIoTCoordinator = init_integration.runtime_data.coordinator
    end = await _feed(hass, coordinator, 60)
    coordinator.ingest.async_add_flows(scan_flows(end + 10))
    await hass.async_block_till_done()
    device = next(iter(coordinator.devices))
    before = _detector(coordinator).state()
    await hass.services.async_call(
        DOMAIN, "mark_normal", {"entity_id": CAMERA_ENTITY}, blocking=True
    )
    after = _detector(coordinator).state()
    assert after["dampen"] == {device: {"port_scan": InProcessDetector.FEEDBACK_NATS}}

    def _replay(state: dict[str, Any]) -> list[float]:
        detector = InProcessDetector()  # same untrained model as the hub's
        detector.load_state(state)
        flows = [(device, flow) for flow in scan_flows(end + 400)]
        return [verdict.score for verdict in detector.observe_flows(flows)]

    plain, taught = _replay(before), _replay(after)
    diffs = [p - t for p, t in zip(plain, taught, strict=True)]
    assert sum(1 for d in diffs if d) >= 15  # the flows named a port scan
    assert np.allclose([d for d in diffs if d], InProcessDetector.FEEDBACK_NATS, atol=1e-3)

    assert await hass.config_entries.async_reload(init_integration.entry_id)
    await hass.async_block_till_done()
    restored = _detector(init_integration.runtime_data.coordinator).state()
    assert restored["dampen"] == after["dampen"]


async def test_mark_normal_is_learnt_by_training(
    hass: HomeAssistant, coordinator: GIoTCoordinator
) -> None:
    """A pattern marked normal scores lower after train_now than it did with the offset alone."""
    end = await _feed(hass, coordinator, 60)
    coordinator.ingest.async_add_flows(scan_flows(end + 10))
    await hass.async_block_till_done()
    assert hass.states.get("binary_sensor.camera_anomaly").state == "on"
    await hass.services.async_call(
        DOMAIN, "mark_normal", {"entity_id": CAMERA_ENTITY}, blocking=True
    )
    device = next(iter(coordinator.devices))
    feedback = coordinator.windows.windows(f"{FEEDBACK_PREFIX}{device}")
    assert len(feedback) > 0
    assert len(coordinator.training.training_windows()) == (
        coordinator.windows.total_windows - len(feedback) + 8 * len(feedback)
    )

    detector = _detector(coordinator)
    saved = detector.state()
    again = [(device, flow) for flow in scan_flows(end + 400)]

    async def _scores() -> float:
        await hass.async_add_executor_job(detector.load_state, saved)
        verdicts = await hass.async_add_executor_job(detector.observe_flows, again)
        return float(np.mean([v.score for v in verdicts]))

    untrained = await _scores()
    feedback_loss = _nll(await _params(hass, coordinator), feedback)
    await hass.services.async_call(DOMAIN, "train_now", {}, blocking=True)
    trained = await _scores()
    assert trained < untrained - 1.0
    assert _nll(await _params(hass, coordinator), feedback) < feedback_loss - 0.5


async def test_failed_write_keeps_previous_model(
    hass: HomeAssistant, in_process: None, coordinator: GIoTCoordinator
) -> None:
    """A full disk: the old files and weights stay, training reports it, a repair is raised.

    In Home Assistant's process, where the write can be made to fail; that the detector's
    process reports the error the same way is tested in test_engine_process.
    """
    await _feed(hass, coordinator)
    await hass.services.async_call(DOMAIN, "train_now", {}, blocking=True)
    detector = coordinator.detector
    assert isinstance(detector, InProcessDetector)
    params = {name: value.copy() for name, value in detector.models.model.params.items()}
    files = {p.name: p.read_bytes() for p in _model_dir(hass).iterdir()}

    full = OSError(errno.ENOSPC, "No space left on device")
    with (
        patch.object(GIoTModel, "save_pretrained", side_effect=full),
        pytest.raises(HomeAssistantError) as err,
    ):
        await hass.services.async_call(DOMAIN, "train_now", {}, blocking=True)
    assert err.value.translation_key == "model_not_saved"
    assert str(err.value) == (
        "The trained model could not be saved ([Errno 28] No space left on device); "
        "the previous model is kept"
    )

    for name, value in params.items():
        assert np.array_equal(detector.models.model.params[name], value)
    assert {p.name: p.read_bytes() for p in _model_dir(hass).iterdir()} == files
    assert [p.name for p in _model_dir(hass).parent.iterdir() if p.name.startswith(".")] == []
    assert hass.states.get(MODEL).state == "giot-1"
    assert coordinator.hub.training is False
    issues = ir.async_get(hass)
    assert issues.async_get_issue(DOMAIN, "storage_full") is not None
    assert detector.model_info["disk_full"] is True

    await hass.services.async_call(DOMAIN, "train_now", {}, blocking=True)
    assert hass.states.get(MODEL).state == "giot-2"
    assert issues.async_get_issue(DOMAIN, "storage_full") is None


async def test_nightly_training_needs_new_windows(
    hass: HomeAssistant, coordinator: GIoTCoordinator, freezer: FrozenDateTimeFactory
) -> None:
    """At 03:00 the hub trains only when enough windows came in since the last training."""
    night = (dt_util.now() + timedelta(days=1)).replace(hour=3, minute=0, second=0, microsecond=0)
    freezer.move_to(night - timedelta(hours=1))
    await _feed(hass, coordinator, 40)
    with patch("custom_components.giot.training.TRAIN_MIN_NEW_WINDOWS", 1000):
        freezer.move_to(night)
        async_fire_time_changed(hass)
        await hass.async_block_till_done(wait_background_tasks=True)
    assert hass.states.get(MODEL).state == "giot-untrained"
    with patch("custom_components.giot.training.TRAIN_MIN_NEW_WINDOWS", 5):
        freezer.move_to(night + timedelta(days=1))
        async_fire_time_changed(hass)
        await hass.async_block_till_done(wait_background_tasks=True)
    assert hass.states.get(MODEL).state == "giot-1"


async def test_global_model_drops_in(hass: HomeAssistant, giot_entry: MockConfigEntry) -> None:
    """A model saved in HF layout without GIoT's notes is a global model: it scores at once."""
    global_model = GIoTModel.init(CONFIG, seed=7)
    await hass.async_add_executor_job(global_model.save_pretrained, _model_dir(hass))
    assert await hass.config_entries.async_setup(giot_entry.entry_id)
    await hass.async_block_till_done()
    params = await _params(hass, giot_entry.runtime_data.coordinator)
    assert hass.states.get(MODEL).state == "giot-global"
    assert hass.states.get(MODEL).attributes["scorer"] == "giot"
    for name, value in global_model.params.items():
        assert np.array_equal(params[name], value)
