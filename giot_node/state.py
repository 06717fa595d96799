"""What a node keeps in its state directory: SuperNode key pair, node id, pairing token.

Every file is created 0600 in a 0700 directory and replaced atomically, so a crash never leaves a
half-written key and no other local user reads the token. The token file is read at every
WebSocket connect: ``giot-node pair`` while the node runs takes effect at the next connect.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from giot_engine import node_protocol

KEY = "supernode.key"  # EC P-384, OpenSSH private format: what flower-supernode loads
PUBLIC_KEY = "supernode.key.pub"  # OpenSSH line: what ``giot-server enrol`` takes
NODE_ID = "node_id"
TOKEN = "token"
BRIDGE = "bridge.sock"


class StateError(RuntimeError):
    """The state directory is missing something ``run`` needs."""


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` as a new 0600 file, then move it into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass(frozen=True)
class InitResult:
    """What ``init`` did: the public key, and the token only when it made a new one."""

    public_key: str
    node_id: str
    new_key: bool
    token: str | None


class NodeState:
    """One node's state directory."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()

    @property
    def key_path(self) -> Path:
        return self.root / KEY

    @property
    def bridge_path(self) -> Path:
        return self.root / BRIDGE

    @property
    def bin_dir(self) -> Path:
        return self.root / "bin"

    def init(self) -> InitResult:
        """Create what is missing; keep what exists (a second ``init`` changes nothing)."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)
        new_key = not self.key_path.is_file()
        if new_key:
            key = ec.generate_private_key(ec.SECP384R1())
            private = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            )
            write_private(self.key_path, private)
        if not (self.root / NODE_ID).is_file():
            write_private(self.root / NODE_ID, f"{uuid.uuid4().hex}\n".encode())
        # Derived from the private key every time, so the two never disagree.
        write_private(self.root / PUBLIC_KEY, f"{self.public_key()}\n".encode())
        token = None
        if not (self.root / TOKEN).is_file():
            token = self.new_token()
        return InitResult(self.public_key(), self.node_id(), new_key, token)

    def new_token(self) -> str:
        """Replace the pairing token; the old one stops working at the next connect."""
        self._need(NODE_ID)
        token = node_protocol.new_token()
        write_private(self.root / TOKEN, f"{token}\n".encode())
        return token

    def _need(self, name: str) -> Path:
        path = self.root / name
        if not path.is_file():
            raise StateError(f"{path} is missing: run `giot-node init --state-dir {self.root}`")
        return path

    def node_id(self) -> str:
        return self._need(NODE_ID).read_text("utf-8").strip()

    def token(self) -> str:
        return self._need(TOKEN).read_text("utf-8").strip()

    def private_key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_ssh_private_key(self._need(KEY).read_bytes(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise StateError(f"{self.key_path} is not an EC private key")
        return key

    def public_key(self) -> str:
        """Return the OpenSSH public key line (``ecdsa-sha2-nistp384 AAAA... giot-node-<id>``)."""
        line = (
            self.private_key()
            .public_key()
            .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            .decode()
        )
        return f"{line} giot-node-{self.node_id()[:12]}"
