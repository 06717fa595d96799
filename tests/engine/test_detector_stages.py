"""How the two stages make a device alarm: known families, lone novelties, stale records."""

import numpy as np

from giot_engine.detector import BigramModel, Detector, DetectorConfig
from giot_engine.records import FlowRecord
from giot_engine.signature import FAMILIES, FEATURE_NAMES, SignatureHead
from giot_engine.tokenizer import Vocabulary

DEV = "192.168.1.60"
T0 = 1_700_000_000.0


def flow(ts: float, port: int = 53, state: str = "SF", dur: float = 0.01) -> FlowRecord:
    return FlowRecord(ts, DEV, 40000, "192.168.1.1" if port == 53 else "52.1.2.3", port,
                      "udp" if port == 53 else "tcp", f"u{ts}", None, dur, 40, 90, state, "Dd",
                      1, 1)  # fmt: skip


def cnc_head(p_failed: float) -> SignatureHead:
    """A trained-looking head: a failed TCP attempt is C&C with probability ``p_failed``."""
    weights = np.zeros((len(FEATURE_NAMES) + 1, len(FAMILIES)))
    cnc, bias = FAMILIES.index("cnc"), 8.0
    weights[FEATURE_NAMES.index("cur_failed_tcp"), cnc] = bias + np.log(p_failed / (1 - p_failed))
    weights[-1, 1:] = -30.0  # the other families never
    weights[-1, cnc] = -bias  # anything else: C&C with probability ~3e-4
    return SignatureHead(weights, np.zeros(len(FEATURE_NAMES)), np.ones(len(FEATURE_NAMES)))


def detector(head: SignatureHead | None = None, **overrides: object) -> Detector:
    vocab = Vocabulary.default()
    cfg = DetectorConfig(warmup=20, **overrides)  # type: ignore[arg-type]
    return Detector(BigramModel(np.zeros((len(vocab), len(vocab)))), head, cfg, vocab)


def history(det: Detector, every_s: float = 30.0, n: int = 200, s0_every: int = 0) -> float:
    """A quiet DNS habit (with an occasional failed TCP attempt if ``s0_every``); the last time."""
    for i in range(n):
        habit = s0_every and (i < 4 or i % s0_every == 0)  # learnt during warm-up already
        f = flow(T0 + every_s * i, 443, "S0") if habit else flow(T0 + every_s * i)
        assert not det.process(f).alarm
    return T0 + every_s * n


def test_the_head_is_trained_only_when_it_looks_at_its_features() -> None:
    assert not SignatureHead.untrained().trained
    assert cnc_head(0.9).trained


def test_two_known_family_hits_in_a_minute_switch_a_device_on() -> None:
    # the failed attempts are a habit the cache knows: two are neither k_on hot records nor one
    # that is loud enough alone; only the signature stage's own count can switch the device on
    for k_on_signature, alarms in ((2, True), (3, False)):
        det = detector(cnc_head(0.9), k_on_signature=k_on_signature)
        now = history(det, s0_every=25)
        burst = [det.process(flow(now + dt, 443, "S0")) for dt in (0.0, 7.0)]
        assert all(v.attack_probability > 0.7 and v.score < 12.0 for v in burst), burst
        assert burst[-1].alarm is alarms
        assert not burst[0].alarm  # one hit is not enough


def test_a_lone_novelty_needs_the_signature_stage_to_agree() -> None:
    rst = lambda now: flow(now, 80, "RSTR", 125.0)  # noqa: E731 - a first reset, an odd duration
    untrained = detector()
    v = untrained.process(rst(history(untrained)))
    assert v.score >= 12.0
    assert v.alarm
    trained = detector(cnc_head(0.9))
    v = trained.process(rst(history(trained)))
    assert v.score >= 12.0
    assert v.attack_probability < 0.5
    assert not v.alarm  # new, but the head calls it benign: it needs company
    permissive = detector(cnc_head(0.9), alone_attack_probability=0.0)
    assert permissive.process(rst(history(permissive))).alarm


def test_a_stale_record_carries_an_alarm_only_as_a_known_family() -> None:
    def after_alarm(stale: FlowRecord, **overrides: object) -> bool:
        det = detector(cnc_head(0.9), **overrides)
        now = history(det, s0_every=25)
        assert [det.process(flow(now + dt, 443, "S0")).alarm for dt in (0.0, 7.0)][-1]
        return det.process(stale).alarm

    # logged now, started ten minutes ago: about the past, unless it is the attack itself
    now = T0 + 30.0 * 200
    slow_dns = flow(now - 600.0, 53, "SF", 590.0)  # unusual (hot), not a known family, not loud
    assert not after_alarm(slow_dns)
    assert after_alarm(slow_dns, stale_carries_any=True)  # the first sessions' rule
    assert after_alarm(flow(now - 600.0, 443, "S0", 590.0))  # a long C&C attempt ending now
    assert after_alarm(flow(now - 600.0, 53, "S0", 590.0))  # loud enough alone (>= high_score)


def test_a_detector_copies_into_an_independent_twin() -> None:
    import copy

    det = detector(cnc_head(0.9))
    now = history(det, s0_every=25)
    twin = copy.deepcopy(det)  # e.g. one history replayed clean and with anomalies injected
    burst = [flow(now + dt, 443, "S0") for dt in (0.0, 7.0)]
    assert [det.process(f).alarm for f in burst] == [twin.process(f).alarm for f in burst]
    assert twin.contexts._swap is not det.contexts._swap  # each has its own lock
    assert twin.process(flow(now + 30.0)).alarm == det.process(flow(now + 30.0)).alarm
