"""The node link's frames: what one side writes the other reads; anything else is refused whole."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from giot_engine import node_protocol as p

TASK = {
    "task_id": "t1",
    "kind": "train",
    "run_id": 7,
    "round": 3,
    "deadline_s": 30.0,
    "config": {"gsfs-budget": 4096, "strategy": "gsfs", "dp": False, "lr": 0.001},
}


def test_round_trip_keeps_body_and_arrays_bit_for_bit() -> None:
    arrays = {
        "w": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
        "idx": np.array([1, 5, 9], np.uint16),
        "q": np.array([-128, 0, 127], np.int8),
        "empty": np.zeros((0, 4), np.float32),
    }
    frame = p.decode(p.encode("task", TASK, arrays))
    assert frame.kind == "task"
    assert frame.body == TASK
    assert list(frame.arrays) == list(arrays)
    for name, a in arrays.items():
        assert frame.arrays[name].dtype == a.dtype
        assert np.array_equal(frame.arrays[name], a)
    assert frame.arrays["w"].flags.writeable  # a copy, not a view of the frame


def test_big_endian_input_is_written_little_endian() -> None:
    a = np.arange(4, dtype=">f4")
    out = p.decode(p.encode("result", _result(), {"a": a})).arrays["a"]
    assert out.dtype == np.float32
    assert np.array_equal(out, a)


def _result(**kw: object) -> dict[str, object]:
    return {"task_id": "t1", "status": "ok", "reason": "", "metrics": {"n": 3}} | kw


def _raw(header: dict[str, object], tail: bytes = b"") -> bytes:
    h = json.dumps(header).encode()
    return p.MAGIC + struct.pack(">I", len(h)) + h + tail


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"", "bad_frame"),
        (b"HTTP/1.1 200 OK", "bad_frame"),
        (p.MAGIC + struct.pack(">I", 10**6) + b"{}", "bad_frame"),
        (_raw({"v": 2, "kind": "status", "body": {}, "arrays": []}), "unsupported_version"),
        (_raw({"v": 1, "kind": "reboot", "body": {}, "arrays": []}), "bad_schema"),
        (_raw({"v": 1, "kind": "result", "body": _result(extra=1), "arrays": []}), "bad_schema"),
        (
            _raw({"v": 1, "kind": "result", "body": _result(status="maybe"), "arrays": []}),
            "bad_schema",
        ),
        (
            _raw({"v": 1, "kind": "result", "body": _result(reason="whim"), "arrays": []}),
            "bad_schema",
        ),
        (
            _raw({"v": 1, "kind": "result", "body": _result(metrics={"n": "x"}), "arrays": []}),
            "bad_schema",
        ),
        (
            _raw(
                {"v": 1, "kind": "result", "body": _result(), "arrays": [["a", "float32", [4]]]},
                b"\0" * 8,
            ),
            "bad_frame",
        ),
        (
            _raw(
                {"v": 1, "kind": "result", "body": _result(), "arrays": [["a", "float32", [1]]]},
                b"\0" * 8,
            ),
            "bad_frame",
        ),
        (
            _raw({"v": 1, "kind": "result", "body": _result(), "arrays": [["a", "object", [1]]]}),
            "bad_schema",
        ),
        (
            _raw({"v": 1, "kind": "result", "body": _result(), "arrays": [["a", "int8", [-1]]]}),
            "bad_schema",
        ),
        (
            _raw(
                {
                    "v": 1,
                    "kind": "status",
                    "body": {"superlink": "x", "connected": True, "last_round": 1},
                    "arrays": [["a", "int8", [1]]],
                },
                b"\0",
            ),
            "bad_schema",
        ),
    ],
)
def test_broken_frames_are_refused_with_a_reason(frame: bytes, reason: str) -> None:
    with pytest.raises(p.ProtocolError) as err:
        p.decode(frame)
    assert err.value.reason == reason


def test_a_body_that_breaks_the_schema_is_never_written() -> None:
    with pytest.raises(p.ProtocolError):
        p.encode("task", {**TASK, "round": "3"})
    with pytest.raises(p.ProtocolError):
        p.encode("result", _result(metrics={"loss": float("nan")}))
    with pytest.raises(p.ProtocolError):
        p.encode("result", _result(), {"a": np.array(["x"])})


def test_size_limit_is_kept_on_both_sides() -> None:
    frame = p.encode("result", _result(), {"a": np.zeros(1000, np.float32)})
    with pytest.raises(p.ProtocolError) as err:
        p.decode(frame, max_bytes=1000)
    assert err.value.reason == "too_large"


def test_the_proof_needs_the_token_and_the_nonce() -> None:
    token = p.new_token()
    nonce = p.new_nonce()
    answer = p.proof(token.upper().replace("-", " "), nonce)  # as a person may type it
    assert p.check_proof(token, nonce, answer)
    assert not p.check_proof(p.new_token(), nonce, answer)
    assert not p.check_proof(token, p.new_nonce(), answer)
    assert len(p.normalise_token(token)) == 20
