"""``giot-server``: GIoT's aggregation server in one command.

    giot-server init [--san NAME_OR_IP ...] [--force]   CA + server certificate (TLS), signing key
    giot-server base-model --data DIR [--out DIR]        build (and sign) the base model: round 0
    giot-server enrol PUBLIC_KEY [--name NAME]           let a home node (SuperNode key) join
    giot-server revoke PUBLIC_KEY|FINGERPRINT            stop it joining (unregistered at once)
    giot-server status                                   certificates, keys, the running server
    giot-server [run] [--host H] [--port P] [--run-config 'k=v ...'] [--insecure]
    giot-server status-page [--checkpoint-dir DIR]       the status page alone (a finished run)

``run`` (the default) starts a Flower SuperLink with TLS and SuperNode authentication, runs the
GSFS ServerApp through ``flwr run`` until its last round, keeps checkpoints, advertises itself with
zeroconf (``_giot-server._tcp.local.``, when python-zeroconf is installed and the host is not
loopback), serves a read-only status page (rounds, nodes, bytes, latency, metrics, DP epsilon) on
http://127.0.0.1:9094/ (``--status-host``/``--status-port``; any address but loopback needs
``--status-password-file``) and stops everything it started on SIGINT/SIGTERM. All state lives in
``--home`` (default ``$GIOT_SERVER_HOME`` or ``~/.local/share/giot-server``).

A home node joins with ``flower-supernode --superlink HOST:PORT --root-certificates ca.pem
--auth-supernode-private-key KEY`` where KEY is an EC (NIST P-256/P-384) private key in OpenSSH
format (``ssh-keygen -t ecdsa -b 384 -N '' -f KEY``) whose ``KEY.pub`` was enrolled.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from giot_server import certs
from giot_server.enrolment import Enrolment, InvalidKeyError, load_key_arg
from giot_server.server import Home, Options, Server, ServerError, control_for, default_home
from giot_server.status_page import (
    DEFAULT_PORT,
    StatusConfig,
    StatusPageError,
    check_binding,
    is_loopback,
    read_password,
    serve_forever,
    tls_context,
)

log = logging.getLogger("giot_server")
COMMANDS = ("run", "init", "enrol", "revoke", "status", "status-page", "base-model")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--home", type=Path, default=None, help="state directory (default: %(default)s)"
    )
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser = argparse.ArgumentParser(
        prog="giot-server", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    page = argparse.ArgumentParser(add_help=False)
    page.add_argument(
        "--status-host",
        default="127.0.0.1",
        help="status page address (other than loopback: only with --status-password-file)",
    )
    page.add_argument("--status-port", type=int, default=DEFAULT_PORT, help="status page port")
    page.add_argument(
        "--status-password-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="HTTP Basic password (first line; any user name) for the status page",
    )

    run = sub.add_parser("run", parents=[common, page], help="run the server (default)")
    run.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: LAN)")
    run.add_argument("--port", type=int, default=8000, help="SuperLink port (Fleet+Control)")
    run.add_argument(
        "--insecure", action="store_true", help="no TLS, no node authentication (tests only)"
    )
    run.add_argument("--app", type=Path, default=None, help="the GIoT project folder")
    run.add_argument(
        "--run-config",
        action="append",
        default=[],
        metavar="'KEY=VALUE ...'",
        help="run-config overrides for flwr run (repeatable), e.g. 'num-server-rounds=10'",
    )
    run.add_argument("--no-advertise", action="store_true", help="no zeroconf advertisement")
    run.add_argument("--no-status-page", action="store_true", help="no status page")
    run.add_argument("--ready-timeout", type=float, default=60.0, help=argparse.SUPPRESS)

    init = sub.add_parser("init", parents=[common], help="create the CA and server certificate")
    init.add_argument(
        "--san",
        action="append",
        default=[],
        metavar="NAME_OR_IP",
        help="extra host name or IP the server is reached by (repeatable)",
    )
    init.add_argument("--force", action="store_true", help="replace existing certificates")

    base = sub.add_parser(
        "base-model", parents=[common], help="build the base model every hub starts from"
    )
    base.add_argument(
        "--data", type=Path, required=True, help="folder holding iot23/ (labelled IoT-23 captures)"
    )
    base.add_argument("--out", type=Path, default=None, help="default: HOME/base-model")
    base.add_argument("--seed", type=int, default=23, help="training seed (default %(default)s)")
    base.add_argument("--steps", type=int, default=300, help="AdamW steps (default %(default)s)")
    base.add_argument("--max-flows", type=int, default=None, help="flows read per capture, at most")
    base.add_argument(
        "--holdout",
        default=None,
        metavar="NAME",
        help="capture (part of its name) the card's figures are measured on; 'none': no figures",
    )
    base.add_argument(
        "--home-events",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="a benign home event log folder the model also learns (repeatable)",
    )
    base.add_argument("--float16", action="store_true", help="store the weights in float16")
    base.add_argument("--unsigned", action="store_true", help="do not sign (no server key)")

    enrol = sub.add_parser("enrol", parents=[common], help="enrol a SuperNode public key")
    enrol.add_argument("public_key", help="OpenSSH/PEM EC public key file (or its text)")
    enrol.add_argument("--name", default=None, help="a note kept beside the key")

    revoke = sub.add_parser("revoke", parents=[common], help="revoke a SuperNode public key")
    revoke.add_argument("public_key", help="key file, key text, SHA256 fingerprint or id")

    sub.add_parser("status", parents=[common], help="show the server's state")

    alone = sub.add_parser(
        "status-page", parents=[common, page], help="serve the status page of a checkpoint dir"
    )
    alone.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="where rounds.jsonl is (default: HOME/checkpoints)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``giot-server``."""
    args_in = list(sys.argv[1:] if argv is None else argv)
    if not args_in or (args_in[0] not in COMMANDS and args_in[0] not in {"-h", "--help"}):
        args_in = ["run", *args_in]
    args = _parser().parse_args(args_in)
    home = Home((args.home or default_home()).expanduser().resolve())
    _logging(home, args.verbose, to_file=args.cmd == "run")
    commands: dict[str, Callable[[], int]] = {
        "init": lambda: _init(home, args.san, args.force),
        "enrol": lambda: _enrol(home, args.public_key, args.name),
        "revoke": lambda: _revoke(home, args.public_key),
        "status": lambda: _status(home),
        "status-page": lambda: _status_page(args, home),
        "base-model": lambda: _base_model(args, home),
        "run": lambda: _run(args, home),
    }
    try:
        return commands[args.cmd]()
    except (ServerError, StatusPageError) as err:
        log.error("%s", err)
        return 2


def _run(args: argparse.Namespace, home: Home) -> int:
    opts = Options(
        home=home.root,
        host=args.host,
        port=args.port,
        insecure=args.insecure,
        app=args.app,
        run_config=args.run_config,
        advertise=not args.no_advertise,
        ready_timeout=args.ready_timeout,
        status=None if args.no_status_page else _status_config(args, home, home.checkpoints),
    )
    return Server(opts).run()


def _status_page(args: argparse.Namespace, home: Home) -> int:
    checkpoints = (args.checkpoint_dir or home.checkpoints).expanduser().resolve()
    serve_forever(_status_config(args, home, checkpoints))
    return 0


def _status_config(args: argparse.Namespace, home: Home, checkpoints: Path) -> StatusConfig:
    """Build the status page's settings: off loopback, a password is a must and TLS if possible."""
    password = None
    if args.status_password_file is not None:
        password = read_password(args.status_password_file.expanduser())
    check_binding(args.status_host, password)
    tls = None
    if not is_loopback(args.status_host):
        if home.certs.complete():
            tls = tls_context(home.certs.server_cert, home.certs.server_key)
        else:
            log.warning(
                "status page on %s over plain HTTP: its password travels in clear text "
                "(`giot-server init` makes the certificate it would use for HTTPS)",
                args.status_host,
            )
    return StatusConfig(checkpoints, args.status_host, args.status_port, password, tls)


def _logging(home: Home, verbose: bool, to_file: bool) -> None:
    fmt = logging.Formatter("%(asctime)s giot-server %(levelname)s: %(message)s")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if to_file:
        home.logs.mkdir(parents=True, exist_ok=True, mode=0o700)
        handlers.append(logging.FileHandler(home.logs / "giot-server.log", encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(fmt)
        log.addHandler(handler)
    log.setLevel(logging.DEBUG if verbose else logging.INFO)


def _init(home: Home, sans: list[str], force: bool) -> int:
    home.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    from fl_server.signing import create_key, public_hex  # noqa: PLC0415 - cryptography

    if home.signing_key.exists():  # never replaced: paired hubs know it
        log.info("signing key kept: %s", home.signing_key)
    else:
        key = create_key(home.root)
        log.info(
            "signing key %s (give %s to every node as --server-key; public key %s)",
            home.signing_key,
            home.signing_pub,
            public_hex(key),
        )
    try:
        names = certs.create(home.root, sans, force=force)
    except FileExistsError as err:
        log.error("certificates exist (%s): give --force to replace them", err)
        return 1
    log.info("CA: %s (give it to every node as --root-certificates)", home.certs.ca_cert)
    log.info("server certificate %s for %s", home.certs.server_cert, ", ".join(names))
    if home.running() is not None:
        log.warning("a server runs on this home: restart it to use the new certificate")
    return 0


def _base_model(args: argparse.Namespace, home: Home) -> int:
    from fl_server.base_model import BuildOptions, build  # noqa: PLC0415 - training code
    from fl_server.signing import load_private_key  # noqa: PLC0415

    key = None
    if not args.unsigned:
        if not home.signing_key.is_file():
            log.error(
                "no signing key in %s: run `giot-server init` (or give --unsigned)", home.root
            )
            return 1
        key = load_private_key(home.signing_key)
    words = ["giot-server base-model --data DATA", f"--seed {args.seed}", f"--steps {args.steps}"]
    words += [f"--max-flows {args.max_flows}"] if args.max_flows else []
    words += [f"--holdout {args.holdout}"] if args.holdout else []
    words += [f"--home-events {p.name}" for p in args.home_events]
    words += ["--float16"] if args.float16 else []
    opts = BuildOptions(
        data=args.data.expanduser(),
        out=(args.out or home.base_model).expanduser().resolve(),
        seed=args.seed,
        steps=args.steps,
        max_flows=args.max_flows,
        holdout=args.holdout,
        homes=tuple(p.expanduser() for p in args.home_events),
        dtype="F16" if args.float16 else "F32",
        command=" ".join(words),
    )
    try:
        built = build(opts, key)
    except (OSError, ValueError) as err:
        log.error("no base model built: %s", err)
        return 1
    log.info(
        "base model %s in %s: %d parameters, %d bytes of model files, %s",
        built.version,
        built.directory,
        built.parameters,
        sum(built.files.values()),
        "signed" if key is not None else "unsigned",
    )
    if built.metrics is not None:
        m = built.metrics
        log.info(
            "held out %s: window F1 %.3f, AUROC %.3f, %.2f false alarms per device-day",
            built.holdout,
            m.window_f1,
            m.window_auroc,
            m.fa_per_device_day,
        )
    return 0


def _sync_running(home: Home) -> None:
    ctl = control_for(home)
    if ctl is None:
        log.info("no server running on %s: applied at its next start", home.root)
        return
    with ctl:
        added, removed = ctl.sync(Enrolment(home.root).keys())
    log.info("running server updated: %d registered, %d unregistered", len(added), len(removed))


def _enrol(home: Home, arg: str, name: str | None) -> int:
    try:
        key = load_key_arg(arg)
    except InvalidKeyError as err:
        log.error("%s", err)
        return 1
    if Enrolment(home.root).add(key, name):
        log.info("enrolled %s (id %s)", key.fingerprint, key.ident)
    else:
        log.info("already enrolled: %s (id %s)", key.fingerprint, key.ident)
    _sync_running(home)
    return 0


def _revoke(home: Home, arg: str) -> int:
    key = Enrolment(home.root).remove(arg)
    if key is None:
        log.error("no enrolled key matches %s", arg)
        return 1
    log.info("revoked %s (id %s)", key.fingerprint, key.ident)
    _sync_running(home)
    return 0


def _status(home: Home) -> int:
    state = home.running()
    status: dict[str, object] = {
        "home": str(home.root),
        "certificates": home.certs.complete(),
        "enrolled": {i: k.fingerprint for i, k in Enrolment(home.root).keys().items()},
        "running": state,
        "checkpoints": sorted(p.name for p in home.checkpoints.glob("round-*.npz")),
    }
    if home.certs.complete():
        status["server-names"] = certs.server_names(home.certs.server_cert)
    ctl = control_for(home)
    if ctl is not None:
        with ctl:
            status["nodes"] = [
                {"node-id": n.node_id, "status": n.status, "name": n.name} for n in ctl.nodes()
            ]
    print(json.dumps(status, indent=2))
    return 0
