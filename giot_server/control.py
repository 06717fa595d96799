"""The SuperLink's Control API, as ``flwr supernode ls/register/unregister`` call it.

In process, through Flower's own HTTP client and messages (no ``flwr`` subprocess per key), so that
enrolment sync compares public keys, which ``flwr supernode ls`` does not print.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from flwr.cli.flower_config import parse_superlink_connection
from flwr.cli.utils import init_http_client_from_connection
from flwr.proto.control_pb2 import (
    ListNodesRequest,
    RegisterNodeRequest,
    UnregisterNodeRequest,
)
from flwr.supercore.control import ControlHttpClient

from giot_server.enrolment import NodeKey

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Node:
    """A SuperNode the SuperLink knows."""

    node_id: int
    status: str
    der: bytes  # its public key (DER SubjectPublicKeyInfo); empty when it has none
    name: str


def connection(address: str, root_certificates: Path | None) -> dict[str, object]:
    """Return a Flower connection table (``root_certificates`` None: insecure)."""
    conn: dict[str, object] = {"address": address}
    if root_certificates is None:
        conn["insecure"] = True
    else:
        conn["root-certificates"] = str(root_certificates)
    return conn


class Control:
    """A Control API client of one SuperLink (use as a context manager)."""

    def __init__(self, address: str, root_certificates: Path | None) -> None:
        conn = parse_superlink_connection(connection(address, root_certificates), "giot-server")
        with contextlib.redirect_stdout(io.StringIO()):  # Flower prints "Using SuperLink: ..."
            self.client: ControlHttpClient = init_http_client_from_connection(conn)

    def __enter__(self) -> Control:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    def nodes(self) -> list[Node]:
        """List registered SuperNodes (those unregistered left out)."""
        res = self.client.ListNodes(ListNodesRequest())
        out = []
        for info in res.nodes_info:
            if info.status == "unregistered":
                continue
            der = b""
            if info.public_key:
                der = serialization.load_pem_public_key(info.public_key).public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            out.append(Node(int(info.node_id), str(info.status), der, str(info.name)))
        return out

    def register(self, key: NodeKey, name: str) -> int:
        res = self.client.RegisterNode(
            request=RegisterNodeRequest(public_key=key.flwr_bytes, name=name)
        )
        return int(res.node_id)

    def unregister(self, node_id: int) -> None:
        self.client.UnregisterNode(request=UnregisterNodeRequest(node_id=node_id))

    def sync(self, enrolled: dict[str, NodeKey]) -> tuple[list[str], list[int]]:
        """Register enrolled keys the SuperLink lacks, unregister nodes not enrolled.

        Returns (ids registered, node ids unregistered).
        """
        nodes = self.nodes()
        known = {n.der for n in nodes}
        wanted = {k.der for k in enrolled.values()}
        added = []
        for ident, key in enrolled.items():
            if key.der not in known:
                node_id = self.register(key, name=ident)
                log.info("registered SuperNode %s (%s) as node %d", ident, key.fingerprint, node_id)
                added.append(ident)
        removed = []
        for node in nodes:
            if node.der not in wanted:
                self.unregister(node.node_id)
                log.info("unregistered SuperNode %d (not enrolled)", node.node_id)
                removed.append(node.node_id)
        return added, removed
