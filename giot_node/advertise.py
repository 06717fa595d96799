"""Announce the node on the LAN (mDNS/DNS-SD) so Home Assistant's zeroconf discovery finds it.

Service type ``_giot._tcp.local.``, TXT ``id`` (the node id, stable across restarts: HA's
unique id), ``proto`` (the link protocol version) and ``version``. Same approach as the server's
(``giot_server.advertise``), with python-zeroconf's asyncio API: the node runs in an event loop.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket

from zeroconf import ServiceInfo
from zeroconf.asyncio import AsyncZeroconf

from giot_engine.node_protocol import PROTOCOL_VERSION
from giot_server.advertise import lan_addresses

log = logging.getLogger(__name__)

SERVICE_TYPE = "_giot._tcp.local."


def service_info(node_id: str, port: int, addresses: list[str], version: str) -> ServiceInfo:
    """Build the record the node registers (apart, so that it can be checked without a LAN)."""
    host = socket.gethostname().split(".")[0] or "giot-node"
    return ServiceInfo(
        SERVICE_TYPE,
        f"giot-node-{node_id[:12]}.{SERVICE_TYPE}",
        addresses=[ipaddress.ip_address(a).packed for a in addresses],
        port=port,
        properties={"id": node_id, "proto": str(PROTOCOL_VERSION), "version": version},
        server=f"{host}.local.",
    )


class Announcement:
    """One registered service; ``close`` withdraws it."""

    def __init__(self, zc: AsyncZeroconf, info: ServiceInfo) -> None:
        self.zc, self.info = zc, info

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await (await self.zc.async_unregister_service(self.info))  # goodbyes sent
        with contextlib.suppress(Exception):
            await self.zc.async_close()


async def announce(host: str, port: int, node_id: str, version: str) -> Announcement | None:
    """Register the service; None (and a log line) when there is no LAN address or it fails."""
    addresses = lan_addresses(host)
    if not addresses:
        log.info("not advertised on the LAN: listening on %s only", host)
        return None
    info = service_info(node_id, port, addresses, version)
    zc = AsyncZeroconf()
    try:
        await zc.async_register_service(info)  # probed; the announcements go on in the background
    except Exception as err:  # best effort: the node runs on, HA can be told the address
        log.warning("zeroconf advertisement failed: %s", err)
        await zc.async_close()
        return None
    log.info("advertised %s on %s port %d", info.name, ", ".join(addresses), port)
    return Announcement(zc, info)
