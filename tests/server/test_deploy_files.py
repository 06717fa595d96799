"""The container recipe of the server (``deploy/server``) against the real command lines it runs.

There is no Docker where this is developed, so ``compose.yaml`` is checked without it:

- every service's command is parsed by the real parser of its program (flwr 1.42's
  ``flower-superlink`` and ``flower-superexec`` argparse parsers, the ``flwr`` click group,
  ``giot-server``'s and ``submit.py``'s own), and every ``--flag`` must be one of that parser's
  option strings exactly (argparse would accept an abbreviation); a misspelt flag fails;
- every file a command reads inside its container is mounted there (a volume, a secret, or baked
  into the image), the CA key is mounted nowhere, and the services agree with each other (port,
  SuperExec secret, TLS, the SuperLink name the server certificate must carry);
- the image installs what the server imports (the import closure of the ServerApp and
  ``giot-server`` maps onto distributions the Dockerfile's ``pip install`` brings in);
- and the superlink, superexec and submit commands run for real as processes, with the paths and
  host names mapped to a temporary folder and loopback: a TLS SuperLink with node
  authentication in ``--isolation process``, a separate SuperExec that authenticates with the
  shared secret and runs the ServerApp, ``submit.py`` registering the enrolled keys and starting
  the run with the hub model, two SuperNodes training two GSFS rounds.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import secrets
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import click
import pytest
import yaml  # type: ignore[import-untyped]
from flwr.cli.app import typer_click_object
from flwr.common.config import parse_config_args
from flwr.supercore.cli.flower_superexec import _parse_args as superexec_parser
from flwr.superlink.cli.flower_superlink import _parse_args_run_superlink as superlink_parser
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from fl_server.checkpoint import load_latest
from fl_server.run_config import defaults
from giot_engine.tokenizer import Vocabulary
from giot_server import cli as giot_server_cli
from giot_server import procs
from giot_server.server import hub_model_run_config
from tests.server.deployment import ROOT, RUN_CONFIG, Federation, run_config_arg, stage_app
from tests.server.test_giot_server import gs, node_key

DEPLOY = ROOT / "deploy" / "server"
HOME = "/srv/giot-home"  # what GIOT_SERVER_HOME stands for while parsing
IMAGE_FILES = ("/opt/giot/submit.py", "/opt/giot/app")  # baked into the image (Dockerfile)


def _submit_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("giot_deploy_submit", DEPLOY / "submit.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


submit = _submit_module()


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}``."""

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        if op == ":-":
            return str(arg)
        raise KeyError(f"{name} unset: {arg}")

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, text)


def compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    raw = (DEPLOY / "compose.yaml").read_text("utf-8")
    loaded: dict[str, Any] = yaml.safe_load(
        interpolate(raw, {"GIOT_SERVER_HOME": HOME} if env is None else env)
    )
    return loaded


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


# -- each command against its program's own parser --------------------------------------------


def _argparse(parser: argparse.ArgumentParser, args: list[str]) -> argparse.Namespace:
    """Parse exactly: unknown or abbreviated flags are errors."""
    known = set(parser._option_string_actions)
    for arg in args:
        flag = arg.split("=", 1)[0]
        if flag.startswith("--") and flag not in known:
            raise ValueError(f"{flag} is not an option of {parser.prog}")
    try:
        return parser.parse_args(args)
    except SystemExit as err:
        raise ValueError(f"{parser.prog} refuses {args}") from err


def _flwr(args: list[str]) -> dict[str, Any]:
    """Parse a ``flwr`` command line with Flower's own click group."""
    try:
        group = typer_click_object
        assert isinstance(group, click.Group)
        ctx = group.make_context("flwr", list(args))
        name, cmd, rest = group.resolve_command(ctx, list(args))
        assert cmd is not None
        assert name is not None
        params: dict[str, Any] = cmd.make_context(name, rest, parent=ctx).params
    except click.ClickException as err:
        raise ValueError(f"flwr refuses {args}: {err}") from err
    return {"cmd": name, **params}


def _superlink(args: list[str]) -> argparse.Namespace:
    parser = superlink_parser()
    parser.prog = "flower-superlink"
    return _argparse(parser, args)


def _superexec(args: list[str]) -> argparse.Namespace:
    parser = superexec_parser()
    parser.prog = "flower-superexec"
    return _argparse(parser, args)


def _giot_server(args: list[str]) -> argparse.Namespace:
    parser = giot_server_cli._parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub = action.choices[args[0]]
    _argparse(sub, args[1:])
    return parser.parse_args(args)


def _submit(args: list[str]) -> argparse.Namespace:
    return _argparse(submit.build_parser(), args)


def parse(command: list[str]) -> Any:
    """Parse one service command with the parser of the program it runs."""
    program, *args = command
    parsers: dict[str, Callable[[list[str]], Any]] = {
        "flower-superlink": _superlink,
        "flower-superexec": _superexec,
        "giot-server": _giot_server,
        "flwr": _flwr,
    }
    if program == "python" and args[:1] == ["/opt/giot/submit.py"]:
        return _submit(args[1:])
    if program not in parsers:
        raise ValueError(f"no parser known for {program}")
    return parsers[program](args)


def test_compose_parses_and_builds_the_server_image_from_the_checkout() -> None:
    spec = compose()
    assert set(spec["services"]) == {"superlink", "superexec", "submit", "status"}
    for name, svc in spec["services"].items():
        assert svc["image"] == "giot-server:0.1.0", name
        context = (DEPLOY / svc["build"]["context"]).resolve()
        assert context == ROOT, name
        assert (context / svc["build"]["dockerfile"]).is_file(), name
    assert spec["services"]["submit"]["restart"] == "no"
    assert spec["services"]["superlink"]["restart"] == "unless-stopped"
    with pytest.raises(KeyError, match="GIOT_SERVER_HOME"):
        compose({})  # the home is required, never a default


@pytest.mark.parametrize("service", ["superlink", "superexec", "submit", "status"])
def test_every_service_command_is_accepted_by_its_program(service: str) -> None:
    parse(services()[service]["command"])


@pytest.mark.parametrize("service", ["superlink", "superexec", "submit", "status"])
def test_a_misspelt_flag_is_refused(service: str) -> None:
    command = services()[service]["command"]
    flags = [i for i, arg in enumerate(command) if arg.startswith("--")]
    assert flags, service
    for i in flags:
        for typo in (command[i] + "x", command[i][:-1], command[i].replace("-", "_", 3)):
            with pytest.raises(ValueError, match=r"option|refuses"):
                parse([*command[:i], typo, *command[i + 1 :]])


def test_the_services_agree_with_each_other() -> None:
    svc = services()
    link = _superlink(svc["superlink"]["command"][1:])
    assert link.isolation == "process"  # the SuperLink starts no SuperExec of its own
    assert link.enable_supernode_auth
    assert not link.insecure
    assert link.runtime_dependency_install is False
    assert link.superexec_auth_secret_file == "/run/secrets/superexec_secret"
    published = svc["superlink"]["ports"][0].rsplit(":", 1)[1]
    assert published == str(link.port)
    assert svc["superlink"]["ports"][0].startswith("127.0.0.1:")  # loopback unless asked
    healthcheck = " ".join(svc["superlink"]["healthcheck"]["test"])
    assert f"https://localhost:{link.port}/health" in healthcheck
    assert link.ssl_ca_certfile in healthcheck

    exe = _superexec(svc["superexec"]["command"][1:])
    assert exe.runtime_api_address == f"superlink:{link.port}"
    assert exe.superexec_auth_secret_file == link.superexec_auth_secret_file
    assert exe.root_certificates == link.ssl_ca_certfile
    assert not exe.insecure

    sub = _submit(svc["submit"]["command"][2:])
    assert sub.superlink == exe.runtime_api_address
    assert sub.root_certificates == Path(link.ssl_ca_certfile)
    mounts = {v.split(":")[1] for v in svc["superexec"]["volumes"]}
    assert sub.checkpoint_dir in mounts  # the ServerApp runs in the SuperExec's container
    page = _giot_server(svc["status"]["command"][1:])
    assert str(page.checkpoint_dir) == sub.checkpoint_dir
    assert svc["superexec"]["depends_on"]["superlink"]["condition"] == "service_healthy"


def _container_paths(command: list[str]) -> list[str]:
    out = []
    for arg in command:
        out += re.findall(r"(/(?:giot|run|opt)/[\w./-]+)", arg)
    return out


@pytest.mark.parametrize("service", ["superlink", "superexec", "submit", "status"])
def test_what_a_command_reads_is_mounted_in_its_container(service: str) -> None:
    svc = services()[service]
    volumes = [v.split(":") for v in svc.get("volumes", [])]
    targets = [v[1] for v in volumes]
    targets += [f"/run/secrets/{s}" for s in svc.get("secrets", [])]
    targets += list(IMAGE_FILES)
    health = svc.get("healthcheck", {}).get("test", [])
    for path in _container_paths([*svc["command"], *health]):
        if (service, path) == ("submit", "/giot/checkpoints"):
            continue  # a path in the SuperExec's container (test_the_services_agree...)
        inside = any(path == t or path.startswith(f"{t}/") for t in targets)
        holds = any(t.startswith(f"{path}/") for t in targets)  # a folder of mounted files
        assert inside or holds, (service, path)
    for source, target, *mode in (v for v in volumes if v[0].startswith("/")):
        name = Path(source).relative_to(HOME).as_posix()
        assert name in {"ca.pem", "server.pem", "server.key", "enrolled", "checkpoints"}, name
        assert name != "ca.key"  # the CA's key stays with giot-server on the host
        if name not in {"checkpoints"} or service == "status":
            assert mode == ["ro"], (service, target)
    secret_files = {s["file"] for s in compose()["secrets"].values()}
    assert secret_files == {f"{HOME}/superexec.secret", f"{HOME}/status.password"}


def test_submit_starts_the_hub_model_run_with_a_command_flwr_accepts() -> None:
    args = services()["submit"]["command"][2:]
    extra = ["--run-config", "seed=7 n-embd=16", "--run-config", "seed=8"]
    run = subprocess.run(
        [sys.executable, str(DEPLOY / "submit.py"), *args, "--dry-run", *extra],
        env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'engine' / 'src'}"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    command = shlex.split(run.stdout.strip())
    parsed = _flwr(command[1:])
    assert parsed["cmd"] == "run"
    assert parsed["app"] == "/opt/giot/app"
    assert parsed["superlink"] == "giot-server"
    assert parsed["stream"]
    config = parse_config_args(list(parsed["run_config_overrides"]))
    assert set(config) <= set(defaults())  # the SuperLink refuses undeclared keys
    hub = parse_config_args([" ".join(hub_model_run_config())])
    assert {k: config[k] for k in hub} == hub | {"n-embd": 16}  # the caller's keys come last
    assert hub["n-embd"] != 16
    assert config["checkpoint-dir"] == "/giot/checkpoints"
    assert config["seed"] == 8


# -- the image -----------------------------------------------------------------------------------


def _dockerfile() -> str:
    return (DEPLOY / "Dockerfile").read_text("utf-8")


def _pip_specs() -> list[str]:
    text = _dockerfile().replace("\\\n", " ")  # continuation lines joined
    line = next(ln for ln in text.splitlines() if "pip install" in ln)
    specs = shlex.split(line.split("pip install", 1)[1].split("&&")[0])
    return specs


def _closure(specs: list[str]) -> set[str]:
    """Distributions the image's ``pip install`` brings in (from installed metadata)."""
    names = {"./engine": "giot-engine", ".": "giot"}
    todo: list[tuple[str, frozenset[str]]] = []
    for spec in specs:
        req = Requirement(
            names.get(spec.split("[")[0], spec.split("[")[0]) + spec[len(spec.split("[")[0]) :]
        )
        todo.append((req.name, frozenset(req.extras)))
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        if (canonicalize_name(name), extras) in seen:
            continue
        seen.add((canonicalize_name(name), extras))
        for text in metadata.requires(name) or []:
            req = Requirement(text)
            envs = [{"extra": e} for e in extras or {""}] + [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                todo.append((req.name, frozenset(req.extras)))
    return {n for n, _ in seen}


def test_the_image_installs_the_server_with_its_pins() -> None:
    text = _dockerfile()
    assert "FROM python:3.11-slim-bookworm" in text
    specs = _pip_specs()
    assert specs[:2] == ["./engine", ".[node]"]
    pin = metadata.version("flwr")
    assert f"flwr[dp]=={pin}" in specs
    assert pin == "1.42.0"
    copies = re.findall(r"^COPY (\S+) ", text, flags=re.M)
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text("utf-8").splitlines()
    admitted = {ln[1:].rstrip("/") for ln in ignore if ln.startswith("!")}
    for src in copies:
        assert (ROOT / src).exists(), src
        path = src.rstrip("/")
        assert path in admitted or any(a.startswith(f"{path}/") for a in admitted), src
    assert "stage_app(Path('/src'), Path('/opt/giot/app'))" in text.replace("\\\n", "")


def test_the_image_holds_every_distribution_the_server_imports() -> None:
    """What the interpreter loads at start (site's .pth hooks) is left out: not the server's."""
    show = "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    probe = (
        "import sys, fl_server.server_app, fl_server.client_app, giot_server.cli, "
        f"giot_server.control, giot_server.status_page, dp_accounting; {show}"
    )
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'engine' / 'src'}"}
    found = []
    for code in (f"import sys; {show}", probe):
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr
        found.append(set(done.stdout.split()))
    owners = metadata.packages_distributions()
    imported = {
        canonicalize_name(dist)
        for mod in found[1] - found[0]
        if mod not in sys.stdlib_module_names
        for dist in owners.get(mod, [])
    }
    assert {"numpy", "flwr", "giot", "giot-engine", "dp-accounting"} <= imported
    missing = imported - _closure(_pip_specs())
    assert not missing, f"imported but not installed by the Dockerfile: {sorted(missing)}"
    assert "torch" not in _closure(_pip_specs())  # the runtime image stays without torch


# -- the compose commands as processes -----------------------------------------------------------


class Localised:
    """Map a container command onto this machine: paths into ``tmp``, ``superlink`` to loopback."""

    def __init__(self, tmp: Path, port: int) -> None:
        self.port = port
        self.paths = {
            "/giot/home": tmp / "home",
            "/giot/state": tmp / "state",
            "/giot/checkpoints": tmp / "checkpoints",
            "/run/secrets/superexec_secret": tmp / "home" / "superexec.secret",
            "/opt/giot/app": tmp / "app",
            "/opt/giot/submit.py": DEPLOY / "submit.py",
        }

    def arg(self, arg: str) -> str:
        arg = arg.replace("superlink:8000", f"127.0.0.1:{self.port}")
        arg = arg.replace("localhost:8000", f"localhost:{self.port}")
        for container, here in self.paths.items():
            arg = arg.replace(container, str(here))
        return "127.0.0.1" if arg == "0.0.0.0" else arg

    def command(self, command: list[str]) -> list[str]:
        out = [self.arg(a) for a in command]
        if "--port" in out:
            out[out.index("--port") + 1] = str(self.port)
        return out


@pytest.fixture
def fed(tmp_path: Path) -> Iterator[Federation]:
    fed = Federation(tmp_path)
    try:
        yield fed
    finally:
        fed.stop()


def _wait(check: Callable[[], bool], fed: Federation, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        dead = [k for k, p in fed.procs.items() if p.poll() not in (None, 0)]
        assert not dead, f"{dead} exited while waiting for {what}{fed.logs()}"
        assert time.monotonic() < deadline, f"no {what} in {timeout} s{fed.logs()}"
        time.sleep(0.3)


def test_the_compose_services_run_a_federation_as_processes(
    tmp_path: Path, fed: Federation
) -> None:
    svc = services()
    local = Localised(tmp_path, fed.port)
    home = tmp_path / "home"
    assert gs(home, "init", "--san", "superlink").returncode == 0
    keys = [node_key(tmp_path / f"home{i}.key") for i in range(2)]
    for key in keys:
        assert gs(home, "enrol", str(key.with_suffix(".pub"))).returncode == 0
    (home / "superexec.secret").write_bytes(secrets.token_bytes(32))
    for folder in ("state", "checkpoints"):
        (tmp_path / folder).mkdir()
    stage_app(tmp_path / "app")

    fed.start("superlink", *local.command(svc["superlink"]["command"]))
    health = local.command(svc["superlink"]["healthcheck"]["test"][1:])

    def healthy() -> bool:
        return subprocess.run(health, capture_output=True, check=False).returncode == 0

    _wait(healthy, fed, "healthy SuperLink (the compose healthcheck)", 60)
    # --isolation process: the SuperLink starts no SuperExec (nor ServerApp) of its own.
    assert procs.descendants(fed.procs["superlink"].pid) == [], fed.logs()
    fed.start("superexec", *local.command(svc["superexec"]["command"]))

    submit_cmd = local.command(svc["submit"]["command"])
    env = {"PYTHONPATH": str(ROOT)}
    sync = subprocess.run(
        [str(Path(sys.executable).parent / "python"), *submit_cmd[1:], "--sync-only"],
        env=fed.env("home-submit") | env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert sync.returncode == 0, sync.stderr + fed.logs()
    assert "2 registered now" in sync.stderr, sync.stderr

    for i, key in enumerate(keys):
        fed.start(
            f"home{i}",
            "flower-supernode",
            "--superlink",
            f"127.0.0.1:{fed.port}",
            "--root-certificates",
            str(home / "ca.pem"),
            "--auth-supernode-private-key",
            str(key),
            "--port",
            str(fed.node_ports[i]),
            "--node-config",
            f"partition-id={i} num-partitions=2",
        )
    fed.wait_nodes(2, timeout=60)

    config = {**RUN_CONFIG, "min-nodes": 2}  # n-embd=16: a smaller model over the hub's
    fed.start(
        "submit",
        *submit_cmd,
        "--run-config",
        run_config_arg(config),
        env=env,
    )
    try:
        rc = fed.procs["submit"].wait(timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the run did not finish{fed.logs()}")
    why = fed.logs()
    assert rc == 0, why
    assert "configure_train: round 2, 2 nodes" in fed.log("submit"), why  # streamed ServerApp log
    last = load_latest(tmp_path / "checkpoints")  # written where the SuperExec runs the ServerApp
    assert last is not None, why
    assert last.server_round == 2, why
    assert [h["accepted"] for h in last.meta["history"]] == [2, 2], why
    vocab = len(Vocabulary.default().tokens)
    wte = last.arrays["transformer.wte.weight"]
    assert wte.shape == (vocab, 16), why  # the hub's vocabulary, from submit.py
    assert (tmp_path / "state" / "superlink.db").is_file(), why
