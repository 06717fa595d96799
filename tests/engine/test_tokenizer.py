"""Structured tokens: fixed vocabulary, small per-flow budget, no identities."""

from giot_engine.records import DeviceEvent, FlowRecord
from giot_engine.tokenizer import (
    EVENT_TOKENS,
    FLOW_TOKENS,
    SPECIAL_TOKENS,
    UNK_ID,
    VOCAB_VERSION,
    TokenContext,
    Vocabulary,
    address_scope,
    event_tokens,
    flow_tokens,
    gap_bucket,
    port_class,
)


def _flow(**kw: object) -> FlowRecord:
    base: dict[str, object] = {
        "ts": 1_700_000_000.0,
        "orig_h": "192.168.1.20",
        "orig_p": 40000,
        "resp_h": "8.8.8.8",
        "resp_p": 23,
        "proto": "tcp",
        "conn_state": "S0",
        "history": "S",
        "orig_bytes": 0,
        "resp_bytes": 0,
        "duration": 3.0,
        "orig_pkts": 3,
        "resp_pkts": 0,
        "uid": "Cabc",
    }
    base.update(kw)
    return FlowRecord(**base)  # type: ignore[arg-type]


def test_vocabulary_is_fixed_and_specials_first() -> None:
    v = Vocabulary.default()
    assert v.tokens[: len(SPECIAL_TOKENS)] == list(SPECIAL_TOKENS)
    assert VOCAB_VERSION == "giot-vocab-1"
    assert Vocabulary.default().tokens == v.tokens
    assert len(set(v.tokens)) == len(v)


def test_flow_tokens_all_known_and_small() -> None:
    v = Vocabulary.default()
    toks = flow_tokens(_flow(), TokenContext(prev_ts=1_699_999_999.5, recent_flows=5))
    assert len(toks) == FLOW_TOKENS <= 8
    assert UNK_ID not in v.encode(toks)
    assert toks[0] == "tcp/telnet"
    assert toks[1] == "out/remote"
    assert toks[2] == "st/S0/x"


def test_no_identity_in_tokens() -> None:
    a = flow_tokens(_flow(), TokenContext())
    b = flow_tokens(
        _flow(resp_h="1.2.3.4", orig_h="192.168.1.99", uid="Zzz", orig_p=5555), TokenContext()
    )
    assert a == b
    joined = " ".join(a)
    assert "8.8.8.8" not in joined
    assert "Cabc" not in joined
    assert "1700000000" not in joined


def test_scopes_and_ports() -> None:
    assert address_scope("ff02::fb") == "mcast"
    assert address_scope("fe80::1") == "link"
    assert address_scope("255.255.255.255") == "bcast"
    assert address_scope("192.168.1.1") == "local"
    assert address_scope("not-an-ip") == "unspec"
    assert port_class(2323) == "telnet"
    assert port_class(8080) == "http"
    assert port_class(5000) == "reg"
    assert port_class(60000) == "eph"
    assert gap_bucket(None) == "first"
    assert gap_bucket(5.0) == "10"
    assert gap_bucket(-30.0) == "late"
    assert gap_bucket(-0.5) == "0"


def test_event_tokens_known() -> None:
    ev = DeviceEvent(
        ts=1.0, entity_id="light.k", domain="light", new_state="on", old_state="off", source="user"
    )
    toks = event_tokens(ev, TokenContext())
    assert len(toks) == EVENT_TOKENS
    assert UNK_ID not in Vocabulary.default().encode(toks)
    assert toks[1] == "T/off>on"


def test_tokenizers_json_shape() -> None:
    j = Vocabulary.default().to_tokenizers_json()
    model = j["model"]
    assert isinstance(model, dict)
    assert model["type"] == "WordLevel"
    assert model["vocab"]["[PAD]"] == 0
    assert j["pre_tokenizer"] == {"type": "WhitespaceSplit"}


def test_timeless_context_says_nothing_about_time() -> None:
    """The ablation without time: every record gets one known time token, the rest is as before."""
    vocab = Vocabulary.default()
    night = FlowRecord(1_700_000_000.0, "10.0.0.2", 50000, "8.8.8.8", 53, "udp")
    noon = FlowRecord(1_700_000_000.0 + 12 * 3600, "10.0.0.2", 50000, "8.8.8.8", 53, "udp")
    timed = [flow_tokens(f, TokenContext()) for f in (night, noon)]
    timeless = [flow_tokens(f, TokenContext(timeless=True)) for f in (night, noon)]
    assert timed[0][-1] != timed[1][-1]
    assert timeless[0] == timeless[1]
    assert timeless[0][:-1] == timed[0][:-1]
    assert UNK_ID not in vocab.encode(timeless[0])
