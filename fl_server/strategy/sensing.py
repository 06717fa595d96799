"""What the server senses about each node, and the per-node plan it derives from it.

Nothing here is declared by a node: round-trip time is measured by the server between sending an
instruction and the reply's arrival, bytes moved are what the server sent plus what it received,
misses are replies that did not arrive before the round deadline; only the local compute time is
read from the reply (it cannot be observed from outside). From these the planner sets, per node,
an upload byte budget (Kimad-style: per-link compression adapted to measured bandwidth), a number
of local steps (Wang et al., JSAC 2019: adapt local work to a resource budget) and, per round, a
deadline that the fast majority meets (FedCS: do not let the slowest node set the pace).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


@dataclass
class NodeConditions:
    """Exponentially weighted estimates of one node's link and device."""

    rtt_s: float | None = None
    compute_per_step_s: float | None = None
    bytes_per_s: float | None = None
    replies: int = 0
    misses: int = 0
    miss_streak: int = 0
    last_budget: int = 0
    last_steps: int = 0


@dataclass(frozen=True)
class NodePlan:
    """What a node is asked to do this round."""

    budget: int
    steps: int


@dataclass(frozen=True)
class PlannerConfig:
    """Targets and bounds of the planner (all times in seconds, sizes in bytes)."""

    target_round_s: float = 30.0
    comm_share: float = 0.5
    min_budget: int = 256
    max_budget: int = 4 << 20
    default_budget: int = 64 << 10
    min_steps: int = 1
    max_steps: int = 50
    default_steps: int = 5
    deadline_quantile: float = 0.9
    deadline_slack: float = 2.0
    min_deadline_s: float = 5.0
    max_deadline_s: float = 600.0
    initial_deadline_s: float | None = None  # prior while a selected node is unmeasured
    ewma: float = 0.5


@dataclass
class ConditionSensor:
    """Per-node conditions, updated from observed replies and misses."""

    config: PlannerConfig = field(default_factory=PlannerConfig)
    nodes: dict[int, NodeConditions] = field(default_factory=dict)

    def _ewma(self, old: float | None, new: float) -> float:
        a = self.config.ewma
        return new if old is None else (1.0 - a) * old + a * new

    def node(self, node_id: int) -> NodeConditions:
        """Conditions of a node (a fresh record for a node never seen)."""
        return self.nodes.setdefault(node_id, NodeConditions())

    def observe_reply(
        self, node_id: int, rtt_s: float, compute_s: float, steps: int, bytes_moved: int
    ) -> None:
        """Record a reply that came ``rtt_s`` after its instruction (``compute_s`` training)."""
        c = self.node(node_id)
        rtt_s = max(float(rtt_s), 1e-6)
        compute_s = min(max(float(compute_s), 0.0), rtt_s)
        c.rtt_s = self._ewma(c.rtt_s, rtt_s)
        if steps > 0:
            c.compute_per_step_s = self._ewma(c.compute_per_step_s, compute_s / steps)
        comm_s = max(rtt_s - compute_s, 1e-3)
        c.bytes_per_s = self._ewma(c.bytes_per_s, bytes_moved / comm_s)
        c.replies += 1
        c.miss_streak = 0

    def observe_miss(self, node_id: int) -> None:
        """Record that the node did not answer in time (or answered with an error)."""
        c = self.node(node_id)
        c.misses += 1
        c.miss_streak += 1

    def plan(self, node_id: int, downlink_bytes: int) -> NodePlan:
        """Budget and local steps that should fit the node into the target round time."""
        cfg = self.config
        c = self.node(node_id)
        if c.bytes_per_s is None:
            budget = cfg.default_budget
        else:
            budget = int(c.bytes_per_s * cfg.comm_share * cfg.target_round_s) - downlink_bytes
        budget >>= min(c.miss_streak, 8)  # multiplicative decrease after missed deadlines
        budget = min(max(budget, cfg.min_budget), cfg.max_budget)
        if c.compute_per_step_s is None or c.compute_per_step_s <= 0:
            steps = cfg.default_steps
        else:
            steps = int((1.0 - cfg.comm_share) * cfg.target_round_s / c.compute_per_step_s)
        steps = min(max(steps, cfg.min_steps), cfg.max_steps)
        if c.miss_streak:
            steps = max(cfg.min_steps, steps >> min(c.miss_streak, 8))
        c.last_budget, c.last_steps = budget, steps
        return NodePlan(budget=budget, steps=steps)

    def predicted_round_s(self, node_id: int, plan: NodePlan, downlink_bytes: int) -> float | None:
        """Predict the time from sending to reply for a plan (None: node not yet measured)."""
        c = self.node(node_id)
        if c.bytes_per_s is None or c.compute_per_step_s is None or c.rtt_s is None:
            return None
        return plan.steps * c.compute_per_step_s + (plan.budget + downlink_bytes) / c.bytes_per_s

    def deadline(self, predictions: list[float | None]) -> float:
        """Round deadline: a quantile of predicted completion times with slack, within bounds."""
        cfg = self.config
        if not predictions or any(p is None for p in predictions):
            prior = cfg.initial_deadline_s
            return cfg.max_deadline_s if prior is None else min(prior, cfg.max_deadline_s)
        known = sorted(p for p in predictions if p is not None)
        q = known[min(len(known) - 1, math.ceil(cfg.deadline_quantile * len(known)) - 1)]
        return min(max(cfg.deadline_slack * q, cfg.min_deadline_s), cfg.max_deadline_s)

    def state_dict(self) -> dict[str, dict[str, object]]:
        """JSON-ready state (for checkpoints)."""
        return {str(k): asdict(v) for k, v in self.nodes.items()}

    def load_state_dict(self, state: dict[str, dict[str, object]]) -> None:
        """Restore what ``state_dict`` returned."""
        self.nodes = {int(k): NodeConditions(**v) for k, v in state.items()}  # type: ignore[arg-type]
