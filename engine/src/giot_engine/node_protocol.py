"""The link between a GIoT node and Home Assistant: versioned, schema-checked binary frames.

The node (``giot-node``, beside Home Assistant, runs the Flower SuperNode) and the integration
(inside Home Assistant, never imports flwr) talk over one WebSocket that the integration opens.
Both sides import this module, so a frame one writes is a frame the other can check: the same
table of kinds and fields, the same limits. A frame that fails a check raises ``ProtocolError``
with a short machine-readable ``reason``; the receiver answers ``error`` with that reason and
applies nothing of it (never half-applied).

Wire form of one frame (one binary WebSocket message)::

    b"GIOT" | u32 big-endian header length | header (UTF-8 JSON) | array bytes, in header order

Header: ``{"v": PROTOCOL_VERSION, "kind": str, "body": {...}, "arrays": [[name, dtype, shape],
...]}``. Arrays are little-endian and C-ordered; their byte lengths follow from dtype and shape,
so nothing in the header can point outside the frame.

Conversation (node N, integration H)::

    H connects.  N -> H  challenge {node_id, nonce, protocols, node_version}
                 H -> N  auth      {proof = HMAC-SHA256(token, nonce) hex, protocol, hub}
                 N -> H  welcome   {node_id, protocol, superlink, connected, server_key}
                                   (or error bad_token)
    each round:  N -> H  task      {task_id, kind: train|evaluate, run_id, round, deadline_s,
                                    config}
                 H -> N  result    {task_id, status: ok|skipped|refused, reason, metrics} + arrays
    any time:    N -> H  status    {superlink, connected, last_round}
                 either  error     {reason, detail, in_reply_to}

The pairing token never crosses the link: the node proves nothing and the integration proves it
knows the token by answering the challenge (a replayed proof is useless against a fresh nonce).
``server_key`` is the aggregation server's Ed25519 public key (64 hex digits, "" when the node
was given none): the integration learns it at pairing and checks every global model's signature
with it (``artifact.model_message``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import secrets
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})
MAGIC = b"GIOT"
# A GIoT model at the hub's default size is ~0.5 MB of float32; a frame carries at most a few.
MAX_FRAME_BYTES = 64 * 1024 * 1024
MAX_HEADER_BYTES = 1024 * 1024
MAX_ARRAYS = 1024
DTYPES = frozenset(
    {
        "float32",
        "float64",
        "float16",
        "int8",
        "uint8",
        "int16",
        "uint16",
        "int32",
        "uint32",
        "int64",
    }
)
TASK_KINDS = ("train", "evaluate")
RESULT_STATUSES = ("ok", "skipped", "refused")
# Why a frame or a task was not accepted (``error.reason`` / ``result.reason``).
REASONS = (
    "bad_frame",  # not a GIoT frame, or its header does not parse
    "unsupported_version",  # a protocol version the receiver does not speak
    "bad_schema",  # a kind or field the receiver does not know, or of the wrong type
    "too_large",  # over MAX_FRAME_BYTES or the receiver's own limit
    "bad_token",  # the pairing proof did not match
    "unexpected",  # a kind that makes no sense now (a task before welcome, ...)
    "incompatible_model",  # arrays that do not fit the hub's model (names, shapes, dtype)
    "invalid_model",  # not finite, or over the size limit
    "no_data",  # nothing to train or evaluate on
    "busy",  # a task of the same kind is running
    "deadline",  # no answer within the round's deadline
    "no_hub",  # the node has no paired Home Assistant connected
    "untrusted_app",  # a run of an app the homeowner did not allow
    "paused",  # the homeowner paused federation (or turned it off) in Home Assistant
    "failed",  # the hub tried and failed (the detail says why)
)

ConfigValue = int | float | str | bool
Arrays = dict[str, np.ndarray]


class ProtocolError(ValueError):
    """A frame that breaks the protocol; ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        """Keep the machine-readable ``reason`` beside the human ``detail``."""
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(float(value))  # type: ignore[arg-type]


def _is_str(value: object) -> bool:
    return isinstance(value, str) and len(value) <= 4096


def _is_opt_str(value: object) -> bool:
    return value is None or _is_str(value)


def _is_bool(value: object) -> bool:
    return isinstance(value, bool)


def _is_versions(value: object) -> bool:
    return isinstance(value, list) and 0 < len(value) <= 16 and all(_is_int(v) for v in value)


def _one_of(options: tuple[str, ...]) -> Callable[[object], bool]:
    return lambda value: isinstance(value, str) and value in options


def _is_reason(value: object) -> bool:
    return value == "" or (isinstance(value, str) and value in REASONS)


def _is_mapping(check: Callable[[object], bool]) -> Callable[[object], bool]:
    def ok(value: object) -> bool:
        return (
            isinstance(value, dict)
            and len(value) <= 256
            and all(_is_str(k) and check(v) for k, v in value.items())
        )

    return ok


def _is_config_value(value: object) -> bool:
    return _is_bool(value) or _is_number(value) or _is_str(value)


def _is_key(value: object) -> bool:
    """Accept an Ed25519 public key (32 bytes as hex), or "" for none."""
    return value == "" or (isinstance(value, str) and len(value) == 64 and _is_hex(value))


def _is_hex(value: object) -> bool:
    if not isinstance(value, str) or not 16 <= len(value) <= 256:
        return False
    try:
        bytes.fromhex(value)
    except ValueError:
        return False
    return True


# kind -> field -> check. Every field is required (but those in ``OPTIONAL``) and no other field
# is allowed: a frame the receiver only half understands is refused whole.
SCHEMA: dict[str, dict[str, Callable[[object], bool]]] = {
    "challenge": {
        "node_id": _is_str,
        "nonce": _is_hex,
        "protocols": _is_versions,
        "node_version": _is_str,
    },
    "auth": {"proof": _is_hex, "protocol": _is_int, "hub": _is_str},
    "welcome": {
        "node_id": _is_str,
        "protocol": _is_int,
        "superlink": _is_str,
        "connected": _is_bool,
        "server_key": _is_key,
    },
    "task": {
        "task_id": _is_str,
        "kind": _one_of(TASK_KINDS),
        "run_id": _is_int,
        "round": _is_int,
        "deadline_s": _is_number,
        "config": _is_mapping(_is_config_value),
    },
    "result": {
        "task_id": _is_str,
        "status": _one_of(RESULT_STATUSES),
        "reason": _is_reason,
        "metrics": _is_mapping(_is_number),
    },
    "status": {"superlink": _is_str, "connected": _is_bool, "last_round": _is_int},
    "error": {"reason": _is_reason, "detail": _is_str, "in_reply_to": _is_opt_str},
}
# Fields added after protocol 1 was deployed, with the value their absence means: a peer older
# than them leaves them out (present, they are checked like any other).
OPTIONAL: dict[str, dict[str, Any]] = {"welcome": {"server_key": ""}}
# Kinds that may carry arrays.
WITH_ARRAYS = frozenset({"task", "result"})


@dataclass(frozen=True, slots=True)
class Frame:
    """One checked message: its kind, its fields and (task / result only) its arrays."""

    kind: str
    body: dict[str, Any]
    arrays: Arrays = field(default_factory=dict)


def check_body(kind: str, body: Mapping[str, Any]) -> None:
    """Raise ``ProtocolError("bad_schema")`` unless ``body`` is exactly what ``kind`` holds."""
    fields = SCHEMA.get(kind)
    if fields is None:
        raise ProtocolError("bad_schema", f"unknown kind {kind!r}")
    required = set(fields) - set(OPTIONAL.get(kind, {}))
    if not required <= set(body) <= set(fields):
        missing, extra = sorted(required - set(body)), sorted(set(body) - set(fields))
        raise ProtocolError("bad_schema", f"{kind}: missing {missing}, unknown {extra}")
    for name, check in fields.items():
        if name in body and not check(body[name]):
            raise ProtocolError("bad_schema", f"{kind}.{name}: {body[name]!r:.80}")


def encode(
    kind: str, body: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None
) -> bytes:
    """Check and write one frame; a body that breaks the schema is never sent."""
    check_body(kind, body)
    arrays = arrays or {}
    if arrays and kind not in WITH_ARRAYS:
        raise ProtocolError("bad_schema", f"{kind} carries no arrays")
    specs: list[list[Any]] = []
    blobs: list[bytes] = []
    for name, array in arrays.items():
        a = np.ascontiguousarray(array)
        dtype = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
        if dtype.name not in DTYPES:
            raise ProtocolError("bad_schema", f"array {name}: dtype {a.dtype}")
        specs.append([name, dtype.name, list(a.shape)])
        blobs.append(a.astype(dtype.newbyteorder("<"), copy=False).tobytes())
    header = json.dumps(
        {"v": PROTOCOL_VERSION, "kind": kind, "body": dict(body), "arrays": specs},
        separators=(",", ":"),
        allow_nan=False,
    ).encode()
    frame = b"".join([MAGIC, struct.pack(">I", len(header)), header, *blobs])
    if len(frame) > MAX_FRAME_BYTES:
        raise ProtocolError("too_large", f"{len(frame)} bytes")
    return frame


def decode(frame: bytes, *, max_bytes: int = MAX_FRAME_BYTES) -> Frame:
    """Read and check one frame; anything wrong raises ``ProtocolError`` before use."""
    if len(frame) > max_bytes:
        raise ProtocolError("too_large", f"{len(frame)} bytes")
    if len(frame) < 8 or frame[:4] != MAGIC:
        raise ProtocolError("bad_frame", "not a GIoT frame")
    (size,) = struct.unpack(">I", frame[4:8])
    if size > MAX_HEADER_BYTES or 8 + size > len(frame):
        raise ProtocolError("bad_frame", "header length")
    kind, body, specs = _header(frame[8 : 8 + size])
    if specs and kind not in WITH_ARRAYS:
        raise ProtocolError("bad_schema", f"{kind} carries no arrays")
    if len(specs) > MAX_ARRAYS:
        raise ProtocolError("too_large", f"{len(specs)} arrays")
    arrays: Arrays = {}
    offset = 8 + size
    for spec in specs:
        name, dtype, shape = _array_spec(spec)
        if name in arrays:
            raise ProtocolError("bad_schema", f"array {name} twice")
        count = math.prod(shape)
        nbytes = count * np.dtype(dtype).itemsize
        if offset + nbytes > len(frame):
            raise ProtocolError("bad_frame", f"array {name} runs past the frame")
        data = np.frombuffer(frame, np.dtype(dtype).newbyteorder("<"), count, offset)
        arrays[name] = data.reshape(shape).astype(np.dtype(dtype), copy=True)
        offset += nbytes
    if offset != len(frame):
        raise ProtocolError("bad_frame", f"{len(frame) - offset} bytes after the arrays")
    return Frame(kind, body, arrays)


def _header(raw: bytes) -> tuple[str, dict[str, Any], list[Any]]:
    try:
        header = json.loads(raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ProtocolError("bad_frame", str(err)) from err
    if not isinstance(header, dict) or set(header) != {"v", "kind", "body", "arrays"}:
        raise ProtocolError("bad_frame", "header fields")
    if header["v"] not in SUPPORTED_VERSIONS:
        raise ProtocolError("unsupported_version", str(header["v"]))
    kind, body, specs = header["kind"], header["body"], header["arrays"]
    if not isinstance(kind, str) or not isinstance(body, dict) or not isinstance(specs, list):
        raise ProtocolError("bad_frame", "header types")
    check_body(kind, body)
    return kind, body, specs


def _array_spec(spec: object) -> tuple[str, str, tuple[int, ...]]:
    if not (isinstance(spec, list) and len(spec) == 3):
        raise ProtocolError("bad_schema", "array spec")
    name, dtype, shape = spec
    if not _is_str(name) or dtype not in DTYPES or not isinstance(shape, list) or len(shape) > 8:
        raise ProtocolError("bad_schema", f"array spec {spec!r:.80}")
    if not all(_is_int(n) and 0 <= n <= MAX_FRAME_BYTES for n in shape):
        raise ProtocolError("bad_schema", f"array {name} shape {shape!r:.80}")
    return name, dtype, tuple(shape)


def new_nonce() -> str:
    """Return a fresh challenge (hex)."""
    return secrets.token_hex(32)


def new_token() -> str:
    """Return a pairing token a person can type: 20 characters in 4 groups, ~100 bits."""
    alphabet = "abcdefghijkmnpqrstuvwxyz23456789"  # no 0/o, 1/l: read off a screen
    raw = "".join(secrets.choice(alphabet) for _ in range(20))
    return "-".join(raw[i : i + 5] for i in range(0, 20, 5))


def normalise_token(token: str) -> str:
    """Return the token as the node keeps it (case, spaces and dashes do not matter)."""
    return "".join(c for c in token.lower() if c.isalnum())


def proof(token: str, nonce: str) -> str:
    """Answer a challenge as the integration does: HMAC-SHA256 of the nonce under the token."""
    return hmac.new(
        normalise_token(token).encode(), bytes.fromhex(nonce), hashlib.sha256
    ).hexdigest()


def check_proof(token: str, nonce: str, answer: str) -> bool:
    """Compare in constant time (the node holds the token; the answer came over the link)."""
    return hmac.compare_digest(proof(token, nonce), answer)
