"""Start the GSFS run on a SuperLink that runs elsewhere: the ``submit`` service of compose.yaml.

``giot-server run`` starts its own SuperLink and then ``flwr run``. In the containers the SuperLink
and the SuperExec are services of their own, so this does only the second half, with the same
pieces: wait until the SuperLink's Control API answers, bring the SuperNode keys it has registered
in line with ``HOME/enrolled`` (what ``giot-server enrol``/``revoke`` write), write the Flower
connection, and replace itself with ``flwr run APP giot-server --stream`` with the run config
``giot-server`` uses: the checkpoint folder (a path in the SuperExec's container, where the
ServerApp runs), the hub model (``giot_server.server.hub_model_run_config``), then the caller's
``--run-config`` (later keys win)::

    python /opt/giot/submit.py [--superlink superlink:8000] [--run-config 'num-server-rounds=20']
    python /opt/giot/submit.py --sync-only     # after `giot-server enrol`/`revoke` on the host
    python /opt/giot/submit.py --dry-run       # print the flwr command, contact nothing
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path

from giot_server.server import CONNECTION, hub_model_run_config

log = logging.getLogger("giot_server.submit")


def build_parser() -> argparse.ArgumentParser:
    """Build the command line (tests/server/test_deploy_files.py checks compose.yaml with it)."""
    parser = argparse.ArgumentParser(description=__doc__, prog="submit.py")
    parser.add_argument("--superlink", default="superlink:8000", help="the SuperLink's HOST:PORT")
    tls = parser.add_mutually_exclusive_group()
    tls.add_argument("--root-certificates", type=Path, default=Path("/giot/tls/ca.pem"))
    tls.add_argument("--insecure", action="store_true", help="no TLS (a test SuperLink)")
    parser.add_argument(
        "--home",
        type=Path,
        default=Path(os.environ.get("GIOT_SERVER_HOME", "/giot/home")),
        help="the giot-server home whose enrolled/ lists the nodes that may join",
    )
    parser.add_argument("--app", type=Path, default=Path("/opt/giot/app"), help="app project")
    parser.add_argument(
        "--checkpoint-dir",
        default="/giot/checkpoints",
        help="where the ServerApp keeps checkpoints, in the SuperExec's container",
    )
    parser.add_argument(
        "--run-config",
        action="append",
        default=[],
        metavar="'KEY=VALUE ...'",
        help="run-config overrides (repeatable), after the hub model's",
    )
    parser.add_argument("--wait", type=float, default=120.0, help="seconds to wait for it")
    parser.add_argument("--sync-only", action="store_true", help="sync enrolled keys and exit")
    parser.add_argument("--dry-run", action="store_true", help="print the flwr command and exit")
    return parser


def run_configs(checkpoint_dir: str, extra: list[str]) -> list[str]:
    """Compose the ``--run-config`` values: checkpoints and the hub model, then each of ``extra``.

    Separate values, because one string that names a key twice is invalid TOML to Flower, while
    across values the later one wins: a run may still choose another model.
    """
    base = " ".join([f"checkpoint-dir={json.dumps(checkpoint_dir)}", *hub_model_run_config()])
    return [base, *extra]


def flwr_run_command(app: Path, configs: list[str]) -> list[str]:
    """``flwr run`` of the app on the ``giot-server`` connection, streaming the run's log."""
    cmd = ["flwr", "run", str(app), CONNECTION, "--stream"]
    for config in configs:
        cmd += ["--run-config", config]
    return cmd


def sync_enrolled(address: str, root: Path | None, home: Path, wait: float) -> None:
    """Wait for the Control API, then register enrolled keys and unregister the others."""
    from giot_server.control import Control  # noqa: PLC0415 - flwr's client, only when needed
    from giot_server.enrolment import Enrolment  # noqa: PLC0415

    deadline = time.monotonic() + wait
    while True:
        try:
            with Control(address, root) as ctl:
                if root is None:  # no TLS: Flower refuses node authentication without it
                    ctl.nodes()
                    return
                added, removed = ctl.sync(Enrolment(home).keys())
        except (Exception, SystemExit) as err:  # flwr's client may exit on errors
            if time.monotonic() > deadline:
                raise SystemExit(f"the SuperLink at {address} did not answer: {err}") from err
            time.sleep(1.0)
            continue
        log.info("enrolled keys: %d registered now, %d unregistered", len(added), len(removed))
        return


def write_connection(address: str, root: Path | None) -> None:
    """Write the ``giot-server`` connection into ``$FLWR_HOME/config.toml``."""
    from fl_server import flwr_config  # noqa: PLC0415 - reads FLWR_HOME when called

    conn: dict[str, object] = {"address": address}
    conn |= {"insecure": True} if root is None else {"root-certificates": str(root)}
    flwr_config.write(CONNECTION, conn, default=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point; on success it does not return (it becomes ``flwr run``)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s submit %(levelname)s: %(message)s")
    root = None if args.insecure else args.root_certificates
    cmd = flwr_run_command(args.app, run_configs(args.checkpoint_dir, args.run_config))
    if args.dry_run:
        print(shlex.join(cmd))
        return 0
    sync_enrolled(args.superlink, root, args.home, args.wait)
    if args.sync_only:
        return 0
    write_connection(args.superlink, root)
    log.info("starting %s", shlex.join(cmd))
    sys.stdout.flush()
    os.execvp(cmd[0], cmd)  # signals reach flwr itself; `flwr stop RUN_ID` stops the run


if __name__ == "__main__":
    sys.exit(main())
