"""``giot-node``: a home's Flower SuperNode beside Home Assistant.

    giot-node init [--state-dir DIR]       SuperNode key pair, node id, pairing token (once)
    giot-node pair [--state-dir DIR]       a new pairing token (the old one stops working)
    giot-node show-key [--state-dir DIR]   the public key to enrol (`giot-server enrol KEY`)
    giot-node run --superlink HOST:PORT (--root-certificates CA.pem | --insecure)
                  [--listen HOST:PORT] [--trust-app PUBLISHER/NAME ...] [--no-advertise]
                  [--deadline-s S] [--server-key signing.pub] [--state-dir DIR]

``run`` starts ``flower-supernode`` against the SuperLink and hands each train/evaluate message
to the Home Assistant integration, which connects to ``ws://HOST:PORT/giot`` with the pairing
token. The node learns nothing and runs no app code of the server's: runs of apps not in
``--trust-app`` are refused. ``--server-key`` is the server's model-signing key (its
``signing.pub``): the node hands it to Home Assistant when it pairs, and the hub then refuses
any global model the server did not sign. State lives in ``--state-dir`` (default
``$GIOT_NODE_HOME`` or ``~/.local/share/giot-node``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from giot_node.node import Options, serve
from giot_node.state import NodeState, StateError
from giot_node.supernode import SuperNodeOptions

log = logging.getLogger("giot_node")
DEFAULT_LISTEN = "0.0.0.0:9093"
DEFAULT_TRUST = "giot/giot"
_APP = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")


def default_state_dir() -> Path:
    env = os.environ.get("GIOT_NODE_HOME")
    return Path(env) if env else Path.home() / ".local" / "share" / "giot-node"


def host_port(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT``."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


def superlink_address(value: str) -> str:
    host_port(value)
    return value


def app_id(value: str) -> str:
    if not _APP.match(value):
        raise argparse.ArgumentTypeError(f"expected PUBLISHER/NAME, got {value!r}")
    return value


def positive(value: str) -> float:
    number = float(value)
    if not 0 < number <= 86400:
        raise argparse.ArgumentTypeError(f"expected seconds in (0, 86400], got {value!r}")
    return number


def server_key(value: str) -> str:
    """Read the server's Ed25519 public key file (PEM, as ``giot-server init`` writes it): hex."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
        Ed25519PublicKey,
    )

    if not value:  # the default: no key
        return ""
    try:
        key = serialization.load_pem_public_key(Path(value).expanduser().read_bytes())
    except (OSError, ValueError) as err:
        raise argparse.ArgumentTypeError(f"{value}: {err}") from err
    if not isinstance(key, Ed25519PublicKey):
        raise argparse.ArgumentTypeError(f"{value}: not an Ed25519 public key")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def build_parser() -> argparse.ArgumentParser:
    """Build the whole command line (the HA app's ``run.sh`` is checked against it)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="state directory (default: $GIOT_NODE_HOME or ~/.local/share/giot-node)",
    )
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser = argparse.ArgumentParser(
        prog="giot-node", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("init", parents=[common], help="create keys, node id and pairing token")
    sub.add_parser("pair", parents=[common], help="make a new pairing token")
    sub.add_parser("show-key", parents=[common], help="print the SuperNode public key")

    run = sub.add_parser("run", parents=[common], help="run the node")
    run.add_argument(
        "--superlink", required=True, type=superlink_address, help="SuperLink Fleet API HOST:PORT"
    )
    tls = run.add_mutually_exclusive_group(required=True)
    tls.add_argument(
        "--root-certificates", type=Path, metavar="CA.pem", help="CA that signed the SuperLink's"
    )
    tls.add_argument(
        "--insecure", action="store_true", help="no TLS, no node authentication (tests only)"
    )
    run.add_argument(
        "--listen",
        type=host_port,
        default=host_port(DEFAULT_LISTEN),
        metavar="HOST:PORT",
        help=f"where Home Assistant connects (default {DEFAULT_LISTEN})",
    )
    run.add_argument(
        "--trust-app",
        type=app_id,
        action="append",
        default=None,
        metavar="PUBLISHER/NAME",
        help=f"an app whose runs this node serves (repeatable; default {DEFAULT_TRUST})",
    )
    run.add_argument("--no-advertise", action="store_true", help="no zeroconf announcement")
    run.add_argument(
        "--deadline-s",
        type=positive,
        default=300.0,
        help="how long a task may take when the server names no deadline (default 300)",
    )
    run.add_argument(
        "--server-key",
        type=server_key,
        default="",
        metavar="signing.pub",
        help="the server's model-signing public key (giot-server init writes it)",
    )
    return parser


def _init(state: NodeState) -> int:
    result = state.init()
    print(f"node id: {result.node_id}")
    print("keys created" if result.new_key else f"existing keys kept in {state.root}")
    print("SuperNode public key (on the server: giot-server enrol '<this line>'):")
    print(result.public_key)
    if result.token is not None:
        print("pairing token (enter it in Home Assistant; shown only now):")
        print(result.token)
    else:
        print("a pairing token exists (not shown again); `giot-node pair` makes a new one")
    return 0


def _run(args: argparse.Namespace, state: NodeState) -> int:
    state.token()  # fail now, not in the child
    state.private_key()
    ca: Path | None = None
    if args.insecure:
        log.warning("--insecure: no TLS to the SuperLink and no node authentication (tests only)")
    else:
        ca = args.root_certificates.expanduser().resolve()
        if not ca.is_file():
            print(f"giot-node: {ca} is not a file", file=sys.stderr)
            return 2
    trusted = tuple(dict.fromkeys(args.trust_app or [DEFAULT_TRUST]))
    host, port = args.listen
    opts = Options(
        state=state,
        supernode=SuperNodeOptions(args.superlink, ca, trusted, args.deadline_s),
        listen_host=host,
        listen_port=port,
        advertise=not args.no_advertise,
        server_key=args.server_key,
    )
    return asyncio.run(serve(opts))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    state = NodeState(args.state_dir or default_state_dir())
    try:
        if args.cmd == "init":
            return _init(state)
        if args.cmd == "pair":
            token = state.new_token()
            print("new pairing token (the old one no longer works; shown only now):")
            print(token)
            return 0
        if args.cmd == "show-key":
            print(state.public_key())
            return 0
        return _run(args, state)
    except StateError as err:
        print(f"giot-node: {err}", file=sys.stderr)
        return 2
