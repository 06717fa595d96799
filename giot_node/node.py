"""``giot-node run``: one asyncio process, until SIGTERM/SIGINT stops all of it (exit 0).

It holds the hub link and the bridge (``giot_node.link``), the SuperNode child
(``giot_node.supernode``) and the LAN announcement (``giot_node.advertise``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
from dataclasses import dataclass

from giot_node import package_version
from giot_node.advertise import Announcement, announce
from giot_node.link import Link
from giot_node.state import NodeState
from giot_node.supernode import (
    SuperNodeOptions,
    Supervisor,
    free_port,
    supernode_command,
    supernode_env,
    write_bin,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Options:
    """Everything ``run`` was told."""

    state: NodeState
    supernode: SuperNodeOptions
    listen_host: str
    listen_port: int
    advertise: bool
    server_key: str = ""  # the server's Ed25519 public key (hex), told to the hub at pairing


async def serve(opts: Options) -> int:
    """Run until a signal (0) or until the SuperNode cannot be started at all (1)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    state = opts.state
    link = Link(state, opts.supernode.superlink, opts.server_key)
    await link.start(opts.listen_host, opts.listen_port)
    announcement: Announcement | None = None
    if opts.advertise:
        announcement = await announce(opts.listen_host, link.port, link.node_id, package_version())
    write_bin(state)
    command = functools.partial(supernode_command, state, opts.supernode)
    supervisor = Supervisor(lambda: command(free_port()), supernode_env(state), link.set_supernode)
    supervising = asyncio.create_task(supervisor.run(stop))
    log.info(
        "giot-node %s (node %s) ready: hub WebSocket on %s:%d/giot, bridge %s, superlink %s",
        package_version(),
        link.node_id,
        opts.listen_host,
        link.port,
        state.bridge_path,
        opts.supernode.superlink,
    )
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({supervising, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    rc = 0
    try:
        await supervising
    except Exception:
        log.exception("the SuperNode could not be run")
        rc = 1
    stopping.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await stopping
    await link.close()
    if announcement is not None:
        await announcement.close()
    log.info("giot-node stopped")
    return rc
