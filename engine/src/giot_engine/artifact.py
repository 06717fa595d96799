"""A GIoT model as a directory that is checked before anything in it is loaded.

The base model (``giot-server base-model``) and the small copy shipped inside the integration
are directories in Hugging Face layout plus GIoT's own files::

    config.json, model.safetensors, tokenizer.json   the GIoT model (transformers loads these)
    signature_head.json                              the known-attack stage (``SignatureHead``)
    giot.json                                        version, origin "base", what it learnt from
    README.md                                        the model card
    MANIFEST.json                                    sha256 of every other file, and the version
    MANIFEST.sig                                     Ed25519 signature of MANIFEST.json's bytes

The engine checks hashes (numpy and the standard library only). Signatures need Ed25519, which
the server and Home Assistant's process have (``cryptography``) and the engine does not, so the
engine only fixes the bytes that are signed: the manifest file as written, and for a global model
of the federation ``model_message`` (its version, its round and ``arrays_digest`` of its tensors).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .model import CONFIG_NAME, WEIGHTS_NAME, GIoTModel
from .signature import SignatureHead
from .tokenizer import Vocabulary

MANIFEST = "MANIFEST.json"
MANIFEST_SIG = "MANIFEST.sig"
HEAD_FILE = "signature_head.json"
META_FILE = "giot.json"
TOKENIZER_FILE = "tokenizer.json"
CARD_FILE = "README.md"
FORMAT = "giot-artifact/1"
# Files a base model cannot be loaded without (the card and the tokenizer are for people and
# for transformers; the engine builds its vocabulary itself and checks its version in giot.json).
REQUIRED = (CONFIG_NAME, WEIGHTS_NAME, HEAD_FILE, META_FILE)
MODEL_DOMAIN = b"giot-global-model/1\n"


class ArtifactError(ValueError):
    """A model directory that must not be loaded: a file missing, changed, or unreadable."""


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: str | os.PathLike[str], version: str) -> bytes:
    """List the sha256 of every file of ``directory`` in ``MANIFEST.json``; return its bytes.

    Those bytes are what a signature covers (``MANIFEST.sig``), so they are written once and
    never re-serialised: a verifier hashes the file, not a parse of it.
    """
    root = Path(directory)
    files = {
        p.name: file_sha256(p)
        for p in sorted(root.iterdir())
        if p.is_file() and p.name not in (MANIFEST, MANIFEST_SIG)
    }
    raw = json.dumps({"format": FORMAT, "version": version, "files": files}, indent=1) + "\n"
    data = raw.encode()
    (root / MANIFEST).write_bytes(data)
    return data


def check_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the manifest once every file it lists has its hash; raise ``ArtifactError`` if not.

    Every file the engine loads must be listed (``REQUIRED``); files it does not list are never
    read from the directory, so they need no hash.
    """
    root = Path(directory)
    try:
        manifest = json.loads((root / MANIFEST).read_bytes())
    except (OSError, ValueError) as err:
        raise ArtifactError(f"{root}: no readable {MANIFEST}: {err}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{root / MANIFEST}: not a {FORMAT} manifest")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ArtifactError(f"{root / MANIFEST}: not a {FORMAT} manifest")
    if missing := [name for name in REQUIRED if name not in files]:
        raise ArtifactError(f"{root / MANIFEST} does not list {missing}")
    for name, expected in files.items():
        path = root / str(name)
        if Path(str(name)).name != name or not path.is_file():
            raise ArtifactError(f"{root}: {name} is missing")
        if file_sha256(path) != expected:
            raise ArtifactError(f"{root}: {name} does not match its manifest hash")
    return dict(manifest)


def arrays_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """Hex sha256 of tensors in one canonical form: by name, each name, dtype, shape and bytes.

    Both ends compute it on what they hold (the server on the arrays it sends, a hub on the
    arrays a frame brought), so the form fixes everything that could differ: order, byte order
    and layout. A tensor whose dtype or shape changed on the way hashes differently.
    """
    digest = hashlib.sha256()
    for name in sorted(arrays):
        a = np.asarray(arrays[name])
        little = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
        head = json.dumps([name, little.name, list(a.shape)], separators=(",", ":"))
        digest.update(head.encode() + b"\n")
        digest.update(np.ascontiguousarray(a, dtype=little.newbyteorder("<")).tobytes())
    return digest.hexdigest()


def model_message(version: str, server_round: int, digest: str) -> bytes:
    """Return the bytes a global model's signature covers: what it is, which round, its tensors."""
    return MODEL_DOMAIN + f"{version}\n{int(server_round)}\n{digest}\n".encode()


def write_head(path: str | os.PathLike[str], head: SignatureHead) -> None:
    """Write the known-attack head as JSON (float64 values survive exactly)."""
    Path(path).write_text(json.dumps({"format": "giot-signature-head/1", **head.to_dict()}))


def read_head(path: str | os.PathLike[str]) -> SignatureHead:
    """Read ``write_head``'s file; ``ValueError`` when it is not a head this engine can use."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or data.get("format") != "giot-signature-head/1":
        raise ValueError(f"{path}: not a GIoT signature head")
    return SignatureHead.from_dict(data)


@dataclass(frozen=True, slots=True)
class BaseModel:
    """A checked base model: the GIoT model, the known-attack head and what ``giot.json`` says."""

    version: str
    model: GIoTModel
    head: SignatureHead
    meta: dict[str, Any]


def load_base(directory: str | os.PathLike[str], vocab: Vocabulary) -> BaseModel:
    """Check a base model directory (manifest hashes) and load it; ``ArtifactError`` if unusable.

    Only hashes are checked here: a shipped copy is as trusted as the code around it, and a
    server's base model is checked against the server's key where ``cryptography`` exists.
    """
    root = Path(directory)
    manifest = check_manifest(root)
    try:
        meta = json.loads((root / META_FILE).read_text())
        model = GIoTModel.from_pretrained(root)
        head = read_head(root / HEAD_FILE)
    except (OSError, ValueError, KeyError) as err:
        raise ArtifactError(f"{root}: unreadable base model: {err}") from err
    if not isinstance(meta, dict) or meta.get("origin") != "base":
        raise ArtifactError(f"{root / META_FILE}: not a base model")
    if meta.get("vocab") != vocab.version or model.config.vocab_size != len(vocab):
        raise ArtifactError(
            f"{root}: built for vocabulary {meta.get('vocab')}, not {vocab.version}"
        )
    version = str(manifest.get("version", ""))
    if version != meta.get("version"):
        raise ArtifactError(f"{root}: manifest version {version} is not giot.json's")
    return BaseModel(version, model, head, meta)
