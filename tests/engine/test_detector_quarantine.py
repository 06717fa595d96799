"""The quarantine: an alarmed episode's records are never learnt unless a user says "normal"."""

import copy
import json
from dataclasses import replace

import numpy as np

from giot_engine.detector import Detector, DetectorConfig, Held
from giot_engine.hub_detector import InProcessDetector
from giot_engine.records import FlowRecord

from .test_detector import DEV, benign, scan

T_SCAN_PORT = 23


def _attack(t: float) -> list[FlowRecord]:
    """A burst of scan flows, then more of them a minute later (one episode: < off_s apart)."""
    return scan(40, t) + scan(200, t + 60)


def _learnt(det: Detector) -> dict[str, object]:
    """Everything the device has learnt: context, warm-up, calibration, shapes, habits."""
    st = det.devices[DEV]
    return copy.deepcopy({
        "ids": list(st.ids),
        "seen": st.seen,
        "calib": list(st.calib),
        "shapes": dict(st.shapes),
        "hours": list(st.hours),
    })  # fmt: skip


def _ports(hub: InProcessDetector) -> set[int]:
    """Destination ports the device's MUD-shaped profile accepts."""
    description = hub.describe("cam")
    assert description.profile is not None
    aces = description.profile["ietf-access-control-list:acls"]["acl"][0]["aces"]["ace"]
    ports = set()
    for ace in aces:
        for proto in ("tcp", "udp"):
            if proto in ace["matches"]:
                ports.add(ace["matches"][proto]["destination-port"]["port"])
    return ports


def _warm_hub() -> tuple[InProcessDetector, float]:
    hub = InProcessDetector()
    hub.engine.config = replace(hub.engine.config, quarantine=True)  # off by default (see rule)
    pre = benign(80)
    assert not any(v.alarm for v in hub.observe_flows([("cam", f) for f in pre]))
    hub.drain_windows()
    return hub, pre[-1].ts + 5


def test_attack_is_held_out_of_everything_the_device_learns() -> None:
    """Burst, then more attack: none of it reaches context, cache, calibration, profile, windows."""
    hub, t = _warm_hub()
    before = _learnt(hub.engine)
    verdicts = hub.observe_flows([("cam", f) for f in _attack(t)])
    assert all(v.alarm for v in verdicts[5:])
    # the attack stays as loud at its end as at its start: it never became habit
    assert verdicts[-1].score >= verdicts[5].score
    assert _learnt(hub.engine) == before
    assert hub.engine.quarantine(DEV) == {
        "held": 240,
        "episode": True,
        "over_cap": 0,
        "discarded": 0,
    }
    assert T_SCAN_PORT not in _ports(hub)
    assert "23/tcp" not in hub.describe("cam").full
    windows = hub.drain_windows()
    scan_kind = InProcessDetector().engine.process_many(scan(1, t))[0].ids[0]
    assert not np.any(windows.windows == scan_kind)


def test_quarantine_survives_the_state() -> None:
    """Held records and the episode come back with the device's state (a restart, a new child)."""
    det = Detector(InProcessDetector().models.scorer, config=DetectorConfig(quarantine=True))
    for f in benign(80):
        det.process(f)
    for f in scan(40, 1_700_000_000.0 + 30 * 80 + 5):
        det.process(f)
    saved = json.loads(json.dumps(det.state_dict()))
    back = Detector(det.model, config=det.config)
    back.load_state_dict(saved)
    assert back.quarantine(DEV) == det.quarantine(DEV)
    assert back.quarantine(DEV)["held"] == 40
    assert [h.to_dict() for h in back.devices[DEV].held] == [
        h.to_dict() for h in det.devices[DEV].held
    ]
    assert isinstance(back.devices[DEV].held[0], Held)
    assert back.devices[DEV].held[0].record == det.devices[DEV].held[0].record


def test_unconfirmed_end_drops_the_episode_and_learning_resumes() -> None:
    """The device goes quiet past off_s: its held records are dropped, later records learn."""
    hub, t = _warm_hub()
    hub.observe_flows([("cam", f) for f in _attack(t)])
    before = _learnt(hub.engine)
    later = benign(10, t + 60 + 40 + 300)  # the routine again, well after the attack ended
    verdicts = hub.observe_flows([("cam", f) for f in later])
    assert not any(v.alarm for v in verdicts)
    quarantine = hub.engine.quarantine(DEV)
    assert quarantine["held"] == 0
    assert quarantine["episode"] is False
    assert quarantine["discarded"] == 240
    st = hub.engine.devices[DEV]
    assert st.seen == before["seen"] + 10  # the routine is learnt again
    assert T_SCAN_PORT not in _ports(hub)  # the attack never was


def test_mark_normal_releases_the_episode_into_learning() -> None:
    """Marked normal: the held records are learnt now, by the device and its profile/windows."""
    hub, t = _warm_hub()
    hub.observe_flows([("cam", f) for f in _attack(t)])
    seen = hub.engine.devices[DEV].seen
    learnt: list[Held] = []
    previous = hub.engine.on_learnt
    assert previous is not None

    def _spy(device: str, held: Held) -> None:
        learnt.append(held)
        previous(device, held)

    hub.engine.on_learnt = _spy
    windows = hub.mark_normal("cam")
    assert len(learnt) == 240
    assert hub.engine.devices[DEV].seen == seen + 240
    assert hub.engine.quarantine(DEV)["held"] == 0
    assert hub.engine.devices[DEV].on is False
    assert T_SCAN_PORT in _ports(hub)
    scan_kind = learnt[0].ids[0]
    assert len(windows) > 0
    assert np.any(windows == scan_kind)  # the feedback windows carry the released pattern
    # what the device learnt lowers the same pattern's later scores
    again = hub.observe_flows([("cam", f) for f in scan(40, t + 600)])
    assert max(v.score for v in again) < 34.0


def test_a_lone_hot_record_is_learnt_a_window_later() -> None:
    """A hot record that switched nothing on leaves the quarantine once it no longer can."""
    # (no single record switches a device on by itself here: ``k_on`` hot ones are needed)
    det = Detector(
        InProcessDetector().models.scorer, config=DetectorConfig(high_score=1e9, quarantine=True)
    )
    flows = benign(80)
    for f in flows:
        det.process(f)
    odd = FlowRecord(flows[-1].ts + 1, DEV, 50001, "45.1.2.3", 23, "tcp", conn_state="S0")
    late: list[Held] = []
    det.on_learnt = lambda _device, held: late.append(held)
    verdict = det.process(odd)
    assert verdict.held
    assert not verdict.alarm
    seen = det.devices[DEV].seen
    for f in benign(4, odd.ts + 30):  # 30 s apart: the second is past the window
        det.process(f)
    assert [h.record for h in late] == [odd]
    assert det.devices[DEV].seen == seen + 1 + 4
    assert det.quarantine(DEV)["held"] == 0


def test_quarantine_is_capped_and_counts_what_it_turned_away() -> None:
    det = Detector(
        InProcessDetector().models.scorer, config=DetectorConfig(held_max=16, quarantine=True)
    )
    for f in benign(80):
        det.process(f)
    for f in _attack(1_700_000_000.0 + 30 * 80 + 5):
        det.process(f)
    assert det.quarantine(DEV) == {"held": 16, "episode": True, "over_cap": 224, "discarded": 0}


def test_batches_hold_and_learn_as_one_record_at_a_time() -> None:
    """Where the quarantine moves a device's context mid-batch, the batch still agrees."""
    scorer = InProcessDetector().models.scorer
    t = 1_700_000_000.0 + 30 * 80 + 5
    odd = FlowRecord(t - 2, DEV, 50001, "45.1.2.3", 23, "tcp", conn_state="S0")
    records = [*benign(80), odd, *_attack(t), *benign(20, t + 400)]
    config = DetectorConfig(carry_tokens=14, quarantine=True)
    one = Detector(scorer, config=config)
    want = [one.process(r) for r in records]
    many = Detector(scorer, config=config)
    got = []
    for lo in range(0, len(records), 37):
        got += many.process_many(records[lo : lo + 37])
    assert [v.held for v in got] == [v.held for v in want]
    assert sum(v.held for v in got) > 240
    np.testing.assert_allclose([v.score for v in got], [v.score for v in want], atol=1e-3)
    assert json.dumps(many.state_dict(), sort_keys=True) == json.dumps(
        one.state_dict(), sort_keys=True
    )
