"""Flower ClientApp: train the GIoT model on the node's token windows, answer with an update.

GSFS rounds (``config["strategy"] == "gsfs"``): merge the partial downlink into the copy of the
global model this node holds (kept in ``context.state``), train ``local-steps`` with the engine's
``train_windows``, encode ``w_local - w_held`` with ``giot_engine.gsfs_codec`` into
``gsfs-budget`` bytes (sent packed: five arrays instead of ~70), keep the residual for the next
round.
Baseline rounds (Flower's FedAvg / FedAdam / FedProx): train from the full global model and
answer with the full local weights, as those strategies expect (FedProx adds its proximal term
``mu/2 ||w - w_global||^2`` to the local loss).

The round itself is ``giot_engine.federated.gsfs_client_round``, which the home hubs run inside
Home Assistant too; here the node is a Flower SuperNode (or a virtual one in simulation), its data
come from ``fl_server.data.load_partition`` and its state lives in the Flower context.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fl_server.data import Windows, load_partition
from fl_server.run_config import RunConfig
from giot_engine import federated
from giot_engine.federated import Trained, gsfs_client_round
from giot_engine.model import GIoTConfig, GIoTModel
from giot_engine.tokenizer import PAD_ID
from giot_engine.train import AdamW, train_windows

F32 = npt.NDArray[np.float32]


def model_config(cfg: RunConfig) -> GIoTConfig:
    """Return the GIoT architecture a run config names."""
    return GIoTConfig(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.n_positions,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
    )


class _ProxModel(GIoTModel):
    """FedProx: the local loss gains ``mu/2 ||w - w0||^2`` (Li et al., 2020)."""

    def __init__(self, config: GIoTConfig, params: Mapping[str, np.ndarray], mu: float) -> None:
        super().__init__(config, params)
        self.mu = np.float32(mu)
        self.anchor = {k: v.copy() for k, v in self.params.items()}

    def loss_and_grads(
        self, ids: npt.NDArray[np.integer[Any]], loss_mask: npt.NDArray[np.bool_] | None = None
    ) -> tuple[float, dict[str, F32]]:
        loss, grads = super().loss_and_grads(ids, loss_mask)
        prox = 0.0
        for k, w in self.params.items():
            diff = w - self.anchor[k]
            grads[k] = grads[k] + self.mu * diff
            prox += float(np.sum(diff.astype(np.float64) ** 2))
        return loss + 0.5 * float(self.mu) * prox, grads


def mean_nll(model: GIoTModel, windows: Windows) -> float:
    """Mean next-token NLL of the windows (forward only)."""
    return float(np.mean(model.token_nll(windows)))


def local_train(
    params: Mapping[str, np.ndarray],
    cfg: RunConfig,
    windows: Windows,
    *,
    steps: int,
    seed: int,
    proximal_mu: float = 0.0,
) -> tuple[dict[str, F32], float]:
    """Train a copy of ``params`` for ``steps`` on ``windows``; new params and mean step loss."""
    mcfg = model_config(cfg)
    own = {
        k: np.array(v, dtype=np.float32, copy=True) for k, v in params.items()
    }  # trained in place
    model: GIoTModel = (
        _ProxModel(mcfg, own, proximal_mu) if proximal_mu > 0 else GIoTModel(mcfg, own)
    )
    # Real-data windows are PAD-filled: padding is not a behaviour to learn.
    mask = windows[:, 1:] != PAD_ID if cfg.data_source != "synthetic" else None
    report = train_windows(
        model,
        windows,
        steps,
        cfg.batch_size,
        seed,  # per round and node (``_round_seed``): a fresh optimiser must not replay batches
        AdamW(lr=cfg.lr),
        mask,
    )
    return dict(model.params), float(report.mean_loss)


def examples_processed(cfg: RunConfig, windows: Windows, steps: int) -> int:
    """Weigh a reply by the windows trained on this round (steps x batch), 0 if none counts.

    Every node runs a set number of steps, so this, not the size of the node's store, is how
    much its update saw (FedAvg's n_k for E epochs is the same quantity). Weighting by store
    size would let the few homes with the longest logs set the global model alone; a node whose
    windows hold no scored token has nothing to teach and answers 0 (rejected, logged).
    """
    if cfg.data_source != "synthetic" and not np.any(windows[:, 1:] != PAD_ID):
        return 0
    return steps * cfg.batch_size


def train_flops(cfg: RunConfig, params: Mapping[str, np.ndarray], steps: int, width: int) -> float:
    """Work of ``steps`` training steps (``giot_engine.federated.train_flops``)."""
    n = sum(int(v.size) for v in params.values())
    return federated.train_flops(n, steps, cfg.batch_size, width)


def _partition(context: Context) -> tuple[int, int]:
    pid = context.node_config.get("partition-id", 0)
    num = context.node_config.get("num-partitions", 1)
    return int(pid) if isinstance(pid, (int, float)) else 0, int(num) if isinstance(
        num, (int, float)
    ) else 1


def _split(windows: Windows) -> tuple[Windows, Windows]:
    """Last quarter held out for evaluation (at least one window each)."""
    cut = max(1, min(len(windows) - 1, (3 * len(windows)) // 4))
    return windows[:cut], windows[cut:]


def _arrays_raw(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in record.items()}


def _arrays(record: ArrayRecord) -> dict[str, F32]:
    return {k: np.asarray(a.numpy(), np.float32) for k, a in record.items()}


def _reply(
    msg: Message, arrays: Mapping[str, np.ndarray], metrics: Mapping[str, int | float]
) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()}),
            "metrics": MetricRecord(dict(metrics)),
        }
    )
    return Message(content, reply_to=msg)


def _round_seed(cfg: RunConfig, server_round: int, pid: int) -> int:
    return int(np.random.default_rng([cfg.seed, server_round, pid]).integers(2**31))


def _num(record: Mapping[str, Any], key: str, default: float) -> float:
    value = record.get(key, default)
    return (
        float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default
    )


def train_gsfs(msg: Message, context: Context, cfg: RunConfig, windows: Windows) -> Message:
    """Run one GSFS round on this node (``giot_engine.federated.gsfs_client_round``)."""
    conf = msg.content.config_records["config"]
    state = context.state
    held = _arrays(state.array_records["gsfs.global"]) if "gsfs.global" in state else {}
    meta = state.config_records["gsfs.meta"] if "gsfs.meta" in state else ConfigRecord()
    residual = _arrays(state.array_records["gsfs.residual"]) if "gsfs.residual" in state else {}
    records = msg.content.array_records
    pid, _ = _partition(context)

    def train(params: Mapping[str, np.ndarray], steps: int, seed: int) -> Trained:
        local, loss = local_train(params, cfg, windows, steps=steps, seed=seed)
        flops = train_flops(cfg, params, steps, windows.shape[1])
        return Trained(local, loss, steps, examples_processed(cfg, windows, steps), flops)

    out = gsfs_client_round(
        held,
        int(_num(meta, "state-id", -1)),
        _arrays(records["arrays"]),
        conf,
        train,
        residual,
        seed=_round_seed(cfg, int(_num(conf, "server-round", 0)), pid),
        default_steps=cfg.local_steps,
        default_budget=cfg.gsfs_default_budget,
        shared=_arrays_raw(records["shared"]) if "shared" in records else None,
    )
    if out.downlink_ok:
        state["gsfs.global"] = ArrayRecord({k: Array(v) for k, v in out.held.items()})
        state["gsfs.meta"] = ConfigRecord({"state-id": out.held_id})
        state["gsfs.residual"] = ArrayRecord({k: Array(v) for k, v in out.residual.items()})
    return _reply(msg, out.payload, out.metrics)


def train_dense(msg: Message, context: Context, cfg: RunConfig, windows: Windows) -> Message:
    """Run one baseline round: full weights in, full weights out."""
    conf = msg.content.config_records["config"]
    params = _arrays(msg.content.array_records["arrays"])
    pid, _ = _partition(context)
    server_round = int(_num(conf, "server-round", 0))
    mu = _num(conf, "proximal-mu", 0.0) if conf.get("strategy") == "fedprox" else 0.0
    t0 = time.process_time()
    local, loss = local_train(
        params,
        cfg,
        windows,
        steps=cfg.local_steps,
        seed=_round_seed(cfg, server_round, pid),
        proximal_mu=mu,
    )
    metrics = {
        "num-examples": examples_processed(cfg, windows, cfg.local_steps),
        "train-loss": loss,
        "compute-s": time.process_time() - t0,
        "compute-flops": train_flops(cfg, params, cfg.local_steps, windows.shape[1]),
    }
    return _reply(msg, local, metrics)


def make_client_app(overrides: RunConfig | Mapping[str, object] | None = None) -> ClientApp:
    """Build a ClientApp reading the run config (plus ``overrides``: tests, benchmarks)."""
    client = ClientApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        cfg = RunConfig.load(context.run_config, overrides)
        pid, num = _partition(context)
        windows, _ = _split(load_partition(pid, num, cfg))
        if msg.content.config_records["config"].get("strategy", "fedavg") == "gsfs":
            return train_gsfs(msg, context, cfg, windows)
        return train_dense(msg, context, cfg, windows)

    @client.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        cfg = RunConfig.load(context.run_config, overrides)
        pid, num = _partition(context)
        _, held_out = _split(load_partition(pid, num, cfg))
        model = GIoTModel(model_config(cfg), _arrays(msg.content.array_records["arrays"]))
        nll = mean_nll(model, held_out)
        content = RecordDict(
            {"metrics": MetricRecord({"num-examples": len(held_out), "eval-loss": nll})}
        )
        return Message(content, reply_to=msg)

    return client


app = make_client_app()
