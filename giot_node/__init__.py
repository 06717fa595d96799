"""GIoT node: the Flower SuperNode of one home, beside Home Assistant (``giot-node``).

Home Assistant cannot load flwr (protobuf pins clash), so the node runs the SuperNode and hands
every train/evaluate message to the integration over a WebSocket the integration opens
(``giot_engine.node_protocol``). The node learns nothing and runs no app code of the server's:
Flower's ``flwr-clientapp`` is replaced by ``giot_node.clientapp`` (see ``giot_node.node``).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    """Return the installed ``giot`` distribution's version (announced, sent in the challenge)."""
    try:
        return version("giot")
    except PackageNotFoundError:
        return "0+unknown"
