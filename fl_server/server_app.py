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

from fl_server.client_app import model_config
from fl_server.run_config import RunConfig
from fl_server.strategy.baselines import make_baseline
from fl_server.strategy.gsfs import GSFS, GSFSConfig
from fl_server.strategy.sensing import PlannerConfig
from fl_server.validation import Limits
from giot_engine.model import GIoTModel

LOG = logging.getLogger(f"flwr.{__name__}")  # shown where Flower shows its own log


def build_strategy(cfg: RunConfig) -> Strategy:
    """Build the strategy the run config names."""
    limits = Limits(max_norm=cfg.max_update_norm)
    name = cfg.strategy
    min_nodes = cfg.min_nodes
    if name == "gsfs":
        planner = PlannerConfig(
            target_round_s=cfg.gsfs_target_round_s,
            default_budget=cfg.gsfs_default_budget,
            min_budget=cfg.gsfs_min_budget,
            max_budget=cfg.gsfs_max_budget,
            default_steps=cfg.local_steps,
            min_steps=cfg.gsfs_min_steps,
            max_steps=cfg.gsfs_max_steps,
            max_deadline_s=cfg.round_timeout,
            deadline_quantile=cfg.gsfs_deadline_quantile,
            initial_deadline_s=cfg.gsfs_initial_deadline_s or None,
        )
        gcfg = GSFSConfig(
            fraction_train=cfg.fraction_train,
            min_train_nodes=min_nodes,
            fraction_evaluate=cfg.fraction_evaluate,
            server_opt=cfg.server_opt,
            server_lr=cfg.gsfs_server_lr,
            beta1=cfg.gsfs_server_momentum,
            mean_over=cfg.gsfs_mean_over,
            selection=cfg.gsfs_selection,
            downlink_threshold=cfg.downlink_threshold,
            limits=limits,
            robust=cfg.robust,
            clip_norm=cfg.clip_norm,
            dp_noise_multiplier=cfg.dp_noise,
            dp_clip=cfg.dp_clip,
            seed=cfg.seed,
            planner=planner,
            shared_index=cfg.gsfs_shared_index,
            shared_clip=cfg.gsfs_shared_clip,
        )
        return GSFS(gcfg, checkpoint_dir=cfg.checkpoint_dir or None)
    kwargs: dict[str, Any] = {
        "fraction_train": cfg.fraction_train,
        "fraction_evaluate": cfg.fraction_evaluate,
        "min_train_nodes": min_nodes,
        "min_evaluate_nodes": min_nodes if cfg.fraction_evaluate > 0 else 0,
        "min_available_nodes": min_nodes,
    }
    if name == "fedprox":
        kwargs["proximal_mu"] = cfg.proximal_mu
    if name == "fedadam":
        kwargs["eta"] = cfg.server_lr
    strategy = make_baseline(name, limits, cfg.checkpoint_dir or None, **kwargs)
    assert isinstance(strategy, Strategy)
    return strategy


def initial_arrays(cfg: RunConfig) -> ArrayRecord:
    """Initialise the GIoT model (seeded) as Flower arrays."""
    model = GIoTModel.init(model_config(cfg), seed=cfg.seed)
    return ArrayRecord({k: Array(v) for k, v in model.params.items()})


def run_server(grid: Grid, cfg: RunConfig) -> Result:
    """Run the configured federation on ``grid`` and return Flower's result."""
    strategy = build_strategy(cfg)
    train_config = ConfigRecord({"proximal-mu": cfg.proximal_mu})
    return strategy.start(
        grid=grid,
        initial_arrays=initial_arrays(cfg),
        num_rounds=cfg.num_server_rounds,
        timeout=cfg.round_timeout,
        train_config=train_config,
    )


def make_server_app(
    overrides: RunConfig | Mapping[str, object] | None = None, results: list[Result] | None = None
) -> ServerApp:
    """Build a ServerApp reading the run config (plus ``overrides``), collecting results."""
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        result = run_server(grid, RunConfig.load(context.run_config, overrides))
        if results is not None:
            results.append(result)

    return server


app = make_server_app()
