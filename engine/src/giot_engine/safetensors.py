"""The safetensors file format, read and written with the standard library and numpy.

Home Assistant's Python has no ``safetensors`` package, yet a model directory must load with
transformers' ``from_pretrained`` and a federation's global model must load here: the format is
simple enough (u64 header length, JSON header, raw little-endian data) to own.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt

_DTYPES = {"F32": "<f4", "F64": "<f8", "F16": "<f2", "I64": "<i8", "I32": "<i4"}


def save_safetensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, np.ndarray],
    metadata: Mapping[str, str] | None = None,
    dtype: str = "F32",
) -> None:
    """Write every tensor as float32 (the engine computes in float32) or, asked, float16.

    Float16 halves a model that ships inside the integration (``F16``); it loads as float32.
    """
    if dtype not in ("F32", "F16"):
        raise ValueError(f"cannot write {dtype}")
    header: dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
    blobs, offset = [], 0
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name], dtype=_DTYPES[dtype])
        header[name] = {
            "dtype": dtype,
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + arr.nbytes],
        }
        blobs.append(arr.tobytes())
        offset += arr.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header so the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for blob in blobs:
            f.write(blob)


def load_safetensors(path: str | os.PathLike[str]) -> dict[str, npt.NDArray[np.float32]]:
    """Read F32/F64/F16/BF16/int tensors as float32: checkpoints from elsewhere use any of them."""
    data = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    body = memoryview(data)[8 + n :]
    out: dict[str, npt.NDArray[np.float32]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        if info["dtype"] == "BF16":  # bfloat16 is the top half of a float32
            bits = np.frombuffer(body[start:end], dtype="<u2").astype(np.uint32) << 16
            arr = bits.view(np.float32)
        elif info["dtype"] in _DTYPES:
            arr = np.frombuffer(body[start:end], dtype=_DTYPES[info["dtype"]])
        else:
            raise ValueError(f"{path}: unsupported dtype {info['dtype']} for {name}")
        out[name] = arr.astype(np.float32).reshape(info["shape"])
    return out
