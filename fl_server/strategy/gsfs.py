"""GSFS server: sense each node, plan its round, aggregate sparse updates, take a server step.

One round (``start`` drives it; ``configure_train`` / ``aggregate_train`` are usable alone):

- select: ``fraction_train`` of the nodes, least recently asked first (seeded ties), so every
  home contributes every ``1/fraction_train`` rounds and its error-feedback residual never waits
  long (a random sample, ``selection="random"``, lets some residuals age for several rounds and
  then arrive at once: measured noisier); nodes predicted to miss the round's deadline are left
  out (FedCS, Nishio & Yonetani 2019), except every ``fedcs_probe_every`` rounds, so that a node
  that became faster is seen;
- plan: per node, a byte budget and local steps from what was sensed about it (``sensing``), and a
  round deadline that the fast majority meets; it is the ``timeout`` the round waits for replies;
- downlink: per node, only the tensors that moved since the copy the node holds (``downlink``);
- uplink: each node answers with a GSFS payload (``giot_engine.gsfs_codec``); every reply is
  validated (``fl_server.validation``) before it counts, rejected ones are logged with node id
  and reason;
- aggregate: per-coordinate weighted mean over the nodes that sent each coordinate (or trimmed
  mean, or DP mean), then the server optimiser (``ServerAdam``: damped momentum by default,
  FedAdam, FedAvgM or plain FedAvg steps). A sent value carries the node's error-feedback
  residual, i.e. what it held back in earlier rounds, so the per-sender mean already delivers
  more than one round's update: a server step above 1 counts that backlog twice and overshoots
  (measured: eta 2 oscillated between rounds); eta 1 with a short bias-corrected momentum
  averages the halves of the population that rotation asks in turn;
- sense: round-trip time per reply as the server saw it, bytes moved, misses, reported compute;
- checkpoint: everything needed to continue identically after a restart (``fl_server.checkpoint``);
  before it, one line of what the round did goes to ``rounds.jsonl`` beside the checkpoints
  (``fl_server.history``, read by ``giot-server``'s status page).

Reply contract (ClientApp side in ``fl_server.client_app``): one ArrayRecord ``"arrays"`` with the
payload (packed by ``gsfs_codec.pack`` into five arrays, or per tensor as ``gsfs_codec.encode``
returns it: both are accepted and validated alike) and one MetricRecord ``"metrics"`` with
``num-examples``, ``train-loss``, ``compute-s``, ``local-steps``, ``state-id`` (the downlink
copy the node now holds) and ``downlink-ok``.
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, cast, runtime_checkable

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from fl_server.checkpoint import Checkpoint, load_latest, prefixed, save_checkpoint, unprefixed
from fl_server.history import RoundRecorder, plain_metrics
from fl_server.signing import Publisher
from fl_server.strategy.aggregate import F32, ServerAdam, SparseMean, aggregate_sparse
from fl_server.strategy.downlink import DownlinkTracker
from fl_server.strategy.sensing import ConditionSensor, PlannerConfig
from fl_server.validation import (
    GaussianDP,
    Limits,
    Sparse,
    array_numpy,
    check_num_examples,
    clip_sparse,
    log_rejection,
    trimmed_mean,
    validate_shared,
    validate_sparse,
)
from giot_engine import gsfs_codec

LOG = logging.getLogger(f"flwr.{__name__}")  # shown where Flower shows its own log


@dataclass(frozen=True)
class GSFSConfig:
    """Knobs of the GSFS server (defaults suit the small GIoT model)."""

    fraction_train: float = 1.0
    min_train_nodes: int = 2
    fraction_evaluate: float = 1.0
    min_evaluate_nodes: int = 0
    server_opt: str = "ema"  # "ema" | "sgd" | "sgdm" | "adam" (``ServerAdam``)
    server_lr: float = 1.0  # above 1 counts error-feedback backlogs twice (module docstring)
    beta1: float = 0.5  # spans the halves that rotation at fraction 0.5 alternates
    beta2: float = 0.99
    tau: float = 1e-3
    downlink_threshold: float = 1e-3
    downlink_max_age: int = 10
    limits: Limits = field(default_factory=Limits)
    robust: str = "none"  # "none" | "trimmed-mean"
    trim_beta: float = 0.1
    clip_norm: float = 0.0  # 0: no clipping
    dp_noise_multiplier: float = 0.0  # 0: no DP
    dp_clip: float = 1.0
    dp_delta: float = 1e-5
    seed: int = 0
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    shared_index: bool = False  # SecAgg-compatible: one index set and grid for all nodes
    shared_clip: float = 0.05  # per-coordinate bound before any update was seen
    fedcs_probe_every: int = 5  # a node predicted to miss the deadline is still asked this often
    mean_over: str = "senders"  # "senders": per-coordinate mean; "all": zeros for unsent (DGC)
    selection: str = "rotate"  # "rotate": least recently asked first; "random": seeded sample


@runtime_checkable
class TimedGrid(Protocol):
    """A Grid that knows when each reply arrived (an emulated clock, in benchmarks)."""

    def send_timed(
        self, messages: Iterable[Message], timeout: float
    ) -> list[tuple[Message, float]]:
        """Return the replies that arrived before ``timeout`` and when they arrived."""
        ...


@dataclass
class _Sent:
    time_s: float
    downlink_bytes: int
    steps: int
    budget: int
    state_id: int


def _nbytes(record: ArrayRecord) -> int:
    return int(sum(len(a.data) for a in record.values()))


class GSFS(Strategy):
    """Gradient-Sensing Federated Strategy (see module docstring)."""

    # names and signs each global model it sends out for evaluation (the ServerApp sets it)
    publisher: Publisher | None = None

    def __init__(self, config: GSFSConfig | None = None, checkpoint_dir: str | None = None) -> None:
        self.cfg = config or GSFSConfig()
        self.checkpoint_dir = checkpoint_dir or None
        self.sensor = ConditionSensor(self.cfg.planner)
        self.downlink = DownlinkTracker(self.cfg.downlink_threshold, self.cfg.downlink_max_age)
        self.opt = ServerAdam(
            self.cfg.server_lr, self.cfg.beta1, self.cfg.beta2, self.cfg.tau, self.cfg.server_opt
        )
        self.dp: GaussianDP | None = None
        self.history: list[dict[str, Any]] = []
        self.global_arrays: dict[str, F32] = {}
        self.deadline_s: float = self.cfg.planner.max_deadline_s
        self._sent: dict[int, _Sent] = {}
        self._arrivals: dict[int, float] = {}
        self._population = 0
        self.shared_idx: dict[str, np.ndarray] = {}
        self.shared_scales: dict[str, float] = {}
        self.last_delta: dict[str, F32] = {}
        self.last_asked: dict[int, int] = {}
        self.fedcs_skips: dict[int, int] = {}
        self.recorder = RoundRecorder(self.checkpoint_dir, "gsfs")
        self._online: list[int] = []

    # -- Strategy API -----------------------------------------------------------------------
    def summary(self) -> None:
        """Log the configuration."""
        LOG.info("GSFS %s", asdict(self.cfg))

    def _sample(self, grid: Grid, server_round: int, fraction: float, minimum: int) -> list[int]:
        wanted = max(minimum, 1)
        waited = 0.0
        while len(nodes := sorted(grid.get_node_ids())) < wanted and waited < 60:
            time.sleep(0.5)
            waited += 0.5
        self._population = max(self._population, len(nodes))
        self._online = nodes
        k = min(len(nodes), max(minimum, int(len(nodes) * fraction)))
        rng = np.random.default_rng([self.cfg.seed, server_round])
        # Choose positions, not ids: node ids are uint64 and would not survive a numpy array.
        return sorted(nodes[int(i)] for i in rng.choice(len(nodes), size=k, replace=False))

    def _select(self, grid: Grid, server_round: int) -> list[int]:
        """``fraction_train`` of the nodes: least recently asked first, or a seeded sample.

        Rotation bounds how long a node's error-feedback residual waits; a random sample (as
        Flower's strategies draw) mixes the population differently every round instead of
        splitting it into ``1/fraction_train`` fixed groups that take turns.
        """
        wanted = max(self.cfg.min_train_nodes, 1)
        if self.cfg.selection == "random":
            return self._sample(grid, server_round, self.cfg.fraction_train, wanted)
        waited = 0.0
        while len(nodes := sorted(grid.get_node_ids())) < wanted and waited < 60:
            time.sleep(0.5)
            waited += 0.5
        self._population = max(self._population, len(nodes))
        self._online = nodes
        k = min(len(nodes), max(wanted, math.ceil(len(nodes) * self.cfg.fraction_train)))
        tie = np.random.default_rng([self.cfg.seed, server_round]).random(len(nodes))
        order = sorted(range(len(nodes)), key=lambda i: (self.last_asked.get(nodes[i], 0), tie[i]))
        return sorted(nodes[i] for i in order[:k])

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Select and plan each node's round and build its message (partial downlink)."""
        self.global_arrays = {k: np.asarray(a.numpy(), np.float32) for k, a in arrays.items()}
        self.recorder.begin(server_round)
        nodes = self._select(grid, server_round)
        self._sent = {}
        messages: list[Message] = []
        plans = []
        for node in nodes:
            # plan against a full downlink first: what is skipped is only known after the offer
            full = sum(int(a.nbytes) for a in self.global_arrays.values())
            plan = self.sensor.plan(node, 0)
            plans.append((node, plan, self.sensor.predicted_round_s(node, plan, full)))
        self.deadline_s = self.sensor.deadline([p for _, _, p in plans])
        offers = []
        for node, _, predicted in plans:
            late = predicted is not None and predicted > self.deadline_s
            if late and self.fedcs_skips.get(node, 0) + 1 < self.cfg.fedcs_probe_every:
                self.fedcs_skips[node] = self.fedcs_skips.get(node, 0) + 1
                continue  # FedCS: it would miss the deadline; ask it again later
            self.fedcs_skips.pop(node, None)
            self.last_asked[node] = server_round
            names, base, new_state = self.downlink.offer(node, server_round, self.global_arrays)
            record = ArrayRecord({n: Array(self.global_arrays[n]) for n in names})
            down = _nbytes(record)
            offers.append((node, record, down, self.sensor.plan(node, down), base, new_state))
        shared: ArrayRecord | None = None
        if self.cfg.shared_index and offers:
            self._plan_shared(server_round, min(o[3].budget for o in offers))
            shared = ArrayRecord(
                {f"{n}.idx": Array(i) for n, i in self.shared_idx.items()}
                | {
                    f"{n}.scale": Array(np.array([s], np.float32))
                    for n, s in self.shared_scales.items()
                }
            )
        for node, record, down, plan, base, new_state in offers:
            cfg = ConfigRecord(dict(config))
            cfg["server-round"] = server_round
            cfg["strategy"] = "gsfs"
            cfg["gsfs-mode"] = "shared" if shared is not None else "sparse"
            cfg["local-steps"] = plan.steps
            cfg["gsfs-budget"] = plan.budget
            cfg["base-state"] = base
            cfg["new-state"] = new_state
            cfg["deadline-s"] = self.deadline_s  # how long the node may take (giot-node, hubs)
            content = RecordDict({"arrays": record, "config": cfg})
            if shared is not None:
                content["shared"] = shared
            msg = Message(
                content,
                dst_node_id=node,
                message_type=MessageType.TRAIN,
                group_id=str(server_round),
            )
            messages.append(msg)
            self._sent[node] = _Sent(time.monotonic(), down, plan.steps, plan.budget, new_state)
        self.downlink.collect()
        online = set(self._online)
        self.recorder.set(
            available=len(online),
            nodes_seen=len(online | set(self.last_asked) | set(self.fedcs_skips)),
            asked=len(self._sent),
            skipped=len(online - set(self._sent)),
            deadline_s=self.deadline_s,
        )
        LOG.info(
            "configure_train: round %d, %d nodes, deadline %.1fs",
            server_round,
            len(nodes),
            self.deadline_s,
        )
        return messages

    def _plan_shared(self, server_round: int, budget: int) -> None:
        """Pick this round's shared coordinates and fixed-point steps (SecAgg-compatible mode).

        Every node sends one int8 per shared coordinate, so ``budget`` bytes buy ``budget``
        coordinates: half where the server's Adam momentum says the model is moving (relative to
        the tensor's weight scale), half drawn at random so that every coordinate is visited and
        no client residual waits forever. The step per tensor is twice the largest mean update
        seen there last round (the clients' error feedback keeps what is clipped).
        """
        names = list(self.global_arrays)
        sizes = [self.global_arrays[n].size for n in names]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        total = int(offsets[-1])
        k = min(max(budget, 0), total)
        rng = np.random.default_rng([self.cfg.seed, server_round, 3])
        score = np.zeros(total)
        for i, n in enumerate(names):
            if n in self.opt.m:
                rms = float(np.sqrt(np.mean(self.global_arrays[n].astype(np.float64) ** 2)))
                score[offsets[i] : offsets[i + 1]] = np.abs(self.opt.m[n].ravel()) / (rms + 1e-2)
        top = np.argsort(-score, kind="stable")[: k // 2] if score.any() else np.zeros(0, np.int64)
        rest = np.setdiff1d(np.arange(total), top)
        pick = np.sort(np.concatenate([top, rng.choice(rest, size=k - top.size, replace=False)]))
        self.shared_idx, self.shared_scales = {}, {}
        for i, n in enumerate(names):
            mine = pick[(pick >= offsets[i]) & (pick < offsets[i + 1])] - offsets[i]
            if mine.size:
                self.shared_idx[n] = mine.astype(gsfs_codec.index_dtype(sizes[i]))
                last = self.last_delta.get(n)
                peak = float(np.max(np.abs(last))) if last is not None else 0.0
                clip = 2.0 * peak if peak > 0 else self.cfg.shared_clip
                self.shared_scales[n] = gsfs_codec.shared_scales({n: clip})[n]

    def _reject(self, node: int, reason: str) -> None:
        log_rejection(node, reason)
        self.recorder.refuse(reason)

    def _accept(
        self, msg: Message, shapes: Mapping[str, tuple[int, ...]]
    ) -> tuple[Sparse, float] | None:
        """Sense one reply and validate it; the decoded update and its weight if it counts."""
        node = msg.metadata.src_node_id
        sent = self._sent.get(node)
        if (unusable := _unusable_reply(msg)) is not None:
            self._reject(node, unusable)
            if msg.has_error():
                self.sensor.observe_miss(node)
            self.downlink.forget(node)
            return None
        content = msg.content
        metrics = next(iter(content.metric_records.values()))
        record = next(iter(content.array_records.values()))
        try:
            payload = {k: array_numpy(a) for k, a in record.items()}
            if "gsfs.head" in payload and not self.cfg.shared_index:
                payload = gsfs_codec.unpack(payload, shapes)  # packed wire form, same content
        except (TypeError, ValueError) as err:
            self._reject(node, f"undecodable arrays: {err}")
            self.downlink.forget(node)
            return None
        state = metrics.get("state-id", -1)
        self.downlink.confirm(node, int(state) if isinstance(state, (int, float)) else -1)
        if sent is not None:
            rtt = self._arrivals.get(node, time.monotonic() - sent.time_s)
            compute = metrics.get("compute-s", 0.0)
            steps = metrics.get("local-steps", sent.steps)
            self.sensor.observe_reply(
                node,
                rtt,
                float(compute) if isinstance(compute, (int, float)) else 0.0,
                int(steps) if isinstance(steps, (int, float)) else sent.steps,
                sent.downlink_bytes + _nbytes(record),
            )
        if metrics.get("downlink-ok", 1) == 0:
            self._reject(node, "node did not hold the expected base copy; full model next round")
            return None
        weight = metrics.get("num-examples")
        why = check_num_examples(weight, self.cfg.limits)
        if why is None and sent is not None and _nbytes_payload(payload) > sent.budget:
            why = f"payload {_nbytes_payload(payload)} B above budget {sent.budget} B"
        sparse = None
        if why is None and self.cfg.shared_index:
            sparse, why = validate_shared(
                payload, self.shared_idx, self.shared_scales, self.cfg.limits
            )
            weight = 1  # a secure sum has no per-client weights: the mean is uniform
        elif why is None:
            sparse, why = validate_sparse(payload, shapes, self.cfg.limits)
        if why is not None or sparse is None:
            self._reject(node, why or "invalid")
            return None
        return sparse, float(cast(float, weight))

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate, aggregate per coordinate, apply the server optimiser."""
        shapes = {k: a.shape for k, a in self.global_arrays.items()}
        replies = list(replies)
        accepted: list[tuple[Sparse, float]] = []
        # Plain mean: stream each update into a model-sized accumulator and drop it, so memory
        # does not grow with the number of nodes; DP and trimmed mean need all updates at once.
        stream = self.cfg.dp_noise_multiplier <= 0 and self.cfg.robust != "trimmed-mean"
        acc = SparseMean(shapes)
        losses: list[tuple[float, float]] = []
        answered: set[int] = set()
        for msg in replies:
            node = msg.metadata.src_node_id
            answered.add(node)
            got = self._accept(msg, shapes)
            if got is not None:
                if stream:
                    upd = got[0]
                    if self.cfg.clip_norm > 0:
                        upd = clip_sparse(upd, self.cfg.clip_norm)
                    acc.add(upd, got[1])
                    got = ({}, got[1])
                accepted.append(got)
                loss = next(iter(msg.content.metric_records.values())).get("train-loss")
                if isinstance(loss, (int, float)):
                    losses.append((float(loss), got[1]))
        missed = [n for n in self._sent if n not in answered]
        for node in missed:
            self.sensor.observe_miss(node)
            self.downlink.forget(node)
        up = sum(
            _nbytes(next(iter(m.content.array_records.values())))
            for m in replies
            if m.has_content() and len(m.content.array_records) == 1
        )
        metrics = MetricRecord(
            {
                "asked": len(self._sent),
                "accepted": len(accepted),
                "rejected": len(replies) - len(accepted),
                "missed": len(missed),
                "uplink-bytes": up,
                "downlink-bytes": sum(s.downlink_bytes for s in self._sent.values()),
                "deadline-s": self.deadline_s,
            }
        )
        new_arrays: ArrayRecord | None = None
        if accepted:
            delta = (
                acc.result(self.cfg.mean_over == "all")[0]
                if stream
                else self._combine(server_round, accepted, shapes)
            )
            self.last_delta = delta
            self.global_arrays = self.opt.step(self.global_arrays, delta)
            new_arrays = ArrayRecord({k: Array(v) for k, v in self.global_arrays.items()})
            if losses:
                total = sum(w for _, w in losses)
                metrics["train-loss"] = sum(x * w for x, w in losses) / total
            if self.dp is not None:
                metrics["dp-epsilon"] = self.dp.spent().epsilon
        self.history.append({"round": server_round, **dict(metrics.items())})
        dp_on = self.cfg.dp_noise_multiplier > 0
        self.recorder.set(
            replied=len(replies),
            accepted=len(accepted),
            missed=len(missed),
            bytes_up=up,
            bytes_down=metrics["downlink-bytes"],
            train_loss=metrics.get("train-loss"),
            dp_epsilon=metrics.get("dp-epsilon", 0.0) if dp_on else None,
            dp_delta=self.cfg.dp_delta if dp_on else None,
            model_version=sum(1 for h in self.history if h["accepted"]),  # updates applied
            train_s=self.recorder.elapsed(),
        )
        return new_arrays, metrics

    def _combine(
        self,
        server_round: int,
        accepted: list[tuple[Sparse, float]],
        shapes: Mapping[str, tuple[int, ...]],
    ) -> dict[str, F32]:
        updates = [u for u, _ in accepted]
        if self.cfg.dp_noise_multiplier > 0:
            if self.dp is None:
                self.dp = GaussianDP(
                    self.cfg.dp_clip,
                    self.cfg.dp_noise_multiplier,
                    max(self._population, len(self._sent), 1),
                    self.cfg.dp_delta,
                    self.cfg.seed,
                )
            self.dp.rng = np.random.default_rng([self.cfg.seed, server_round, 7])
            return self.dp.release(updates, len(self._sent), shapes)
        if self.cfg.clip_norm > 0:
            updates = [clip_sparse(u, self.cfg.clip_norm) for u in updates]
        if self.cfg.robust == "trimmed-mean":
            return trimmed_mean(updates, shapes, self.cfg.trim_beta)
        mean, _ = aggregate_sparse(updates, [w for _, w in accepted], shapes)
        return mean

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the full global model to a sample of nodes for evaluation."""
        if self.cfg.fraction_evaluate <= 0:
            return []
        nodes = self._sample(
            grid, 10_000 + server_round, self.cfg.fraction_evaluate, self.cfg.min_evaluate_nodes
        )
        cfg = ConfigRecord(dict(config))
        cfg["server-round"] = server_round
        if self.publisher is not None:
            cfg.update(
                self.publisher.stamp({k: a.numpy() for k, a in arrays.items()}, server_round)
            )
        record = RecordDict({"arrays": arrays, "config": cfg})
        return [
            Message(
                record, dst_node_id=n, message_type=MessageType.EVALUATE, group_id=str(server_round)
            )
            for n in nodes
        ]

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Weighted mean of evaluation metrics over valid replies."""
        good = []
        for msg in replies:
            if msg.has_error() or len(msg.content.metric_records) != 1:
                continue
            m = next(iter(msg.content.metric_records.values()))
            if check_num_examples(m.get("num-examples"), self.cfg.limits) is None:
                good.append(msg.content)
        result = aggregate_metricrecords(good, "num-examples") if good else None
        self.recorder.set(eval_clients=plain_metrics(result))
        return result

    # -- Round loop ---------------------------------------------------------------------------
    def _send_timed(self, grid: Grid, messages: Iterable[Message], timeout: float) -> list[Message]:
        """Push, then pull until all replied or the deadline; note when each reply arrived."""
        self._arrivals = {}
        if isinstance(grid, TimedGrid):  # emulated clock (benchmarks)
            timed = grid.send_timed(list(messages), timeout)
            self._arrivals = {m.metadata.src_node_id: t for m, t in timed}
            return [m for m, _ in timed]
        t0 = time.monotonic()
        pending = set(grid.push_messages(list(messages)))
        out: list[Message] = []
        while pending:
            got = list(grid.pull_messages(pending))
            now = time.monotonic()
            for msg in got:
                self._arrivals[msg.metadata.src_node_id] = now - t0
                pending.discard(msg.metadata.reply_to_message_id)
            out.extend(got)
            if not pending or now - t0 >= timeout:
                break
            time.sleep(0.02)
        return out

    def state_checkpoint(self, server_round: int) -> Checkpoint:
        """Everything needed to continue after ``server_round`` exactly as if never stopped."""
        down_meta, down_arrays = self.downlink.state()
        meta: dict[str, Any] = {
            "sensor": self.sensor.state_dict(),
            "downlink": down_meta,
            "opt_t": self.opt.t,
            "history": self.history,
            "population": self._population,
            "last_asked": {str(k): v for k, v in self.last_asked.items()},
            "fedcs_skips": {str(k): v for k, v in self.fedcs_skips.items()},
            "dp": None if self.dp is None else self.dp.accountant.state_dict(),
        }
        extra = (
            prefixed("opt", self.opt.arrays())
            | prefixed("down", down_arrays)
            | prefixed("delta", self.last_delta)
        )
        return Checkpoint(server_round, dict(self.global_arrays), extra, meta)

    def restore(self, ckpt: Checkpoint) -> None:
        """Load what ``state_checkpoint`` saved."""
        self.global_arrays = {k: np.asarray(v, np.float32) for k, v in ckpt.arrays.items()}
        self.sensor.load_state_dict(ckpt.meta["sensor"])
        self.downlink.load_state(ckpt.meta["downlink"], unprefixed("down", ckpt.extra))
        self.opt.load_arrays(unprefixed("opt", ckpt.extra), int(ckpt.meta["opt_t"]))
        self.last_delta = {
            k: np.asarray(v, np.float32) for k, v in unprefixed("delta", ckpt.extra).items()
        }
        self.history = list(ckpt.meta["history"])
        self._population = int(ckpt.meta["population"])
        self.last_asked = {int(k): int(v) for k, v in ckpt.meta.get("last_asked", {}).items()}
        self.fedcs_skips = {int(k): int(v) for k, v in ckpt.meta.get("fedcs_skips", {}).items()}
        if ckpt.meta.get("dp") is not None:
            self.dp = GaussianDP(
                self.cfg.dp_clip,
                self.cfg.dp_noise_multiplier,
                self._population,
                self.cfg.dp_delta,
                self.cfg.seed,
            )
            self.dp.accountant.load_state_dict(ckpt.meta["dp"])

    def start(  # noqa: PLR0917 (the signature of Strategy.start)
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """Run rounds with sensed deadlines (capped by ``timeout``), checkpointing each round.

        With a ``checkpoint_dir`` holding a checkpoint, the run resumes after its round.
        """
        train_config = train_config or ConfigRecord()
        evaluate_config = evaluate_config or ConfigRecord()
        result = Result()
        arrays = initial_arrays
        first = 1
        if self.checkpoint_dir and (ckpt := load_latest(self.checkpoint_dir)) is not None:
            self.restore(ckpt)
            arrays = ArrayRecord({k: Array(v) for k, v in self.global_arrays.items()})
            first = ckpt.server_round + 1
            LOG.info("resuming after round %d from %s", ckpt.server_round, self.checkpoint_dir)
        result.arrays = arrays
        if first == 1 and evaluate_fn is not None and (res := evaluate_fn(0, arrays)) is not None:
            result.evaluate_metrics_serverapp[0] = res  # as Strategy.start: before round 1
        if first == 1 and self.publisher is not None and self.publisher.publish_base:
            # round 0 is the base model: the hubs online take it before round 1 (no metrics)
            base = list(
                self.configure_evaluate(0, arrays, ConfigRecord(dict(evaluate_config)), grid)
            )
            if base:
                grid.send_and_receive(base, timeout=timeout)
        for rnd in range(first, num_rounds + 1):
            messages = list(
                self.configure_train(rnd, arrays, ConfigRecord(dict(train_config)), grid)
            )
            replies = self._send_timed(grid, messages, min(timeout, self.deadline_s))
            new, metrics = self.aggregate_train(rnd, replies)
            if new is not None:
                arrays = result.arrays = new
            if metrics is not None:
                result.train_metrics_clientapp[rnd] = metrics
            eval_msgs = list(
                self.configure_evaluate(rnd, arrays, ConfigRecord(dict(evaluate_config)), grid)
            )
            if eval_msgs:
                ev = self.aggregate_evaluate(rnd, grid.send_and_receive(eval_msgs, timeout=timeout))
                if ev is not None:
                    result.evaluate_metrics_clientapp[rnd] = ev
            if evaluate_fn is not None and (res := evaluate_fn(rnd, arrays)) is not None:
                result.evaluate_metrics_serverapp[rnd] = res
                self.recorder.set(eval_server=plain_metrics(res))
            self.recorder.finish(arrays)  # before the checkpoint: a re-run round only repeats it
            if self.checkpoint_dir:
                save_checkpoint(self.checkpoint_dir, self.state_checkpoint(rnd))
        for line in io.StringIO(str(result)):
            LOG.info("%s", line.rstrip("\n"))
        return result


def _unusable_reply(msg: Message) -> str | None:
    """Why a reply carries no update to look at, or None when it has one record of each."""
    if msg.has_error():
        return f"error reply: {msg.error.reason}"
    content = msg.content
    declined = [m for m in content.metric_records.values() if m.get("skipped") == 1]
    if declined and not content.array_records:
        # a GIoT node whose hub had no data, was paused, busy, or away (giot_node.clientapp)
        return "node skipped the round"
    if len(content.array_records) != 1 or len(content.metric_records) != 1:
        return "expected one ArrayRecord and one MetricRecord"
    return None


def _nbytes_payload(payload: Mapping[str, np.ndarray]) -> int:
    return int(sum(int(a.nbytes) for a in payload.values()))
