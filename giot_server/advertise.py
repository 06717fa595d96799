"""Advertise the server on the LAN with mDNS/DNS-SD (python-zeroconf, when it is installed).

Service type ``_giot-server._tcp.local.``; TXT properties: ``tls`` (``1``/``0``), ``ca-sha256``
(hex SHA-256 of ``ca.pem``'s DER, so a node can check the CA it is handed), ``auth`` (SuperNode
authentication on: ``1``) and ``version``. Without python-zeroconf the server runs unadvertised.
"""

from __future__ import annotations

import contextlib
import importlib
import ipaddress
import logging
import socket
from typing import Any

log = logging.getLogger(__name__)

SERVICE_TYPE = "_giot-server._tcp.local."


def lan_addresses(host: str) -> list[str]:
    """Addresses to announce: ``host`` itself, or this machine's outward IPv4 for 0.0.0.0."""
    if host not in {"0.0.0.0", "::", ""}:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            try:
                ip = ipaddress.ip_address(socket.gethostbyname(host))
            except OSError:
                return []
        return [] if ip.is_loopback else [str(ip)]  # loopback: nothing on the LAN reaches it
    addrs: list[str] = []
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # no packet is sent: only picks the outgoing interface
        addrs.append(str(s.getsockname()[0]))
    return [a for a in addrs if not ipaddress.ip_address(a).is_loopback]


class Advertiser:
    """One registered service; ``close`` withdraws it."""

    def __init__(self, zc: Any, info: Any) -> None:
        self.zc, self.info = zc, info

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.zc.unregister_service(self.info)
        with contextlib.suppress(Exception):
            self.zc.close()


def advertise(host: str, port: int, properties: dict[str, str]) -> Advertiser | None:
    """Register the service; None (and a log line) when zeroconf is missing or fails."""
    try:
        zeroconf = importlib.import_module("zeroconf")
    except ImportError:
        log.info("python-zeroconf is not installed: the server is not advertised on the LAN")
        return None
    addrs = lan_addresses(host)
    if not addrs:
        log.info("not advertised on the LAN: listening on %s only", host)
        return None
    name = socket.gethostname().split(".")[0] or "giot"
    try:
        info = zeroconf.ServiceInfo(
            SERVICE_TYPE,
            f"{name}.{SERVICE_TYPE}",
            addresses=[ipaddress.ip_address(a).packed for a in addrs],
            port=port,
            properties=properties,
            server=f"{name}.local.",
        )
        zc = zeroconf.Zeroconf()
        zc.register_service(info)
    except Exception as err:  # best effort: the server runs on
        log.warning("zeroconf advertisement failed: %s", err)
        return None
    log.info("advertised %s on %s port %d", f"{name}.{SERVICE_TYPE}", ", ".join(addrs), port)
    return Advertiser(zc, info)
