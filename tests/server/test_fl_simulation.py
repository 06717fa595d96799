"""One real Flower simulation (Ray backend) of the GIoT ServerApp and ClientApp.

``flwr.simulation.run_simulation`` runs the apps exactly as ``flwr run`` does in a local
simulation federation (virtual SuperNodes in Ray actors, the ServerApp on Flower's in-memory
Grid), but in process: nothing stays running afterwards, which ``flwr run`` cannot promise (it
leaves a SuperLink and SuperExec behind). A few rounds of the tiny model take seconds; Ray's
start-up dominates.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
from flwr.serverapp.strategy import Result
from flwr.simulation import run_simulation

from fl_server.client_app import make_client_app
from fl_server.server_app import make_server_app


@pytest.mark.parametrize("strategy", ["gsfs"])
def test_real_flower_simulation(strategy: str) -> None:
    overrides: dict[str, Any] = {
        "strategy": strategy,
        "num-server-rounds": 2,
        "local-steps": 2,
        "gsfs-max-steps": 2,
        "windows-per-node": 16,
        "batch-size": 8,
        "n-embd": 16,
        "fraction-evaluate": 1.0,
        "round-timeout": 60.0,
    }
    results: list[Result] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_simulation(
            server_app=make_server_app(overrides, results),
            client_app=make_client_app(overrides),
            num_supernodes=3,
            backend_config={
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": {"num_cpus": 2},
            },
        )
    assert len(results) == 1, "the ServerApp did not finish"
    train = results[0].train_metrics_clientapp
    assert sorted(train) == [1, 2]
    assert all(m["accepted"] == 3 for m in train.values())
    assert 0 < train[2]["uplink-bytes"] < train[2]["downlink-bytes"] + 1
    assert sorted(results[0].evaluate_metrics_clientapp) == [1, 2]
