"""The node's packaging stays in step with ``giot-node``: the HA app's options, its ``run.sh`` and
the ``run`` command line, the versions and pins the images install.

``run.sh`` is executed for real (bash), with ``giot-node`` replaced by a stub that records its
arguments; each recorded command line is parsed by ``giot_node.cli``'s own parser. Every option
the app declares must change what ``giot-node run`` is told, so an option that ``run.sh`` drops
or misspells fails here, as does a flag ``giot-node`` no longer has.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from giot_node import cli
from tests.server.deployment import ROOT

APP = ROOT / "deploy" / "ha-app" / "giot-node"
OPTIONS: dict[str, Any] = {
    "superlink": "giot.example:9092",
    "root_certificates": "/ssl/giot/ca.pem",
    "insecure": False,
    "trust_apps": ["giot/giot", "lab/probe"],
    "listen_port": 9100,
    "deadline_s": 120,
    "advertise": False,
}


def _config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((APP / "config.yaml").read_text("utf-8"))
    return config


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))


def _run_sh(tmp_path: Path, options: dict[str, Any]) -> list[list[str]]:
    """Run ``run.sh`` against ``options``; the ``giot-node`` command lines it ran."""
    calls = tmp_path / "calls.jsonl"
    calls.unlink(missing_ok=True)
    stub = tmp_path / "giot-node"
    stub.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        "with open(os.environ['CALLS'], 'a') as f:\n"
        "    f.write(json.dumps(sys.argv[1:]) + '\\n')\n",
        "utf-8",
    )
    stub.chmod(0o755)
    (tmp_path / "options.json").write_text(json.dumps(options), "utf-8")
    env = os.environ | {
        "GIOT_OPTIONS": str(tmp_path / "options.json"),
        "GIOT_STATE_DIR": str(tmp_path / "data"),
        "GIOT_NODE": str(stub),
        "GIOT_PYTHON": sys.executable,
        "CALLS": str(calls),
    }
    done = subprocess.run(
        ["bash", str(APP / "run.sh")], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in calls.read_text("utf-8").splitlines()]


def _parsed_run(tmp_path: Path, options: dict[str, Any]) -> argparse.Namespace:
    init, run = _run_sh(tmp_path, options)
    parser = cli.build_parser()
    assert parser.parse_args(init).cmd == "init"
    assert init == ["init", "--state-dir", str(tmp_path / "data")]
    args = parser.parse_args(run)
    assert args.cmd == "run"
    assert args.state_dir == tmp_path / "data"
    return args


def test_config_declares_what_home_assistant_needs() -> None:
    config = _config()
    for key in ("name", "version", "slug", "description", "arch", "startup", "options", "schema"):
        assert key in config, key
    assert config["version"] == _pyproject()["project"]["version"]
    assert config["ports"] == {"9093/tcp": 9093}
    assert set(config["options"]) == set(config["schema"]) == set(OPTIONS)
    assert config["options"]["listen_port"] == 9093  # giot-node's own default port
    assert config["options"]["trust_apps"] == [cli.DEFAULT_TRUST]
    translations = yaml.safe_load((APP / "translations" / "en.yaml").read_text("utf-8"))
    assert set(translations["configuration"]) == set(config["options"])
    assert set(translations["network"]) == set(config["ports"])


def test_run_sh_maps_every_option_to_a_giot_node_run_flag(tmp_path: Path) -> None:
    args = _parsed_run(tmp_path, OPTIONS)
    assert args.superlink == "giot.example:9092"
    assert args.root_certificates == Path("/ssl/giot/ca.pem")
    assert args.insecure is False
    assert args.trust_app == ["giot/giot", "lab/probe"]
    assert args.listen == ("0.0.0.0", 9100)
    assert args.deadline_s == 120.0
    assert args.no_advertise is True
    insecure = _parsed_run(tmp_path, OPTIONS | {"insecure": True})
    assert (insecure.insecure, insecure.root_certificates) == (True, None)
    # the app's defaults as Home Assistant writes them
    defaults = _parsed_run(tmp_path, _config()["options"] | {"superlink": "s.example:9092"})
    assert defaults.listen == cli.host_port(cli.DEFAULT_LISTEN)
    assert defaults.no_advertise is False


def _other(value: Any) -> Any:
    """A different valid value of the same option type."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, list):
        return [*value, "more/app"]
    return f"other{value}"


@pytest.mark.parametrize("key", sorted(OPTIONS))
def test_every_option_reaches_giot_node(tmp_path: Path, key: str) -> None:
    """Changing any one option changes what ``giot-node run`` is told (none is dropped)."""
    base = vars(_parsed_run(tmp_path, OPTIONS))
    changed = vars(_parsed_run(tmp_path, OPTIONS | {key: _other(OPTIONS[key])}))
    assert changed != base, key


def test_images_install_the_node_with_its_pins() -> None:
    project = _pyproject()
    node_extra = project["project"]["optional-dependencies"]["node"]
    flwr_pin = next(d for d in project["dependency-groups"]["server"] if d.startswith("flwr"))
    assert f"flwr=={flwr_pin.split('==')[1]}" in node_extra  # the node runs the server's Flower
    assert project["project"]["scripts"]["giot-node"] == "giot_node.cli:main"
    for dockerfile in (APP / "Dockerfile", ROOT / "deploy" / "node" / "Dockerfile"):
        text = dockerfile.read_text("utf-8")
        assert "FROM python:3.11-slim-bookworm" in text
        assert "[node]" in text
    assert f"GIOT_REF=v{project['project']['version']}" in (APP / "Dockerfile").read_text("utf-8")
    assert 'ENTRYPOINT ["giot-node"]' in (ROOT / "deploy/node/Dockerfile").read_text("utf-8")
