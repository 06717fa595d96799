"""End to end in a real Home Assistant: injected flows and events drive entities and automations."""

import re
import time
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any
from unittest.mock import patch

import numpy as np
import pytest
from freezegun.api import FrozenDateTimeFactory
from homeassistant.components import automation
from homeassistant.const import STATE_OFF, STATE_ON, STATE_UNAVAILABLE
from homeassistant.core import Context, Event, EventStateChangedData, HomeAssistant, callback
from homeassistant.helpers import area_registry as ar
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers import label_registry as lr
from homeassistant.helpers.event import async_track_state_change_event
from homeassistant.setup import async_setup_component
from pytest_homeassistant_custom_component.common import (
    MockConfigEntry,
    async_fire_time_changed,
    async_mock_service,
)

from custom_components.giot.const import ALARM_HOLD, FederationStatus
from custom_components.giot.coordinator import GIoTCoordinator
from custom_components.giot.models import NodeAddress
from giot_engine.hub_detector import InProcessDetector
from giot_engine.records import DeviceEvent, FlowRecord

from .conftest import CAMERA_ENTITY, REMOTE, normal_flows, scan_flows

ANOMALY = "binary_sensor.camera_anomaly"
ALERT = "event.camera_alert"
SCORE = "sensor.camera_anomaly_score"
BEHAVIOUR = "sensor.camera_behaviour"


async def _warm_up(hass: HomeAssistant, coordinator: GIoTCoordinator) -> float:
    """Feed the camera's routine until the detector is calibrated; return when it ended."""
    start = time.time() - 3600
    coordinator.ingest.async_add_flows(normal_flows(start))
    await hass.async_block_till_done()
    assert hass.states.get(ANOMALY).state == STATE_OFF
    return start + 40 * 30.0


async def test_scan_turns_anomaly_on_and_fires_event(
    hass: HomeAssistant, coordinator: GIoTCoordinator
) -> None:
    """A burst of flows to many ports makes the camera's anomaly sensor and alert event fire."""
    calls = async_mock_service(hass, "test", "alert")
    assert await async_setup_component(
        hass,
        automation.DOMAIN,
        {
            automation.DOMAIN: [
                {
                    "alias": "scan alert",
                    "triggers": [{"trigger": "state", "entity_id": ALERT}],
                    "conditions": [
                        {
                            "condition": "template",
                            "value_template": "{{ trigger.to_state.attributes.event_type"
                            " == 'port_scan' }}",
                        }
                    ],
                    "actions": [
                        {
                            "action": "test.alert",
                            "data": {"severity": "{{ trigger.to_state.attributes.severity }}"},
                        }
                    ],
                },
                {
                    "alias": "problem",
                    "triggers": [{"trigger": "state", "entity_id": ANOMALY, "to": "on"}],
                    "actions": [{"action": "test.alert", "data": {"severity": "problem"}}],
                },
            ]
        },
    )
    assert hass.states.get(ALERT).state == "unknown"
    end = await _warm_up(hass, coordinator)
    assert hass.states.get(BEHAVIOUR).state.startswith("Mostly talks https (443/tcp)")
    assert float(hass.states.get(SCORE).state) < 0

    coordinator.ingest.async_add_flows(scan_flows(end + 10))
    await hass.async_block_till_done()

    anomaly = hass.states.get(ANOMALY)
    assert anomaly.state == STATE_ON
    assert anomaly.attributes["alert_type"] == "port_scan"
    alert = hass.states.get(ALERT)
    assert alert.attributes["event_type"] == "port_scan"
    assert alert.attributes["severity"] in {"low", "medium", "high"}
    assert re.search(r"\d connection attempts? in the last minute", alert.attributes["explanation"])
    assert sorted(call.data["severity"] for call in calls) == sorted(
        [alert.attributes["severity"], "problem"]
    )

    # Continuing the scan within the hold fires no second event: one scan, one alert.
    coordinator.ingest.async_add_flows(scan_flows(end + 15))
    await hass.async_block_till_done()
    assert len(calls) == 2


async def test_alarm_clears_after_hold(
    hass: HomeAssistant, coordinator: GIoTCoordinator, freezer: FrozenDateTimeFactory
) -> None:
    """The anomaly sensor goes back off once no alarming verdict came for the hold time."""
    end = await _warm_up(hass, coordinator)
    coordinator.ingest.async_add_flows(scan_flows(end + 10))
    await hass.async_block_till_done()
    assert hass.states.get(ANOMALY).state == STATE_ON
    freezer.tick(ALARM_HOLD + timedelta(minutes=1))
    # The camera kept up its routine meanwhile (else it would now be silent: see test_absence).
    coordinator.ingest.async_add_flows(normal_flows(time.time() - 300, 10))
    await hass.async_block_till_done()
    async_fire_time_changed(hass)
    await hass.async_block_till_done(wait_background_tasks=True)
    assert hass.states.get(ANOMALY).state == STATE_OFF


async def test_score_and_anomaly_agree_at_every_update(
    hass: HomeAssistant, coordinator: GIoTCoordinator, freezer: FrozenDateTimeFactory
) -> None:
    """Through an alarm and its end, the score sensor and the anomaly sensor never disagree.

    One meaning: while the anomaly is on, the score shows the episode's peak (at or over the
    bar the anomaly turned on from); while it is off, the latest record's score. The camera's
    routine goes on during the scan, so the latest score is often normal while the alarm holds.
    """
    end = await _warm_up(hass, coordinator)
    device = coordinator.devices[next(iter(coordinator.devices))]
    bar = coordinator.threshold(is_event=False)
    shown: list[float] = []  # what the score sensor showed during the episode
    written: list[tuple[str, float]] = []  # both entities' states after every write of either
    failures: list[str] = []

    @callback
    def _after_write(_event: Event[EventStateChangedData]) -> None:
        # Both entities write on one signal; the pair is looked at once the signal is through.
        def _pair() -> None:
            anomaly, score_state = hass.states.get(ANOMALY), hass.states.get(SCORE)
            if not unsub or anomaly is None or score_state is None:
                return  # the test is over
            if STATE_UNAVAILABLE in (anomaly.state, score_state.state):
                return  # the entry unloads
            score = float(score_state.state)
            written.append((anomaly.state, score))
            if anomaly.state == STATE_ON and score < bar:
                failures.append(f"anomaly on with score {score}")

        hass.loop.call_soon(_pair)

    unsub = [async_track_state_change_event(hass, [ANOMALY, SCORE], _after_write)]

    def _agree() -> bool:
        anomaly = hass.states.get(ANOMALY).state
        score = float(hass.states.get(SCORE).state)
        if anomaly == STATE_ON:
            assert score >= bar
            assert not shown or score >= shown[-1]  # a peak only rises within an episode
            shown.append(score)
        else:
            assert device.score is not None
            assert score == pytest.approx(device.score, abs=0.01)  # the latest record's
        return anomaly == STATE_ON

    updates = [scan_flows(end + 10, 10), normal_flows(end + 12, 1)]
    updates += [
        scan_flows(end + 20 + 10 * k, 5) + normal_flows(end + 25 + 10 * k, 1) for k in range(3)
    ]
    updates += [normal_flows(end + 60 + 30 * k, 1) for k in range(3)]
    on = []
    for flows in updates:
        coordinator.ingest.async_add_flows(flows)
        await hass.async_block_till_done()
        on.append(_agree())
    assert all(on)  # the scan alarmed and the hold kept the alarm on
    assert device.score is not None
    assert device.score < 0  # the routine scored normal meanwhile
    assert min(shown) >= 0

    freezer.tick(ALARM_HOLD + timedelta(minutes=1))
    coordinator.ingest.async_add_flows(normal_flows(time.time() - 300, 10))
    await hass.async_block_till_done()
    async_fire_time_changed(hass)
    await hass.async_block_till_done(wait_background_tasks=True)
    assert not _agree()
    assert float(hass.states.get(SCORE).state) < 0
    unsub.pop()()
    assert not failures
    assert len(written) >= len(updates)  # every update was looked at
    assert (STATE_ON, max(shown)) in written


async def test_network_only_device(hass: HomeAssistant, coordinator: GIoTCoordinator) -> None:
    """Without a MAC HA knows, the camera's address is a network-only device on the hub."""
    coordinator.ingest.async_add_flows(normal_flows(time.time(), 5, mac=None))
    await hass.async_block_till_done()
    network = hass.states.get("event.giot_network")
    assert network.attributes["event_type"] == "new_device"
    assert network.attributes["severity"] == "low"
    assert hass.states.get("sensor.giot_192_168_1_50_behaviour").state.startswith(
        "Mostly talks https (443/tcp)"
    )
    assert hass.states.get("binary_sensor.giot_192_168_1_50_anomaly").state == STATE_OFF

    # Remote-only flows belong to no device on the home network.
    coordinator.ingest.async_add_flows(
        [FlowRecord(time.time(), "8.8.8.8", 53, "1.1.1.1", 53, "udp")]
    )
    await hass.async_block_till_done()
    assert "net:8.8.8.8" not in coordinator.devices


async def test_away_mode_changes_expectations(
    hass: HomeAssistant, coordinator: GIoTCoordinator
) -> None:
    """Away mode reports a device operated by hand, which at home is routine."""
    hass.states.async_set(CAMERA_ENTITY, "on")
    await hass.async_block_till_done()
    assert hass.states.get(ANOMALY).state == STATE_OFF
    assert coordinator.threshold(is_event=True) == 0.0

    await hass.services.async_call(
        "switch", "turn_on", {"entity_id": "switch.giot_away_mode"}, blocking=True
    )
    assert coordinator.threshold(is_event=True) == pytest.approx(-6.0)
    assert coordinator.threshold(is_event=False) == pytest.approx(-2.0)
    # Someone switches the camera by hand: the state collector sees a user context.
    hass.states.async_set(CAMERA_ENTITY, "off", context=Context(user_id="someone"))
    await hass.async_block_till_done()
    anomaly = hass.states.get(ANOMALY)
    assert anomaly.state == STATE_ON
    assert anomaly.attributes["alert_type"] == "unusual_activity"
    assert anomaly.attributes["explanation"].endswith("by hand while the home is away")

    await hass.services.async_call(
        "switch", "turn_off", {"entity_id": "switch.giot_away_mode"}, blocking=True
    )
    assert coordinator.threshold(is_event=False) == 0.0


@pytest.mark.parametrize(("sensitivity", "bar"), [("low", 4.0), ("high", -3.0)])
async def test_sensitivity_moves_the_bar(
    camera_entry_options: Callable[..., Coroutine[Any, Any, MockConfigEntry]],
    sensitivity: str,
    bar: float,
) -> None:
    """Low sensitivity asks more surprise than the engine, high asks less (once warmed up)."""
    entry = await camera_entry_options(sensitivity=sensitivity)
    coordinator: GIoTCoordinator = entry.runtime_data.coordinator
    assert coordinator.threshold(is_event=False) == bar


async def test_snooze_keeps_device_quiet(
    hass: HomeAssistant, coordinator: GIoTCoordinator, freezer: FrozenDateTimeFactory
) -> None:
    """A snoozed device is scored but neither alarms nor fires until the snooze ends."""
    end = await _warm_up(hass, coordinator)
    await hass.services.async_call(
        "giot", "snooze", {"entity_id": ANOMALY, "duration": {"minutes": 30}}, blocking=True
    )
    coordinator.ingest.async_add_flows(scan_flows(end + 10))
    await hass.async_block_till_done()
    anomaly = hass.states.get(ANOMALY)
    assert anomaly.state == STATE_OFF
    assert anomaly.attributes["snoozed_until"] is not None
    assert hass.states.get(ALERT).state == "unknown"
    assert hass.states.get(BEHAVIOUR).attributes["observations"] == 70  # still scored

    freezer.tick(timedelta(minutes=31))
    async_fire_time_changed(hass)
    await hass.async_block_till_done(wait_background_tasks=True)
    assert hass.states.get(ANOMALY).attributes["snoozed_until"] is None


async def test_mark_normal_clears_alarm(hass: HomeAssistant, coordinator: GIoTCoordinator) -> None:
    """Feedback clears the device's alarm at once."""
    end = await _warm_up(hass, coordinator)
    coordinator.ingest.async_add_flows(scan_flows(end + 10))
    await hass.async_block_till_done()
    assert hass.states.get(ANOMALY).state == STATE_ON
    await hass.services.async_call(
        "giot", "mark_normal", {"entity_id": CAMERA_ENTITY}, blocking=True
    )
    assert hass.states.get(ANOMALY).state == STATE_OFF


def test_mark_normal_lowers_later_scores_of_that_kind() -> None:
    """Two detectors see the same stream; the one told "normal" scores that kind 8 nats lower."""
    plain, taught = InProcessDetector(), InProcessDetector()
    start = 1_700_000_000.0
    warm = [("cam", f) for f in normal_flows(start)]
    first = [("cam", f) for f in scan_flows(start + 1210)]
    again = [("cam", f) for f in scan_flows(start + 1400)]
    for detector in (plain, taught):
        detector.observe_flows(warm)
        assert any(verdict.alarm for verdict in detector.observe_flows(first))
    taught.mark_normal("cam")
    taught.mark_normal("nobody")  # nothing alarmed there: nothing to learn
    later_plain = plain.observe_flows(again)
    later_taught = taught.observe_flows(again)
    diffs = [p.score - t.score for p, t in zip(later_plain, later_taught, strict=True)]
    assert np.allclose([d for d in diffs if d], InProcessDetector.FEEDBACK_NATS, atol=1e-3)
    assert any(diffs)
    assert sum(v.alarm for v in later_taught) <= sum(v.alarm for v in later_plain)


async def test_device_events_are_scored(hass: HomeAssistant, coordinator: GIoTCoordinator) -> None:
    """The watched entities' state changes reach the detector and the description."""
    for i in range(6):
        hass.states.async_set(CAMERA_ENTITY, "on" if i % 2 == 0 else "off")
        await hass.async_block_till_done()
    behaviour = hass.states.get(BEHAVIOUR)
    assert behaviour.state.startswith(f"Usual changes: {CAMERA_ENTITY}")
    assert behaviour.attributes["observations"] == 6


async def test_entry_without_options_links_nothing(
    hass: HomeAssistant, mock_config_entry: MockConfigEntry
) -> None:
    """With nothing chosen only the hub entities exist."""
    mock_config_entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(mock_config_entry.entry_id)
    await hass.async_block_till_done()
    # federation is off until a node is paired
    assert hass.states.get("sensor.giot_federation_status").state == "disabled"
    assert hass.states.get(ANOMALY) is None
    coordinator: GIoTCoordinator = mock_config_entry.runtime_data.coordinator
    coordinator.ingest.async_add_event(DeviceEvent(time.time(), "light.x", "light", "on"))
    await hass.async_block_till_done()
    assert coordinator.devices == {}


async def test_areas_and_labels_choose_devices(
    hass: HomeAssistant,
    camera: dr.DeviceEntry,
    camera_entry_options: Callable[..., Coroutine[Any, Any, MockConfigEntry]],
) -> None:
    """A device is watched when its area or one of its labels is chosen."""
    area = ar.async_get(hass).async_create("Hall")
    label = lr.async_get(hass).async_create("Outdoor")
    dev_reg = dr.async_get(hass)
    dev_reg.async_update_device(camera.id, area_id=area.id, labels={label.label_id})
    entry = await camera_entry_options(devices=[], areas=[area.id], labels=[label.label_id])
    assert set(entry.runtime_data.coordinator.devices) == {camera.id}


async def test_device_joining_a_watched_area_is_watched(
    hass: HomeAssistant,
    camera: dr.DeviceEntry,
    camera_entry_options: Callable[..., Coroutine[Any, Any, MockConfigEntry]],
) -> None:
    """No reload needed: the camera moved into a watched area gets entities with its events."""
    area = ar.async_get(hass).async_create("Hall")
    entry = await camera_entry_options(devices=[], areas=[area.id])
    assert entry.runtime_data.coordinator.devices == {}
    assert not [e for e in hass.states.async_entity_ids() if e.endswith("_behaviour")]

    dr.async_get(hass).async_update_device(camera.id, area_id=area.id)
    await hass.async_block_till_done()
    hass.states.async_set(CAMERA_ENTITY, "on")
    await hass.async_block_till_done()
    assert set(entry.runtime_data.coordinator.devices) == {camera.id}
    # Named after the area now that the device has one.
    assert hass.states.get("sensor.hall_camera_behaviour").attributes["observations"] == 1
    assert hass.states.get("binary_sensor.hall_camera_anomaly").state == STATE_OFF


async def test_federation_status_follows_options_and_switch(
    hass: HomeAssistant,
    camera_entry_options: Callable[..., Coroutine[Any, Any, MockConfigEntry]],
) -> None:
    """Disabled in the options, not paired without a node, paused by the switch, else the link."""
    entry = await camera_entry_options(federation=False)
    assert hass.states.get("sensor.giot_federation_status").state == "disabled"
    coordinator: GIoTCoordinator = entry.runtime_data.coordinator
    coordinator.federation_enabled = True
    coordinator.async_update_listeners()
    assert hass.states.get("sensor.giot_federation_status").state == "not_paired"
    coordinator.node = NodeAddress("192.0.2.10", 9093)
    await hass.services.async_call(
        "switch", "turn_on", {"entity_id": "switch.giot_pause_federated_training"}, blocking=True
    )
    assert hass.states.get("sensor.giot_federation_status").state == "paused"
    await hass.services.async_call(
        "switch", "turn_off", {"entity_id": "switch.giot_pause_federated_training"}, blocking=True
    )
    coordinator.hub.federation_status = FederationStatus.CONNECTED
    coordinator.hub.federation_training = True
    coordinator.async_update_listeners()
    assert hass.states.get("sensor.giot_federation_status").state == "training"
    coordinator.hub.federation_training = False
    coordinator.async_update_listeners()
    assert hass.states.get("sensor.giot_federation_status").state == "connected"


async def test_backlog_is_bounded(hass: HomeAssistant, coordinator: GIoTCoordinator) -> None:
    """A flood of input beyond the queue bound is dropped (counted), never kept in memory."""
    with patch("custom_components.giot.ingest.MAX_PENDING", 10):
        coordinator.ingest.async_add_flows(normal_flows(time.time(), 25))
        await hass.async_block_till_done()
    assert coordinator.ingest.dropped == 15
    assert coordinator.devices[next(iter(coordinator.devices))].observations == 10


def test_flood_is_named_and_stale_state_dropped() -> None:
    """Many flows to one peer in a minute make a flood; a state of another version is dropped."""
    detector = InProcessDetector()
    detector.load_state({"engine": {"version": -1}})
    start = 1_700_000_000.0
    detector.observe_flows([("cam", f) for f in normal_flows(start)])
    flood = [
        ("cam", FlowRecord(start + 1300 + i * 0.01, "192.168.1.50", 1000 + i, REMOTE, 80, "udp"))
        for i in range(320)
    ]
    verdicts = detector.observe_flows(flood)
    assert verdicts[0].score > 0  # a new kind of flow for this device
    assert verdicts[0].family is None
    assert verdicts[-1].family == "flood"  # what an alarm now would be called
