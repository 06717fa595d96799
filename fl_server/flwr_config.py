"""Write the Flower SuperLink connections a GIoT federation uses (``scripts/federation``).

Flower 1.41 keeps SuperLink connections in ``$FLWR_HOME/config.toml`` (default ``~/.flwr``), not
in the app's ``pyproject.toml``: a ``[tool.flwr.federations]`` table there is migrated by the
first ``flwr run`` and commented out in place, which rewrites a tracked file. So the project's
``pyproject.toml`` has no such table and this helper writes the connections instead, through
Flower's own reader and writer (so the format is Flower's)::

    scripts/federation local [--supernodes 10] [--name giot-sim]
    scripts/federation remote ADDRESS (--root-certificates CA.pem | --insecure) [--name giot]
    scripts/federation show

then, with the server venv's ``bin`` on PATH (a local connection makes ``flwr`` start
``flower-superlink`` by name),
``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 flwr run . giot-sim``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from flwr.cli.constant import LOCAL_SUPERLINK_ADDRESS_MAGIC_VALUE
from flwr.cli.flower_config import (
    parse_superlink_connection,
    read_flower_config,
    set_default_superlink_connection,
    write_superlink_connection,
)


def local_connection(supernodes: int, cpus_per_node: int) -> dict[str, Any]:
    """Describe a local simulation: Flower starts a SuperLink and virtual SuperNodes (Ray).

    ``num-cpus`` must be a whole number: Flower 1.41's local simulation refuses 1.0 ("'float'
    object cannot be interpreted as an integer"); GPUs may be shared in fractions.
    """
    return {
        "address": LOCAL_SUPERLINK_ADDRESS_MAGIC_VALUE,
        "options": {
            "num-supernodes": supernodes,
            "backend": {"client-resources": {"num-cpus": cpus_per_node, "num-gpus": 0.0}},
        },
    }


def remote_connection(
    address: str, root_certificates: str | None, insecure: bool
) -> dict[str, Any]:
    """Describe a real SuperLink by its HTTP port (``flower-superlink --port``, 8000 by default)."""
    if insecure == (root_certificates is not None):
        raise ValueError("give exactly one of --root-certificates or --insecure")
    conn: dict[str, Any] = {"address": address}
    if root_certificates is not None:
        conn["root-certificates"] = str(Path(root_certificates).expanduser().resolve())
    else:
        conn["insecure"] = True
    return conn


def write(name: str, conn: dict[str, Any], default: bool) -> Path:
    """Add or replace connection ``name`` (and make it the default); return the file written."""
    write_superlink_connection(parse_superlink_connection(conn, name))
    if default:
        set_default_superlink_connection(name)
    return read_flower_config()[1]


def main(argv: list[str] | None = None) -> int:
    """Command line of ``scripts/federation``."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    loc = sub.add_parser("local", help="local simulation connection")
    loc.add_argument("--name", default="giot-sim")
    loc.add_argument("--supernodes", type=int, default=10)
    loc.add_argument("--cpus-per-node", type=int, default=1)
    rem = sub.add_parser("remote", help="connection to a real SuperLink")
    rem.add_argument("address")
    rem.add_argument("--name", default="giot")
    rem.add_argument("--root-certificates")
    rem.add_argument("--insecure", action="store_true")
    for p in (loc, rem):
        p.add_argument("--no-default", action="store_true", help="do not make it the default")
    sub.add_parser("show", help="print the Flower configuration file")
    args = parser.parse_args(argv)
    if args.cmd == "show":
        print(read_flower_config()[1].read_text(encoding="utf-8"))
        return 0
    try:
        if args.cmd == "local":
            conn = local_connection(args.supernodes, args.cpus_per_node)
        else:
            conn = remote_connection(args.address, args.root_certificates, args.insecure)
        path = write(args.name, conn, not args.no_default)
    except ValueError as err:
        parser.error(str(err))
    print(f"wrote SuperLink connection {args.name!r} to {path}")
    env = "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1"
    print(f'run: PATH="$PWD/.venv-server/bin:$PATH" {env} flwr run . {args.name}')
    return 0


if __name__ == "__main__":
    sys.exit(main())
