"""A private CA and the SuperLink's TLS certificate, made with ``cryptography``.

``giot-server init`` writes, into the server's home:

- ``ca.pem`` / ``ca.key``: a self-signed CA (EC P-384). ``ca.pem`` is what every SuperNode gets
  as ``--root-certificates``; ``ca.key`` never leaves the server.
- ``server.pem`` / ``server.key``: the SuperLink's certificate (EC P-256), signed by the CA, for
  server authentication only, with subject alternative names for ``localhost``, ``127.0.0.1``,
  ``::1``, this machine's host name (and ``NAME.local`` for mDNS) and whatever ``--san`` adds.

Private keys are written with mode 0600 from the start (never world-readable, not even briefly).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
SERVER_DAYS = 825


@dataclass(frozen=True)
class CertPaths:
    """Where the TLS material of one server home lies."""

    home: Path

    @property
    def ca_cert(self) -> Path:
        return self.home / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.home / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.home / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.home / "server.key"

    def all(self) -> list[Path]:
        return [self.ca_cert, self.ca_key, self.server_cert, self.server_key]

    def complete(self) -> bool:
        """Whether everything the SuperLink needs for TLS is there."""
        return all(p.is_file() for p in (self.ca_cert, self.server_cert, self.server_key))


def default_names() -> list[str]:
    """Names every server certificate carries: loopback, and this host (plain and ``.local``)."""
    names = ["localhost", "127.0.0.1", "::1"]
    host = socket.gethostname().strip()
    if host and host != "localhost":
        names += [host, f"{host.split('.')[0]}.local"]
    return list(dict.fromkeys(names))


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by its owner only (0600 from creation on)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def create(
    home: Path, extra_names: list[str], *, force: bool = False, org: str = "GIoT"
) -> list[str]:
    """Create the CA and the server certificate in ``home``; return the server's SANs.

    Refuses (``FileExistsError``) when any of the four files exists, unless ``force``.
    """
    paths = CertPaths(home)
    existing = [p for p in paths.all() if p.exists()]
    if existing and not force:
        raise FileExistsError(", ".join(str(p) for p in existing))
    home.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    start = now - dt.timedelta(minutes=5)  # tolerate small clock differences between machines

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{org} server CA"),
        ]
    )
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA384())
    )

    names = list(dict.fromkeys([*default_names(), *extra_names]))
    srv_key = ec.generate_private_key(ec.SECP256R1())
    srv_cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                    x509.NameAttribute(NameOID.COMMON_NAME, names[0]),
                ]
            )
        )
        .issuer_name(ca_name)
        .public_key(srv_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(srv_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    write_private(paths.ca_key, _pem_key(ca_key))
    write_private(paths.server_key, _pem_key(srv_key))
    paths.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths.server_cert.write_bytes(srv_cert.public_bytes(serialization.Encoding.PEM))
    return names


def server_names(cert: Path) -> list[str]:
    """Return the subject alternative names of a certificate, as text."""
    loaded = x509.load_pem_x509_certificate(cert.read_bytes())
    san = loaded.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(n.value) for n in san]
