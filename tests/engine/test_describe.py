"""Behaviour descriptions and MUD-like profiles from generated flows."""

import numpy as np

from giot_engine.describe import (
    describe,
    describe_expected,
    expected_next,
    learn_behaviours,
    mud_profile,
)
from giot_engine.detector import BigramModel, Detector
from giot_engine.records import FlowRecord
from giot_engine.tokenizer import BOS_ID, Vocabulary

DEV = "192.168.1.30"


def flows() -> list[FlowRecord]:
    out = []
    for i in range(120):
        ts = 1_700_000_000.0 + 60.0 * i
        if i % 3 == 0:
            out.append(
                FlowRecord(
                    ts,
                    DEV,
                    1000 + i,
                    "192.168.1.1",
                    53,
                    "udp",
                    conn_state="SF",
                    orig_bytes=40,
                    resp_bytes=100,
                )
            )
        else:
            out.append(
                FlowRecord(
                    ts,
                    DEV,
                    1000 + i,
                    "52.1.2.3",
                    443,
                    "tcp",
                    conn_state="SF",
                    orig_bytes=900,
                    resp_bytes=4000,
                )
            )
    return out


def test_profile_lists_services_with_scopes() -> None:
    b = learn_behaviours(flows())[DEV]
    prof = mud_profile("hub", b)
    aces = prof["ietf-access-control-list:acls"]["acl"][0]["aces"]["ace"]  # type: ignore[index]
    names = [a["name"] for a in aces]
    assert names == ["tcp-443-remote", "udp-53-local"]
    assert aces[0]["matches"]["tcp"]["destination-port"]["port"] == 443
    assert prof["giot:timing"]["median-gap-s"] == 60.0  # type: ignore[index]
    assert "52.1.2.3" not in str(prof)


def test_sentences_are_deterministic_and_plain() -> None:
    b = learn_behaviours(flows())[DEV]
    s1, s2 = describe(b), describe(b)
    assert s1 == s2
    assert s1[0].startswith("Mostly talks https (443/tcp) to internet hosts (67%)")
    assert "regularly, typically every 60 s" in s1[1]


def test_expected_next_follows_the_model() -> None:
    vocab = Vocabulary.default()
    view = Detector(BigramModel(np.zeros((1, 1))))
    seq = [BOS_ID]
    for f in flows():
        seq += view.observe(f)[1]
    model = BigramModel.fit([seq], len(vocab))
    ctx = view.devices[DEV].ids
    top = expected_next(model, vocab, list(ctx)[-20:], top=2)
    assert {t for t, _ in top} == {"tcp/https", "udp/dns"}
    assert describe_expected(top).startswith("Next, the model expects ")
