"""The detector in its own process: same verdicts, no Home Assistant in it, crashes survived."""

import errno
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Generator
from functools import partial
from pathlib import Path
from unittest.mock import patch

import numpy as np
import pytest
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers import device_registry as dr
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.giot.const import DOMAIN
from custom_components.giot.coordinator import GIoTCoordinator
from giot_engine import detector_process
from giot_engine.detector_process import CHUNK, DetectorError, ProcessDetector
from giot_engine.hub_detector import InProcessDetector, WindowBatch, alarming
from giot_engine.records import DeviceEvent, FlowRecord

from .conftest import CAMERA_IP, CAMERA_MAC, normal_flows, scan_flows

SCORE = "sensor.camera_anomaly_score"


@pytest.fixture
def detector() -> Generator[ProcessDetector]:
    """A detector process without files (closed after the test: no process, no thread left)."""
    detector = ProcessDetector(None)
    yield detector
    detector.close()


def _stream(start: float) -> tuple[list[tuple[str, FlowRecord]], list[tuple[str, DeviceEvent]]]:
    """A routine, then a scan, of two devices; a light switched on and off, by hand at the end."""
    flows = [("cam", f) for f in normal_flows(start, 300)]
    flows += [("other", f) for f in normal_flows(start + 5, 300, mac=None)]
    flows += [("cam", f) for f in scan_flows(start + 9100, 60)]
    events = [
        (
            "lamp",
            DeviceEvent(
                start + 60.0 * i,
                "light.lamp",
                "light",
                "on" if i % 2 else "off",
                "off" if i % 2 else "on",
                source="user" if i > 280 else "automation",
                device_id="lamp",
            ),
        )
        for i in range(300)
    ]
    return flows, events


def _gone(pid: int) -> bool:
    """Whether the process has exited (a zombie nobody reaps counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_child_scores_like_in_process(detector: ProcessDetector) -> None:
    """The same stream gives the same verdicts, windows, descriptions and state in both.

    Flows go to the child in chunks of ``CHUNK``; in-process they are one batch.
    """
    local = InProcessDetector()
    detector.load_model()
    local.load_model()
    assert detector.model_version == local.model_version == "giot-untrained"
    assert detector.model_info == local.model_info
    flows, events = _stream(time.time() - 20000)
    assert len(flows) > 2 * CHUNK
    verdicts = detector.observe_flows(flows)
    assert verdicts == local.observe_flows(flows)
    assert any(verdict.alarm for verdict in verdicts)
    assert detector.observe_events(events) == local.observe_events(events)
    assert detector.tick(time.time()) == local.tick(time.time())
    windows, want = detector.drain_windows(), local.drain_windows()
    assert len(windows) > 0
    _assert_same_windows(windows, want)
    assert len(detector.drain_windows()) == 0
    for device in ("cam", "other", "lamp", "unknown"):
        assert detector.describe(device) == local.describe(device)
    assert np.array_equal(detector.mark_normal("cam"), local.mark_normal("cam"))
    assert detector.state() == local.state()
    detector.forget("other")
    local.forget("other")
    assert detector.state() == local.state()
    assert detector.observe_flows([]) == []


def _assert_same_windows(got: WindowBatch, want: WindowBatch) -> None:
    assert got.keys.tolist() == want.keys.tolist()
    assert np.array_equal(got.stamps, want.stamps)
    assert np.array_equal(got.windows, want.windows)
    assert got.windows.dtype == np.int32


def test_batches_reduce_alike(detector: ProcessDetector) -> None:
    """observe_batch in the child equals in-process; it keeps the alarms that matter, in order.

    Per device the first alarming verdict of each kind (it may fire an alert) and the last (what
    the device shows): the coordinator applies the same as with every alarming verdict.
    """
    local, twin = InProcessDetector(), InProcessDetector()
    detector.load_model()
    start = time.time() - 20000
    warm = [("cam", f) for f in normal_flows(start, 300)]
    for target in (detector, local, twin):
        target.observe_flows(warm)
    detector.drain_windows()
    local.drain_windows()
    flows, events = _stream(start + 10000)
    got = detector.observe_batch(flows, events, (0.0, 0.0), True)
    want = local.observe_batch(flows, events, (0.0, 0.0), True)
    assert (got.devices, got.alarming, got.descriptions) == (
        want.devices,
        want.alarming,
        want.descriptions,
    )
    windows = detector.drain_windows()
    assert len(windows) > 0  # kept in the detector until the store asks
    _assert_same_windows(windows, local.drain_windows())
    assert set(want.descriptions) == {"cam", "other", "lamp"}

    verdicts = twin.observe_flows(flows) + twin.observe_events(events)
    assert want.devices["cam"] == (
        sum(v.device == "cam" for v in verdicts),
        next(v.score for v in reversed(verdicts) if v.device == "cam"),
    )
    hits = [v for v in verdicts if alarming(v, 0.0) or v.user_initiated]
    first: dict[tuple[str, str | None], int] = {}
    last: dict[str, int] = {}
    for index, verdict in enumerate(hits):
        first.setdefault((verdict.device, verdict.family), index)
        last[verdict.device] = index
    assert want.alarming == [hits[i] for i in sorted({*first.values(), *last.values()})]
    assert len(hits) > len(want.alarming) > 2
    assert any(v.family == "port_scan" for v in want.alarming)
    assert any(v.user_initiated for v in want.alarming)
    # within DESCRIBE_EVERY_S nothing is described again
    again = detector.observe_batch(flows[:10], [], (0.0, 0.0), False)
    assert again.descriptions == {}


def test_child_imports_no_home_assistant(detector: ProcessDetector) -> None:
    """The child imports the engine, numpy and the standard library: no Home Assistant."""
    detector.load_model()
    modules = detector.loaded_modules()
    assert "homeassistant" in sys.modules  # the tests' own process has it
    assert [name for name in modules if name.split(".")[0] == "homeassistant"] == []
    assert "giot_engine.detector" in modules
    assert "giot_engine.detector_process" in modules
    # nothing of the integration: not its __init__ (Home Assistant), coordinator or entities
    assert [name for name in modules if name.startswith("custom_components")] == []
    assert os.getpriority(os.PRIO_PROCESS, detector.pid or 0) > os.getpriority(os.PRIO_PROCESS, 0)


def test_child_outlives_signals_to_the_group(detector: ProcessDetector) -> None:
    """SIGTERM or SIGINT to every process of Home Assistant's (systemd, a terminal) leave the
    child alive until Home Assistant had it save its state and closed it.
    """
    detector.load_model()
    pid = detector.pid
    assert pid is not None
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        os.kill(pid, signum)
    time.sleep(0.2)
    assert detector.tick(time.time()) == []
    assert detector.pid == pid


def test_close_leaves_no_process(detector: ProcessDetector) -> None:
    """close() stops and reaps the child and its reader thread; later calls say it is closed."""
    detector.load_model()
    pid = detector.pid
    assert pid is not None
    assert any(t.name == f"giot-detector-{pid}" for t in threading.enumerate())
    detector.close()
    assert _gone(pid)
    assert not Path(f"/proc/{pid}").exists()  # reaped, not a zombie
    assert not any(t.name.startswith("giot-detector-") for t in threading.enumerate())
    assert detector.pid is None
    with pytest.raises(DetectorError, match="closed"):
        detector.tick(time.time())
    detector.close()  # twice is fine


def test_close_kills_a_child_busy_too_long(detector: ProcessDetector) -> None:
    """A child still busy when close() has waited long enough is killed; its call fails."""
    detector.load_model()
    pid = detector.pid
    assert pid is not None
    flows, _ = _stream(time.time() - 20000)
    busy = detector._submit("observe_flows", flows * 4)  # seconds of scoring in one request
    with patch.object(detector_process, "STOP_TIMEOUT_S", 0.01):
        detector.close()
    assert not Path(f"/proc/{pid}").exists()
    with pytest.raises(DetectorError, match="was stopped"):
        busy.result(timeout=10)


def test_no_interpreter_is_an_error(detector: ProcessDetector, tmp_path: Path) -> None:
    """A child that cannot be started at all is a DetectorError, not an OSError."""
    with (
        patch.object(detector_process.sys, "executable", str(tmp_path / "no-python")),
        pytest.raises(DetectorError, match="could not start"),
    ):
        detector.load_model()
    assert detector.pid is None


def test_child_exits_when_home_assistant_dies(tmp_path: Path) -> None:
    """A parent killed without closing anything leaves no orphan: the child sees EOF, exits."""
    script = (
        "import os\n"
        "from giot_engine.detector_process import ProcessDetector\n"
        "detector = ProcessDetector(None)\n"
        "detector.load_model()\n"
        "print(detector.pid, flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    parent = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)},
        timeout=60,
        check=False,
    )
    assert parent.returncode == -signal.SIGKILL, parent.stderr
    child = int(parent.stdout.split()[0])
    _wait_until(lambda: _gone(child))


def test_crash_fails_calls_in_flight_then_restarts_from_saved_state(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A killed child fails its calls; the next call starts a fresh one with model and state."""
    detector = ProcessDetector(tmp_path)
    try:
        state_file = tmp_path / "detector_state.json"
        detector.load_model()
        assert detector.load_state_file(state_file) == "missing"
        start = time.time() - 20000
        flows = [("cam", f) for f in normal_flows(start, 100)]
        detector.observe_flows(flows)
        assert detector.save_state(state_file) is None
        saved = detector.state()
        detector.observe_flows([("cam", f) for f in normal_flows(start + 3000, 20)])
        assert detector.state() != saved  # learnt since the save: lost with the process
        windows = detector.drain_windows().windows

        pid = detector.pid
        assert pid is not None
        training = detector._submit("train", windows, 0)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(DetectorError, match="stopped"):
            training.result(timeout=30)
        assert "GIoT's detector process stopped (exit status -9)" in caplog.text
        assert detector.pid is None
        assert detector.model_version == "giot-untrained"  # what the child said last

        assert detector.state() == saved  # a fresh child, from the saved file
        assert detector.pid not in {None, pid}
        result = detector.train(windows, 0)
        assert result.version == detector.model_version == "giot-1"
        assert detector.model_info["trained_windows"] > 0
    finally:
        detector.close()


def test_children_dying_young_are_restarted_later(tmp_path: Path) -> None:
    """A child that dies at once is not restarted in a loop: the delay grows."""
    detector = ProcessDetector(tmp_path)
    try:
        with patch.object(detector_process, "BOOTSTRAP", "raise SystemExit(3)"):
            with pytest.raises(DetectorError, match="exit status 3"):
                detector.load_model()
            with pytest.raises(DetectorError, match="exit status 3"):
                detector.load_model()  # the first young death: started again at once
            with pytest.raises(DetectorError, match="next start in 1 s"):
                detector.load_model()
        assert detector.pid is None
    finally:
        detector.close()


def test_errors_come_back_with_their_type(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An unwritable model or state is an OSError in the caller, counted in the model's info."""
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    detector = ProcessDetector(blocked / "giot")
    try:
        detector.load_model()
        windows = np.full((4, 64), 5, np.int32)
        windows[:, 0] = 2
        with pytest.raises(OSError, match="Not a directory") as err:
            detector.train(windows, 0)
        assert err.value.errno == errno.ENOTDIR
        assert "In GIoT's detector process" in "".join(err.value.__notes__)
        assert detector.model_info["write_errors"] == 1  # refreshed after the failure
        # the child's log record, forwarded with where it was made
        (record,) = [r for r in caplog.records if "could not save its trained" in r.message]
        assert (record.levelno, record.filename) == (logging.ERROR, "model_manager.py")
        failed = detector.save_state(blocked / "sub" / "state.json")
        assert isinstance(failed, OSError)
        assert failed.errno == errno.ENOTDIR
        with pytest.raises(KeyError):
            detector.load_state({"behaviours": {"cam": {}}})
        (tmp_path / "state.json").write_text("[1, 2]")
        with caplog.at_level(logging.WARNING):
            assert detector.load_state_file(tmp_path / "state.json") == "unreadable"
        assert "Ignoring unreadable GIoT detector state: not a JSON object" in caplog.text
    finally:
        detector.close()


# --- in Home Assistant ------------------------------------------------------------------------


async def test_integration_keeps_scoring_after_a_crash(
    hass: HomeAssistant, coordinator: GIoTCoordinator
) -> None:
    """Kill the detector's process: the next batch starts a fresh one with the saved state."""
    detector = coordinator.detector
    assert isinstance(detector, ProcessDetector)
    start = time.time() - 3600
    coordinator.ingest.async_add_flows(normal_flows(start))
    await hass.async_block_till_done()
    await coordinator.hub_store.async_save()
    pid = detector.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    await hass.async_add_executor_job(_wait_until, lambda: detector.pid is None)

    flow = FlowRecord(time.time(), CAMERA_IP, 1, "192.168.1.1", 23, "udp", orig_mac=CAMERA_MAC)
    coordinator.ingest.async_add_flows([flow])
    await hass.async_block_till_done()
    assert detector.pid not in {None, pid}
    # Warm-up and calibration came back from the file: a never seen flow is over the bar.
    assert float(hass.states.get(SCORE).state) > 0
    state = await hass.async_add_executor_job(detector.state)
    assert state["engine"]["devices"][CAMERA_IP]["seen"] == 41
    assert coordinator.ingest.dropped == 0


async def test_batch_lost_with_the_process_is_counted(
    hass: HomeAssistant, coordinator: GIoTCoordinator
) -> None:
    """Calls failing with the process drop their batch (counted), absence and saves go on."""
    gone = DetectorError("GIoT's detector process stopped (exit status -9)")
    with (
        patch.object(ProcessDetector, "observe_batch", side_effect=gone),
        patch.object(ProcessDetector, "tick", side_effect=gone),
        patch.object(ProcessDetector, "save_state", side_effect=gone),
    ):
        coordinator.ingest.async_add_flows(normal_flows(time.time() - 3600, 10))
        await hass.async_block_till_done()
        await coordinator.absence.async_check()
        await coordinator.hub_store.async_save()
    assert coordinator.ingest.dropped == 10
    coordinator.ingest.async_add_flows(normal_flows(time.time() - 3600, 10))
    await hass.async_block_till_done()
    assert hass.states.get(SCORE).state != "unknown"


async def test_no_process_means_detection_in_home_assistant(
    hass: HomeAssistant, giot_entry: MockConfigEntry, caplog: pytest.LogCaptureFixture
) -> None:
    """Where no child process can run, GIoT detects in Home Assistant's executor instead."""
    with patch.object(detector_process, "BOOTSTRAP", "raise SystemExit(3)"):
        assert await hass.config_entries.async_setup(giot_entry.entry_id)
        await hass.async_block_till_done()
    coordinator = giot_entry.runtime_data.coordinator
    assert isinstance(coordinator.detector, InProcessDetector)
    assert "GIoT detects in Home Assistant's process instead" in caplog.text
    coordinator.ingest.async_add_flows(normal_flows(time.time() - 3600, 10))
    await hass.async_block_till_done()
    assert hass.states.get(SCORE).state != "unknown"


async def test_unreadable_state_is_counted(
    hass: HomeAssistant, giot_entry: MockConfigEntry
) -> None:
    """A damaged detector state file is ignored at setup and counted in the store's stats."""
    path = Path(hass.config.path(".storage", "giot", "detector_state.json"))
    await hass.async_add_executor_job(partial(path.parent.mkdir, parents=True))
    await hass.async_add_executor_job(path.write_text, "{not json")
    assert await hass.config_entries.async_setup(giot_entry.entry_id)
    await hass.async_block_till_done()
    assert giot_entry.runtime_data.coordinator.windows.stats.corrupt_files == 1


@pytest.mark.parametrize(
    ("action", "method"),
    [("describe_device", "describe"), ("mark_normal", "mark_normal"), ("train_now", "train")],
)
async def test_actions_say_when_the_detector_stopped(
    hass: HomeAssistant,
    coordinator: GIoTCoordinator,
    camera: dr.DeviceEntry,
    action: str,
    method: str,
) -> None:
    """An action whose detector call dies with the process gets a translated error."""
    coordinator.ingest.async_add_flows(normal_flows(time.time() - 3600))
    await hass.async_block_till_done()
    await coordinator.training.async_collect()
    gone = DetectorError("GIoT's detector process stopped (exit status -9)")
    data = {} if action == "train_now" else {"device_id": camera.id}
    with (
        patch.object(ProcessDetector, method, side_effect=gone),
        pytest.raises(HomeAssistantError) as raised,
    ):
        await hass.services.async_call(
            DOMAIN, action, data, blocking=True, return_response=action == "describe_device"
        )
    assert raised.value.translation_key == "detector_unavailable"
    assert raised.value.translation_placeholders == {"error": str(gone)}
    assert "restarts on the next try" in str(raised.value)


def test_window_batches_group_by_device() -> None:
    """A batch regroups per device, each device's windows in the order they came."""
    first = WindowBatch.of(
        [
            ("cam", np.arange(4), 1.0),
            ("lamp", np.arange(4) + 10, 2.0),
            ("cam", np.arange(4) + 20, 3.0),
        ]
    )
    assert len(first) == 3
    assert first.windows.dtype == np.int32
    grouped = first.by_device()
    assert sorted(grouped) == ["cam", "lamp"]
    assert all(type(key) is str for key in grouped)  # store file names, JSON keys
    cam, cam_stamps = grouped["cam"]
    assert cam[:, 0].tolist() == [0, 20]
    assert cam_stamps.tolist() == [1.0, 3.0]
    lamp, lamp_stamps = grouped["lamp"]
    assert lamp[:, 0].tolist() == [10]
    assert lamp_stamps.tolist() == [2.0]
    assert WindowBatch().by_device() == WindowBatch.of([]).by_device() == {}


async def test_windows_of_a_dead_detector_leave_the_store_as_it_was(
    hass: HomeAssistant, coordinator: GIoTCoordinator, caplog: pytest.LogCaptureFixture
) -> None:
    """The store asks the detector for its new windows; a detector that died keeps the old ones."""
    coordinator.ingest.async_add_flows(normal_flows(time.time() - 3600))
    await hass.async_block_till_done()
    await coordinator.training.async_collect()
    stored = coordinator.windows.total_windows
    assert stored > 0
    coordinator.ingest.async_add_flows(normal_flows(time.time() - 1800))
    await hass.async_block_till_done()
    gone = DetectorError("GIoT's detector process stopped (exit status -9)")
    caplog.set_level(logging.DEBUG)
    with patch.object(ProcessDetector, "drain_windows", side_effect=gone):
        await coordinator.training.async_collect()
    assert coordinator.windows.total_windows == stored
    assert "New windows were not taken into the store" in caplog.text
    await coordinator.training.async_collect()  # the detector still has them
    assert coordinator.windows.total_windows > stored


def test_pending_windows_are_bounded_per_device() -> None:
    """Between two drains a device hands over at most PENDING_PER_DEVICE windows."""
    detector = InProcessDetector()
    detector.PENDING_PER_DEVICE = 16
    start = time.time() - 20000
    flows = [("cam", f) for f in normal_flows(start, 400)] + [
        ("lamp", f) for f in normal_flows(start + 5000, 400)
    ]
    detector.observe_batch(flows, [], (0.0, 0.0), False)
    drained = detector.drain_windows()
    assert sorted(drained.by_device()) == ["cam", "lamp"]
    assert all(len(windows) == 16 for windows, _ in drained.by_device().values())
    detector.observe_batch([("cam", f) for f in normal_flows(start + 9000, 200)], [], (0, 0), False)
    assert len(detector.drain_windows()) == 16  # counted afresh after a drain
