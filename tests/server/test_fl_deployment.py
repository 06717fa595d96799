"""GIoT's Flower app on Flower's real deployment engine: a SuperLink, two SuperNodes, ``flwr run``.

Unlike ``test_fl_simulation`` (Ray, in process), this starts the processes a real federation runs:
``flower-superlink --insecure`` and two ``flower-supernode --insecure``, each SuperNode with its own
``--node-config`` partition, on free localhost ports, all state under ``tmp_path``. A connection
written by ``fl_server.flwr_config`` (what ``scripts/federation remote`` does) into a temporary
``FLWR_HOME`` points ``flwr run --stream`` at the SuperLink, which ships the app bundle (FAB) to the
SuperExecs that start ``flwr-serverapp`` and ``flwr-clientapp`` processes. So the FAB build, the
run config and the Message API are all exercised for real (the engine is an installed library).

The app is staged from the repository's own files (those ``fab-include`` names and its
``pyproject.toml`` as it is, ``giot_server.app.stage_app``, as ``giot-server`` does) rather than
built from the root: Flower's FAB builder walks the whole
folder, ``.venv*`` included, before filtering (12 s here). The SuperLink refuses run-config keys
that ``[tool.flwr.app.config]`` does not declare: that table is the one definition of the keys and
their defaults, and ``fl_server.run_config.RunConfig`` must read it whole (checked below, without
processes).
"""

from __future__ import annotations

import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fl_server import flwr_config
from fl_server.checkpoint import load_checkpoint, load_latest
from fl_server.client_app import model_config
from fl_server.run_config import RunConfig, defaults
from giot_engine.model import GIoTModel
from giot_server.procs import stop_by_env
from tests.server.deployment import (
    BIN,
    ROOT,
    RUN_CONFIG,
    Federation,
    stage_app,
    toml_value,
)


def _app_table() -> dict[str, object]:
    app: dict[str, object] = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["tool"][
        "flwr"
    ]["app"]
    return app


def test_pyproject_declares_every_run_config_key_with_its_default() -> None:
    """A SuperLink refuses undeclared keys: every key the apps read comes from pyproject's table."""
    declared = _app_table()["config"]
    assert isinstance(declared, dict)
    assert defaults() == declared
    as_read = RunConfig.load().as_run_config()
    assert as_read == declared
    assert all(type(as_read[k]) is type(v) for k, v in declared.items())


def test_run_config_converts_overrides_and_refuses_unknown_keys() -> None:
    """As Flower passes them: an integer where a float is declared reads as that float."""
    cfg = RunConfig.load({"round-timeout": 60, "strategy": "fedavg"}, {"lr": 1})
    assert (cfg.round_timeout, cfg.strategy, cfg.lr) == (60.0, "fedavg", 1.0)
    assert type(cfg.round_timeout) is float
    assert cfg.with_overrides({"seed": 3}) == RunConfig.load({**cfg.as_run_config(), "seed": 3})
    with pytest.raises(KeyError, match="round-timout"):
        RunConfig.load({"round-timout": 60})


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Federation]:
    fed = Federation(tmp_path)
    try:
        db = str(tmp_path / "superlink.db")
        fed.start(
            "superlink", "flower-superlink", "--insecure", "--port", str(fed.port), "--database", db
        )
        for i, port in enumerate(fed.node_ports):
            fed.start(
                f"supernode{i}",
                "flower-supernode",
                "--insecure",
                "--superlink",
                fed.address,
                "--port",
                str(port),
                "--node-config",
                f"partition-id={i} num-partitions={len(fed.node_ports)}",
            )
        fed.wait_nodes(len(fed.node_ports), timeout=60)
        yield fed
    finally:
        fed.stop()


def test_flwr_run_on_real_superlink_and_supernodes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, federation: Federation
) -> None:
    cli_home = tmp_path / "home-cli"
    monkeypatch.setenv("FLWR_HOME", str(cli_home))  # never the user's ~/.flwr
    assert (
        flwr_config.main(["remote", federation.address, "--insecure", "--name", "giot-test"]) == 0
    )
    assert federation.address in (cli_home / "config.toml").read_text()
    app = stage_app(tmp_path / "giot")
    ckpt_dir = tmp_path / "checkpoints"
    run_config = {**RUN_CONFIG, "checkpoint-dir": str(ckpt_dir)}
    cmd = [str(BIN / "flwr"), "run", str(app), "giot-test", "--stream"]
    cmd += ["--run-config", " ".join(f"{k}={toml_value(v)}" for k, v in run_config.items())]
    try:
        run = subprocess.run(
            cmd,
            cwd=tmp_path,
            env=federation.env("home-cli"),
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"flwr run did not finish in {err.timeout}s: {err.output!r}{federation.logs()}")
    out = run.stdout + run.stderr
    why = f"\n===== flwr run (rc {run.returncode}) =====\n{out[-6000:]}{federation.logs()}"
    assert run.returncode == 0, why
    assert "configure_train: round 2, 2 nodes" in out, why  # the ServerApp's log, streamed

    last = load_latest(ckpt_dir)
    assert last is not None, why
    assert last.server_round == 2, why
    history = last.meta["history"]
    assert [h["round"] for h in history] == [1, 2], why
    for h in history:
        assert h["asked"] == h["accepted"] == 2, (h, why)
        assert h["rejected"] == h["missed"] == 0, (h, why)
        assert h["uplink-bytes"] > 0, (h, why)
    for i in range(len(federation.node_ports)):  # each real SuperNode trained in both rounds
        assert federation.log(f"supernode{i}").count("Sending: train message") == 2, why

    init = GIoTModel.init(model_config(RunConfig.load(run_config)), seed=0).params
    first = load_checkpoint(ckpt_dir / "round-000001.npz").arrays
    assert sorted(last.arrays) == sorted(first) == sorted(init)
    assert any(not np.array_equal(first[k], init[k]) for k in init), "round 1 left the model"
    assert any(not np.array_equal(last.arrays[k], first[k]) for k in init), "round 2 left it"


def test_flwr_run_on_the_local_simulation_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's ``scripts/federation local`` + ``flwr run`` path: Flower's own local SuperLink
    with Ray-backed virtual SuperNodes, as the connection ``flwr_config`` writes it.
    """
    home = tmp_path / "home"
    monkeypatch.setenv("FLWR_HOME", str(home))
    assert flwr_config.main(["local", "--supernodes", "2", "--name", "giot-sim"]) == 0
    app = stage_app(tmp_path / "giot")
    ckpt_dir = tmp_path / "checkpoints"
    run_config = {**RUN_CONFIG, "num-server-rounds": 1, "checkpoint-dir": str(ckpt_dir)}
    cmd = [str(BIN / "flwr"), "run", str(app), "giot-sim", "--stream"]
    cmd += ["--run-config", " ".join(f"{k}={toml_value(v)}" for k, v in run_config.items())]
    env = Federation(tmp_path).env("home")  # the venv's bin on PATH: flwr starts flower-superlink
    try:
        run = subprocess.run(
            cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240, check=False
        )
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"flwr run did not finish in {err.timeout}s: {err.output!r}")
    finally:
        stop_by_env("FLWR_HOME", str(home))
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-6000:]
    last = load_latest(ckpt_dir)
    assert last is not None, out[-6000:]
    assert last.server_round == 1
    assert last.meta["history"][0]["accepted"] == 2
