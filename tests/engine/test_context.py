"""Batched scoring in device context: the same numbers as one record at a time, much faster."""

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from giot_engine.context import ContextScorer
from giot_engine.detector import BigramModel, Detector, DetectorConfig, Verdict
from giot_engine.model import GIoTConfig, GIoTModel
from giot_engine.records import DeviceEvent, FlowRecord
from giot_engine.signature import SignatureHead
from giot_engine.tokenizer import BOS_ID, Vocabulary

from .test_detector import benign, scan

VOCAB = Vocabulary.default()
T0 = 1_700_000_000.0


def _model(seed: int = 0) -> GIoTModel:
    """A random model with non-trivial weights: every position and token matters."""
    cfg = GIoTConfig(vocab_size=len(VOCAB), n_positions=64, n_embd=32, n_layer=2, n_head=2)
    model = GIoTModel.init(cfg, seed)
    rng = np.random.default_rng(seed)
    for name, p in model.params.items():
        model.params[name] = p + rng.normal(0.0, 0.05, p.shape).astype(np.float32)
    return model


def _mixed_stream(devices: int, per_device: int) -> list[FlowRecord]:
    """Interleaved flows of several devices, each with its own rhythm, then one scanning."""
    out = []
    for d in range(devices):
        for f in benign(per_device, T0 + 3.0 * d):
            out.append(dataclasses.replace(f, orig_h=f"192.168.1.{60 + d}", uid=f"{d}-{f.uid}"))
    out += scan(60, T0 + 30.0 * per_device + 1)
    out.sort(key=lambda f: f.ts)
    return out


def _events(n: int) -> list[DeviceEvent]:
    states = ["on", "off"]
    return [
        DeviceEvent(
            ts=T0 + 45.0 * i,
            entity_id=f"light.l{i % 3}",
            domain="light",
            old_state=states[(i // 3 + 1) % 2],
            new_state=states[(i // 3) % 2],
            device_id=f"dev{i % 3}",
            source="user" if i % 5 else "automation",
        )
        for i in range(n)
    ]


def _same(a: list[Verdict], b: list[Verdict], tol: float = 1e-3) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.alarm == y.alarm
        assert x.family == y.family
        assert x.severity == y.severity
        assert x.score == pytest.approx(y.score, abs=tol)
        assert (x.explanation is None) == (y.explanation is None)
        if x.explanation is not None and y.explanation is not None:
            assert x.explanation.text == y.explanation.text


def _sliding(model: object, records: list[FlowRecord | DeviceEvent]) -> list[np.ndarray]:
    """The definition: each record's NLL given its device's last 56 tokens, one at a time."""
    history: dict[str, list[int]] = {}
    out = []
    det = Detector(BigramModel(np.zeros((1, 1))))  # only to name devices and make tokens
    for r in records:
        p = det._prepare(r) if isinstance(r, FlowRecord) else det._prepare_event(r)
        ctx = history.setdefault(p.device, [])
        room = min(56, 63 - len(p.ids))
        seq = np.asarray([[BOS_ID, *ctx[max(0, len(ctx) - room) :], *p.ids]])
        out.append(np.asarray(model.token_nll(seq))[0, -len(p.ids) :])  # type: ignore[attr-defined]
        ctx.extend(p.ids)
        del ctx[: max(0, len(ctx) - 56)]
    return out


def test_cached_windows_with_full_carry_are_the_sliding_window() -> None:
    """carry = keep restarts the KV window every record: exactly the per-record definition."""
    model = _model()
    records: list[FlowRecord | DeviceEvent] = [*_mixed_stream(3, 30), *_events(30)]
    records.sort(key=lambda r: r.ts)
    want = _sliding(model, records)
    det = Detector(model, config=DetectorConfig(carry_tokens=56, cached_devices=2))
    preps = [
        det._prepare(r) if isinstance(r, FlowRecord) else det._prepare_event(r) for r in records
    ]
    scorer = ContextScorer(model, 64, 56, 56, max_devices=2)  # fewer windows than devices
    got: list[np.ndarray] = []
    history: dict[str, list[int]] = {}  # what a detector's device state holds (last 56 tokens)
    for lo in range(0, len(preps), 17):  # batches that split devices' streams anywhere
        batch = preps[lo : lo + 17]
        got += scorer.score([(p.device, list(history.get(p.device, [])), p.ids) for p in batch])
        for p in batch:
            history[p.device] = [*history.get(p.device, []), *p.ids][-56:]
    assert scorer.cached_devices == 2
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-4)


def test_cached_windows_grow_from_the_carried_tail() -> None:
    """With a short carry a record sees between carry and 56 tokens: check one device by hand."""
    model = _model(1)
    ids = [list(range(10 + 7 * k, 17 + 7 * k)) for k in range(20)]
    scorer = ContextScorer(model, 64, 56, 14)
    got = scorer.score([("d", [], x) for x in ids])
    window: list[int] = [BOS_ID]
    for x, g in zip(ids, got, strict=True):
        if len(window) + len(x) > 64:
            window = [BOS_ID, *window[-14:]]
        seq = np.asarray([[*window, *x]])
        np.testing.assert_allclose(g, model.token_nll(seq)[0, -7:], rtol=2e-4, atol=2e-4)
        window += x
    assert scorer.cached_devices == 1


def test_a_full_forget_restarts_with_all_the_history_a_record_may_see() -> None:
    """forget(full=True): the next window carries ``keep`` tokens, not ``carry``; then as before."""
    model = _model(2)
    history = list(range(10, 10 + 7 * 12))  # 84 tokens: more than a window keeps
    x = list(range(200, 207))
    scorer = ContextScorer(model, 64, 56, 14)
    scorer.forget("d", full=True)  # a window dropped to take a record out of it
    full = scorer.score([("d", history, x)])[0]
    want = model.token_nll(np.asarray([[BOS_ID, *history[-56:], *x]]))[0, -7:]
    np.testing.assert_allclose(full, want, rtol=2e-4, atol=2e-4)
    scorer.forget("d")  # a plain forget: the short carry again
    short = scorer.score([("d", history, x)])[0]
    want = model.token_nll(np.asarray([[BOS_ID, *history[-14:], *x]]))[0, -7:]
    np.testing.assert_allclose(short, want, rtol=2e-4, atol=2e-4)


def test_window_path_batches_any_token_nll_scorer() -> None:
    bigram = BigramModel(np.random.default_rng(0).random((len(VOCAB), len(VOCAB))) * 5)
    records: list[FlowRecord | DeviceEvent] = [*_mixed_stream(2, 20), *_events(12)]
    records.sort(key=lambda r: r.ts)
    want = _sliding(bigram, records)
    det = Detector(bigram)
    preps = [
        det._prepare(r) if isinstance(r, FlowRecord) else det._prepare_event(r) for r in records
    ]
    got = ContextScorer(bigram, 64, 56, 28).score([(p.device, [], p.ids) for p in preps])
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-9)


@pytest.fixture(scope="module")
def head() -> SignatureHead:
    view = Detector(BigramModel(np.zeros((1, 1))))
    feats, fams = [], []
    for f in benign(200):
        feats.append(view.observe(f)[2])
        fams.append("benign")
    for f in scan(100, T0 + 30.0 * 200):
        feats.append(view.observe(f)[2])
        fams.append("port_scan")
    return SignatureHead.fit(np.asarray(feats), fams)


@pytest.mark.parametrize("carry", [14, 56])
def test_process_many_gives_the_verdicts_of_one_at_a_time(head: SignatureHead, carry: int) -> None:
    config = DetectorConfig(carry_tokens=carry, warmup=10, floor_nats=5.0)
    records: list[FlowRecord | DeviceEvent] = [*_mixed_stream(4, 40), *_events(60)]
    records.sort(key=lambda r: r.ts)
    one = Detector(_model(), head, config)
    want = [one.process(r) if isinstance(r, FlowRecord) else one.process_event(r) for r in records]
    assert any(v.alarm for v in want)  # the scan alarms: the comparison covers alarms and words
    many = Detector(_model(), head, config)
    got: list[Verdict] = []
    for lo in range(0, len(records), 37):
        got += many.process_many(records[lo : lo + 37])
    _same(got, want)
    assert json_equal(one.state_dict(), many.state_dict())
    assert [v.ids for v in got] == [v.ids for v in want]
    assert [v.warmed for v in got] == [v.warmed for v in want]
    assert {len(v.ids) for v in got} == {6, 7}  # events and flows, their tokens as scored
    assert not got[0].warmed
    assert got[-1].warmed


def json_equal(a: object, b: object) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def test_new_weights_restart_every_window() -> None:
    """Cached keys belong to the weights that made them: a new model must not reuse them."""
    a, b = _model(0), _model(1)
    ids = [list(range(10 + 7 * k, 17 + 7 * k)) for k in range(12)]
    history = [i for x in ids[:6] for i in x]
    scorer = ContextScorer(a, 64, 56, 28)
    scorer.score([("d", [], x) for x in ids[:6]])
    scorer.model = b  # e.g. from the thread that trained it, while another one scores
    assert scorer.model is b
    assert scorer.cached_devices == 1  # dropped when the next batch starts, not under its feet
    got = scorer.score([("d", history, x) for x in ids[6:]])
    want = ContextScorer(b, 64, 56, 28).score([("d", history, x) for x in ids[6:]])
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
    det = Detector(a)
    det.process_many(_mixed_stream(2, 5))
    assert det.contexts.cached_devices == 3  # two benign devices and the scanner
    det.model = b
    assert det.model is b
    det.process_many(_mixed_stream(1, 2))
    assert det.contexts.cached_devices == 2  # these two only: the old windows went with a


def test_forget_drops_the_state_and_the_cached_window() -> None:
    det = Detector(_model())
    det.process_many(_mixed_stream(2, 5))
    device = "192.168.1.60"
    assert device in det.devices
    det.forget(device)
    assert device not in det.devices
    assert det.contexts.cached_devices == 2
    det.forget("never seen")  # no error


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    carry=st.sampled_from([0, 7, 14, 28, 56]),
    cached=st.sampled_from([1, 2, 128]),
    cuts=st.lists(st.integers(1, 60), min_size=1, max_size=8),
)
def test_any_batching_gives_the_same_verdicts(
    seed: int, carry: int, cached: int, cuts: list[int]
) -> None:
    """However a stream is cut into batches, and however few windows stay cached: same verdicts."""
    rng = np.random.default_rng(seed)
    records: list[FlowRecord | DeviceEvent] = [*_mixed_stream(3, 12), *_events(15)]
    records = [records[i] for i in rng.permutation(len(records))]
    records.sort(key=lambda r: r.ts)
    config = DetectorConfig(carry_tokens=carry, cached_devices=cached, warmup=5, floor_nats=5.0)
    one = Detector(_MODEL, config=config)
    want = [one.process(r) if isinstance(r, FlowRecord) else one.process_event(r) for r in records]
    many = Detector(_MODEL, config=config)
    got: list[Verdict] = []
    lo = 0
    for cut in [*cuts, len(records)]:
        got += many.process_many(records[lo : lo + cut])
        lo += cut
        if lo >= len(records):
            break
    # a window evicted in between restarts from the device's last ``carry`` tokens, and batches
    # evict at other moments than single records do: equal unless that is a sliding window
    if cached >= 128 or carry == 56:
        _same(got, want)
    else:
        assert [v.ids for v in got] == [v.ids for v in want]
        assert all(np.isfinite(v.score) for v in got)


_MODEL = _model(7)
