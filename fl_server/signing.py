"""The server's Ed25519 key, and the signatures a hub checks before it loads anything.

``giot-server init`` makes the key: ``HOME/signing.key`` (PKCS#8 PEM, mode 0600) and
``HOME/signing.pub`` (its public half, SubjectPublicKeyInfo PEM), which each home's node is given
(``giot-node run --server-key``) and passes to its hub at pairing. Two things are signed:

- a base model's ``MANIFEST.json`` (the file's bytes; ``MANIFEST.sig`` beside it), so that one
  signature covers every file the manifest hashes (``giot_engine.artifact``);
- every global model the ServerApp publishes: ``artifact.model_message(version, round,
  arrays_digest(arrays))``, carried in the evaluate message's config as ``model-version``,
  ``model-sha256`` and ``model-signature`` (``Publisher``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from giot_engine.artifact import (
    MANIFEST,
    MANIFEST_SIG,
    ArtifactError,
    arrays_digest,
    check_manifest,
    model_message,
)

KEY_FILE = "signing.key"
PUB_FILE = "signing.pub"
ALGORITHM = "Ed25519"


def create_key(home: Path, *, force: bool = False) -> Ed25519PrivateKey:
    """Write a new key pair into ``home``; ``FileExistsError`` if one is there, unless ``force``."""
    key_path, pub_path = home / KEY_FILE, home / PUB_FILE
    if key_path.exists() and not force:
        raise FileExistsError(key_path)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    tmp = key_path.with_name(f".{KEY_FILE}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    os.replace(tmp, key_path)
    pub_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return key


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Read ``signing.key``; ``ValueError`` when it is not an Ed25519 private key."""
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key")
    return key


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """Read ``signing.pub`` (PEM) or 64 hex digits; ``ValueError`` when it is neither."""
    raw = Path(path).read_bytes().strip()
    if len(raw) == 64:
        try:
            return Ed25519PublicKey.from_public_bytes(bytes.fromhex(raw.decode()))
        except ValueError:
            pass
    key = serialization.load_pem_public_key(raw)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path}: not an Ed25519 public key")
    return key


def public_hex(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """Return the public key as the link and the hub keep it: 32 raw bytes, hex."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw.hex()


def sign_artifact(directory: Path, key: Ed25519PrivateKey) -> None:
    """Sign a model directory's manifest as written (``MANIFEST.sig``)."""
    signature = key.sign((directory / MANIFEST).read_bytes())
    doc = {"algorithm": ALGORITHM, "public_key": public_hex(key), "signature": signature.hex()}
    (directory / MANIFEST_SIG).write_text(json.dumps(doc, indent=1) + "\n")


def verify_artifact(directory: Path, key: Ed25519PublicKey | None) -> dict[str, Any]:
    """Check a model directory: its files against the manifest and, with ``key``, the signature.

    Returns the manifest; raises ``ArtifactError`` when anything does not hold (an unsigned
    directory fails when a key is given: what a key is given for must be signed).
    """
    manifest = check_manifest(directory)
    if key is None:
        return manifest
    try:
        doc = json.loads((directory / MANIFEST_SIG).read_text())
        signature = bytes.fromhex(str(doc["signature"]))
        key.verify(signature, (directory / MANIFEST).read_bytes())
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ArtifactError(f"{directory}: no readable {MANIFEST_SIG}: {err}") from err
    except InvalidSignature as err:
        raise ArtifactError(f"{directory}: {MANIFEST} is not signed by this server's key") from err
    return manifest


@dataclass(frozen=True)
class Publisher:
    """Names (and, with a key, signs) each global model the ServerApp sends out.

    ``base`` names the round-0 model (a base model's version, or the seeded initialisation);
    round N of run R is ``<base>+run<R>.r<N>``. ``publish_base``: round 0 is a model hubs
    should take (a base model), published before round 1.
    """

    base: str
    run_id: int
    key: Ed25519PrivateKey | None = None
    publish_base: bool = False

    def version(self, server_round: int) -> str:
        """Name the global model of ``server_round`` (round 0: the base itself)."""
        return self.base if server_round == 0 else f"{self.base}+run{self.run_id}.r{server_round}"

    def stamp(self, arrays: Mapping[str, np.ndarray], server_round: int) -> dict[str, str]:
        """Config entries for an evaluate message carrying ``arrays`` as round ``server_round``."""
        version = self.version(server_round)
        digest = arrays_digest(arrays)
        out = {"model-version": version, "model-sha256": digest}
        if self.key is not None:
            out["model-signature"] = self.key.sign(
                model_message(version, server_round, digest)
            ).hex()
        return out


def verify_model(
    key: Ed25519PublicKey, arrays: Mapping[str, np.ndarray], config: Mapping[str, object]
) -> str | None:
    """None when ``config`` carries a valid signature of ``arrays``, else why not.

    What a hub does before it loads a global model (its own copy: Home Assistant's process has
    no ``fl_server``); tests and tools use this one.
    """
    version, signature = config.get("model-version"), config.get("model-signature")
    server_round = config.get("server-round")
    if not isinstance(version, str) or not isinstance(signature, str):
        return "unsigned"
    if not isinstance(server_round, int) or isinstance(server_round, bool):
        return "no round"
    digest = arrays_digest(arrays)
    if config.get("model-sha256") not in (None, digest):
        return "digest mismatch"
    try:
        key.verify(bytes.fromhex(signature), model_message(version, server_round, digest))
    except (ValueError, InvalidSignature):
        return "bad signature"
    return None
