"""Virtual hubs from real data: packing, scoring, splitting (synthetic streams, real if present)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fl_server.client_app import examples_processed
from fl_server.run_config import RunConfig
from fl_server.simulation.corpus import Stream, pack, record_surprise, split_hubs
from giot_engine.detector import BigramModel
from giot_engine.tokenizer import BOS_ID, PAD_ID

DATA = Path(os.environ.get("GIOT_DATA", "../shared/data"))


def _stream(source: str, kind: str, n: int, mal_from: int | None = None) -> Stream:
    recs = tuple(tuple(range(10 + i % 5, 17 + i % 5)) for i in range(n))
    mal = np.zeros(n, bool)
    if mal_from is not None:
        mal[mal_from:] = True
    return Stream(source, kind, recs, mal)


def test_pack_keeps_whole_records_and_pads() -> None:
    w = pack([(5, 6, 7), (8, 9), (10, 11, 12)], length=6)
    assert w.tolist() == [[BOS_ID, 5, 6, 7, 8, 9], [BOS_ID, 10, 11, 12, PAD_ID, PAD_ID]]
    assert pack([(1,) * 9], length=6).shape == (0, 6)  # a record longer than a row is dropped


def test_record_surprise_sums_each_records_tokens_given_its_row() -> None:
    s = _stream("a", "flows", 9)
    model = BigramModel.fit(pack(s.records, 32), 64)
    got = record_surprise(model.token_nll, s, 32)
    assert got.shape == (9,)
    # the 5th record starts a new row: its surprise is that of [BOS] + record
    row = np.array([[BOS_ID, *s.records[4]]])
    assert got[4] == pytest.approx(float(model.token_nll(row).sum()))


def test_split_hubs_holds_out_flow_tails_and_apportions_training_hubs() -> None:
    streams = [
        _stream("cap", "flows", 200, mal_from=100),
        _stream("home", "events", 600),
        _stream("tiny", "events", 30),
    ]
    c = split_hubs(streams, num_hubs=10, holdout=0.1)
    assert [h.source for h in c.held_out] == ["cap"]
    assert c.held_out[0].records == 25  # max(25, 10 %)
    assert len(c.train) == 10
    assert c.describe() == {"cap": 2, "home": 7, "tiny": 1}
    assert sum(h.records for h in c.train) == 175 + 600 + 30  # every record once
    # malicious records never enter training windows
    cap = [h for h in c.train if h.source == "cap"]
    # (hub 1 holds records 88-174, benign only up to 99: 12 records, 4 per 32-token row)
    assert cap[1].train_windows(32).shape[0] == 3
    assert cap[0].train_windows(32).shape[0] == 22  # 88 benign records
    with pytest.raises(ValueError, match="at least 3"):
        split_hubs(streams, num_hubs=2)


def test_reply_weight_is_the_work_done_not_the_store_size() -> None:
    cfg = RunConfig.load({}, {"data-source": "corpus", "batch-size": 8})
    full = np.array([[BOS_ID, 5, 6], [BOS_ID, 7, 8]])
    empty = np.array([[BOS_ID, PAD_ID, PAD_ID]])
    assert examples_processed(cfg, full, steps=5) == 40
    assert examples_processed(cfg, np.repeat(full, 50, axis=0), steps=5) == 40
    assert examples_processed(cfg, empty, steps=5) == 0


def test_real_data_gives_non_iid_hubs() -> None:
    if not (DATA / "iot23").is_dir():
        pytest.skip("../shared/data/iot23 absent")
    from fl_server.simulation.corpus import corpus

    c = corpus(str(DATA.resolve()), 30)
    assert len(c.train) == 30
    kinds = {h.kind for h in c.train}
    assert kinds == {"flows", "events"}
    assert any(h.streams[0].malicious.any() for h in c.held_out)
    assert all(h.train_windows(32).shape[1] == 32 for h in c.train)
