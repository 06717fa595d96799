"""Which home nodes may join: SuperNode public keys, kept in the server's home.

Flower 1.41's SuperNode authentication: the SuperLink runs with ``--enable-supernode-auth`` (it
refuses that flag without TLS), a SuperNode signs its requests with the EC private key given by
``flower-supernode --auth-supernode-private-key`` (OpenSSH format), and only nodes whose public key
was registered through the SuperLink's Control API (what ``flwr supernode register`` /
``flwr supernode unregister`` call) may activate. Registration lives in the SuperLink's database;
the deprecated ``--auth-list-public-keys`` CSV is refused by 1.41.

``giot-server`` keeps its own list, one ``enrolled/<id>.pub`` file per key (OpenSSH line), the
source of truth: at every start, and at every ``enrol``/``revoke`` while the server runs, the
SuperLink's registrations are brought in line with it (missing keys registered, keys no longer
listed unregistered).
"""

from __future__ import annotations

import base64
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

log = logging.getLogger(__name__)

# What Flower 1.41 accepts (flwr.supercore.primitives.asymmetric.uses_nist_ec_curve).
NIST_CURVES = (ec.SECP192R1, ec.SECP224R1, ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)


class InvalidKeyError(ValueError):
    """Not a public key a Flower SuperNode can authenticate with."""


@dataclass(frozen=True)
class NodeKey:
    """One SuperNode public key."""

    key: ec.EllipticCurvePublicKey

    @property
    def openssh(self) -> str:
        return self.key.public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        ).decode()

    @property
    def fingerprint(self) -> str:
        """``SHA256:...`` as ``ssh-keygen -lf`` prints it."""
        blob = base64.b64decode(self.openssh.split()[1])
        digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
        return f"SHA256:{digest}"

    @property
    def ident(self) -> str:
        """A file-name-safe id (hex of the same digest, 24 characters)."""
        blob = base64.b64decode(self.openssh.split()[1])
        return hashlib.sha256(blob).hexdigest()[:24]

    @property
    def flwr_bytes(self) -> bytes:
        """The bytes Flower's Control API takes and lists (PEM SubjectPublicKeyInfo)."""
        return self.key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @property
    def der(self) -> bytes:
        return self.key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def parse_key(data: bytes) -> NodeKey:
    """Parse an OpenSSH (``ecdsa-sha2-nistp...``) or PEM public key on a NIST curve."""
    text = data.strip()
    try:
        if text.startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(text)
        else:
            key = serialization.load_ssh_public_key(text.splitlines()[0] if text else text)
    except (ValueError, UnsupportedAlgorithm, IndexError) as err:
        raise InvalidKeyError(f"not a public key: {err}") from err
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise InvalidKeyError(f"not an EC public key ({type(key).__name__}): Flower needs ECDSA")
    if not isinstance(key.curve, NIST_CURVES):
        raise InvalidKeyError(f"EC curve {key.curve.name} is not a NIST curve Flower accepts")
    return NodeKey(key)


def load_key_arg(arg: str) -> NodeKey:
    """``arg`` is a public key file, or the key's text itself."""
    path = Path(arg).expanduser()
    if len(arg) < 4096 and path.is_file():
        return parse_key(path.read_bytes())
    return parse_key(arg.encode())


class Enrolment:
    """The enrolled keys of one server home (``HOME/enrolled``)."""

    def __init__(self, home: Path) -> None:
        self.dir = home / "enrolled"

    def keys(self) -> dict[str, NodeKey]:
        """Enrolled keys by id."""
        out: dict[str, NodeKey] = {}
        if self.dir.is_dir():
            for path in sorted(self.dir.glob("*.pub")):
                try:
                    out[path.stem] = parse_key(path.read_bytes())
                except InvalidKeyError as err:
                    log.warning("ignoring %s: %s", path, err)
        return out

    def add(self, key: NodeKey, name: str | None = None) -> bool:
        """Enrol ``key``; False when it already was."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"{key.ident}.pub"
        if path.exists():
            return False
        comment = f" {name}" if name else ""
        path.write_text(f"{key.openssh}{comment}\n", encoding="utf-8")
        return True

    def remove(self, arg: str) -> NodeKey | None:
        """Revoke a key given as file, text, fingerprint or id; the key removed, or None."""
        wanted: set[str] = {arg}
        try:
            key = load_key_arg(arg)
            wanted |= {key.ident, key.fingerprint}
        except InvalidKeyError:
            pass
        for ident, enrolled in self.keys().items():
            if wanted & {ident, enrolled.fingerprint}:
                (self.dir / f"{ident}.pub").unlink()
                return enrolled
        return None
