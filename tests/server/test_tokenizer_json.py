"""The engine's vocabulary loads in Hugging Face tokenizers and encodes identically."""

import json

from tokenizers import Tokenizer

from giot_engine.records import FlowRecord
from giot_engine.tokenizer import TokenContext, Vocabulary, flow_tokens


def test_hf_tokenizer_encodes_like_engine() -> None:
    v = Vocabulary.default()
    tok = Tokenizer.from_str(json.dumps(v.to_tokenizers_json()))
    assert tok.get_vocab_size() == len(v)
    f = FlowRecord(
        ts=1e9,
        orig_h="10.0.0.2",
        orig_p=1,
        resp_h="9.9.9.9",
        resp_p=443,
        proto="tcp",
        conn_state="SF",
        history="ShADadFf",
        orig_bytes=300,
        resp_bytes=5000,
    )
    toks = flow_tokens(f, TokenContext(prev_ts=1e9 - 30))
    assert tok.encode(" ".join(toks)).ids == v.encode(toks)
    assert tok.encode("no-such-token").ids == [1]
