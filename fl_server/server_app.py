"""Flower ServerApp: GSFS, or one of Flower's baselines, on the GIoT model.

``strategy`` in the run config picks ``gsfs`` (this project's strategy) or Flower's own ``fedavg``,
``fedadam``, ``fedprox`` (wrapped only to validate replies), so that every comparison runs the same
model, clients and data. ``make_server_app(overrides)`` exists for tests and benchmarks, which
cannot pass a run config through ``flwr.simulation.run_simulation``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Result, Strategy

from fl_server.client_app import model_config, settings
from fl_server.strategy.baselines import make_baseline
from fl_server.strategy.gsfs import GSFS, GSFSConfig
from fl_server.strategy.sensing import PlannerConfig
from fl_server.validation import Limits
from giot_engine.model import GIoTModel

LOG = logging.getLogger(f"flwr.{__name__}")  # shown where Flower shows its own log


def build_strategy(cfg: Mapping[str, Any]) -> Strategy:
    """Build the strategy the run config names."""
    limits = Limits(max_norm=float(cfg["max-update-norm"]))
    name = str(cfg["strategy"])
    min_nodes = int(cfg["min-nodes"])
    if name == "gsfs":
        planner = PlannerConfig(
            target_round_s=float(cfg["gsfs-target-round-s"]),
            default_budget=int(cfg["gsfs-default-budget"]),
            min_budget=int(cfg["gsfs-min-budget"]),
            max_budget=int(cfg["gsfs-max-budget"]),
            default_steps=int(cfg["local-steps"]),
            min_steps=int(cfg["gsfs-min-steps"]),
            max_steps=int(cfg["gsfs-max-steps"]),
            max_deadline_s=float(cfg["round-timeout"]),
            deadline_quantile=float(cfg["gsfs-deadline-quantile"]),
            initial_deadline_s=float(cfg["gsfs-initial-deadline-s"]) or None,
        )
        gcfg = GSFSConfig(
            fraction_train=float(cfg["fraction-train"]),
            min_train_nodes=min_nodes,
            fraction_evaluate=float(cfg["fraction-evaluate"]),
            server_opt=str(cfg["server-opt"]),
            server_lr=float(cfg["gsfs-server-lr"]),
            beta1=float(cfg["gsfs-server-momentum"]),
            mean_over=str(cfg["gsfs-mean-over"]),
            selection=str(cfg["gsfs-selection"]),
            downlink_threshold=float(cfg["downlink-threshold"]),
            limits=limits,
            robust=str(cfg["robust"]),
            clip_norm=float(cfg["clip-norm"]),
            dp_noise_multiplier=float(cfg["dp-noise"]),
            dp_clip=float(cfg["dp-clip"]),
            seed=int(cfg["seed"]),
            planner=planner,
            shared_index=bool(cfg["gsfs-shared-index"]),
            shared_clip=float(cfg["gsfs-shared-clip"]),
        )
        return GSFS(gcfg, checkpoint_dir=str(cfg["checkpoint-dir"]) or None)
    kwargs: dict[str, Any] = {
        "fraction_train": float(cfg["fraction-train"]),
        "fraction_evaluate": float(cfg["fraction-evaluate"]),
        "min_train_nodes": min_nodes,
        "min_evaluate_nodes": min_nodes if float(cfg["fraction-evaluate"]) > 0 else 0,
        "min_available_nodes": min_nodes,
    }
    if name == "fedprox":
        kwargs["proximal_mu"] = float(cfg["proximal-mu"])
    if name == "fedadam":
        kwargs["eta"] = float(cfg["server-lr"])
    strategy = make_baseline(name, limits, **kwargs)
    assert isinstance(strategy, Strategy)
    return strategy


def initial_arrays(cfg: Mapping[str, Any]) -> ArrayRecord:
    """Initialise the GIoT model (seeded) as Flower arrays."""
    model = GIoTModel.init(model_config(cfg), seed=int(cfg["seed"]))
    return ArrayRecord({k: Array(v) for k, v in model.params.items()})


def run_server(grid: Grid, cfg: Mapping[str, Any]) -> Result:
    """Run the configured federation on ``grid`` and return Flower's result."""
    strategy = build_strategy(cfg)
    train_config = ConfigRecord({"proximal-mu": float(cfg["proximal-mu"])})
    return strategy.start(
        grid=grid,
        initial_arrays=initial_arrays(cfg),
        num_rounds=int(cfg["num-server-rounds"]),
        timeout=float(cfg["round-timeout"]),
        train_config=train_config,
    )


def make_server_app(
    overrides: Mapping[str, Any] | None = None, results: list[Result] | None = None
) -> ServerApp:
    """Build a ServerApp reading the run config (plus ``overrides``), collecting results."""
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        result = run_server(grid, settings(context.run_config, overrides))
        if results is not None:
            results.append(result)

    return server


app = make_server_app()
