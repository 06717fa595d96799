"""Flower ServerApp: GSFS, or one of Flower's baselines, on the GIoT model.

``strategy`` in the run config picks ``gsfs`` (this project's strategy) or Flower's own ``fedavg``,
``fedadam``, ``fedprox`` (wrapped only to validate replies), so that every comparison runs the same
model, clients and data. ``make_server_app(overrides)`` exists for tests and benchmarks, which
cannot pass a run config through ``flwr.simulation.run_simulation``.

Round 0 is the base model the run config names (``base-model``; its manifest checked, and its
signature when the run has a ``signing-key``), else the seeded initialisation. With a key, every
global model sent out for evaluation is signed (``fl_server.signing.Publisher``); with a base
model, GSFS also publishes round 0 itself, so a paired hub's first global model is the base.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Result, Strategy

from fl_server.client_app import model_config
from fl_server.run_config import RunConfig
from fl_server.signing import Publisher, load_private_key, verify_artifact
from fl_server.strategy.baselines import ValidatedMixin, make_baseline
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


def base_arrays(cfg: RunConfig, key: Ed25519PrivateKey | None) -> tuple[ArrayRecord, str]:
    """Round 0 and its name: the checked base model, or the seeded initialisation.

    A base model that fails its checks (a changed file, no valid signature by ``key``) or is
    not of the run's model size stops the run (``ArtifactError``, ``ValueError``): a federation
    must not start from something else than was asked.
    """
    if not cfg.base_model:
        return initial_arrays(cfg), f"init-seed{cfg.seed}"
    directory = Path(cfg.base_model)
    manifest = verify_artifact(directory, key.public_key() if key is not None else None)
    model = GIoTModel.from_pretrained(directory)
    if model.config != model_config(cfg):
        raise ValueError(f"base model {directory} is {model.config}, the run {model_config(cfg)}")
    arrays = {k: Array(np.asarray(v, np.float32)) for k, v in model.params.items()}
    return ArrayRecord(arrays), str(manifest["version"])


def run_server(grid: Grid, cfg: RunConfig, run_id: int = 0) -> Result:
    """Run the configured federation on ``grid`` and return Flower's result."""
    strategy = build_strategy(cfg)
    key = load_private_key(cfg.signing_key) if cfg.signing_key else None
    arrays, base = base_arrays(cfg, key)
    publisher = Publisher(base, run_id, key, publish_base=bool(cfg.base_model))
    if isinstance(strategy, GSFS | ValidatedMixin):
        strategy.publisher = publisher
    LOG.info("round 0: %s; global models %s", base, "signed" if key is not None else "not signed")
    train_config = ConfigRecord({"proximal-mu": cfg.proximal_mu})
    return strategy.start(
        grid=grid,
        initial_arrays=arrays,
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
        result = run_server(grid, RunConfig.load(context.run_config, overrides), context.run_id)
        if results is not None:
            results.append(result)

    return server


app = make_server_app()
