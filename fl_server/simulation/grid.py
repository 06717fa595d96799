"""A Flower ``Grid`` that calls the ClientApp directly, in process, for tests and benchmarks.

Flower's simulation runs ClientApps in Ray actors, which costs seconds of start-up and makes
timing nondeterministic. This Grid keeps one ``Context`` per virtual node (so ``context.state``
persists across rounds, as on a real SuperNode), calls the ClientApp synchronously when messages
are pushed, and can drop a node's replies (a missed deadline) or tamper with them (a poisoned
node), which is what the strategy tests need.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from uuid import uuid4

import numpy as np
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fl_server.run_config import ConfigValue, RunConfig
from fl_server.simulation.profiles import NodeProfile, round_cost

Tamper = Callable[[int, Message], Message]


class LocalGrid(Grid):
    """Virtual nodes ``1..n`` (partition ``i-1`` of ``n``) running ``client_app`` in process."""

    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        run_config: RunConfig | Mapping[str, ConfigValue] | None = None,
        run_id: int = 1,
    ) -> None:
        # Every node's context holds the whole run config, defaults merged, as Flower's own
        # ``context.run_config`` does on a SuperNode.
        full = RunConfig.load(None, run_config).as_run_config()
        TaskIdentity.run_id = run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID
        TaskIdentity.task_id = 0
        self._run = Run.create_empty(run_id)
        self.client_app = client_app
        self.contexts = {
            i + 1: Context(
                run_id=run_id,
                node_id=i + 1,
                node_config={"partition-id": i, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config=dict(full),
            )
            for i in range(num_nodes)
        }
        self.drop: set[int] = set()
        self.tamper: dict[int, Tamper] = {}
        self.delay_s: dict[int, float] = {}
        self._replies: dict[str, Message] = {}
        self.pushed = 0

    def set_run(self, run: Run) -> None:
        """Adopt the run (Flower calls this before the ServerApp starts)."""
        self._run = run

    @property
    def run(self) -> Run:
        """Run information."""
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """Build an instruction message (deprecated Grid API, kept for completeness)."""
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        """Node ids of the virtual nodes."""
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Run the ClientApp on each message now; keep the reply for ``pull_messages``."""
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())
            ids.append(msg.metadata.message_id)
            self.pushed += 1
            node = msg.metadata.dst_node_id
            if node in self.drop or node not in self.contexts:
                continue
            reply = self.client_app(msg, self.contexts[node])
            if node in self.tamper:
                reply = self.tamper[node](node, reply)
            self._replies[msg.metadata.message_id] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Return the replies ready for these instruction ids (each only once)."""
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push and pull at once: replies are ready as soon as they are pushed."""
        return self.pull_messages(self.push_messages(messages))


@dataclass
class Delivery:
    """One node's emulated round: when its reply would arrive, and what it cost."""

    kind: str  # message type: "train" or "evaluate"
    node: int
    seconds: float
    joules: float
    bytes_up: int
    bytes_down: int
    available: bool


class ProfiledGrid(LocalGrid):
    """A LocalGrid whose replies arrive on an emulated clock given each home's profile.

    Each reply gets a virtual arrival time from ``profiles.round_cost`` (link, device, the bytes
    actually moved, the FLOPs the ClientApp reports over the device's speed); replies later
    than the round deadline, or from a node unavailable this round, never arrive. Nothing
    sleeps, so a benchmark of many rounds with slow homes still runs in seconds.
    ``send_timed`` gives the GSFS strategy the arrival times it senses from; Flower's baselines
    see the same deadline via ``send_and_receive``.
    """

    def __init__(
        self,
        client_app: ClientApp,
        profiles: list[NodeProfile],
        run_config: RunConfig | Mapping[str, ConfigValue] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(client_app, len(profiles), run_config)
        self.profiles = {i + 1: p for i, p in enumerate(profiles)}
        self.rng = np.random.default_rng(seed)
        self.log: list[Delivery] = []
        self._arrival: dict[str, float] = {}

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Run the ClientApp now and stamp each reply with an emulated arrival time."""
        messages = list(messages)
        ids = list(super().push_messages(messages))
        for msg, mid in zip(messages, ids, strict=True):
            node = msg.metadata.dst_node_id
            reply = self._replies.get(mid)
            down = _nbytes(msg.content)
            up = _nbytes(reply.content) if reply is not None and reply.has_content() else 0
            metrics = (
                next(iter(reply.content.metric_records.values()))
                if reply is not None and reply.has_content() and reply.content.metric_records
                else None
            )
            flops = metrics.get("compute-flops") if metrics is not None else None
            measured = metrics.get("compute-s", 0.0) if metrics is not None else 0.0
            profile = self.profiles[node]
            if isinstance(flops, (int, float)):  # deterministic: work over the device's speed
                compute_s = float(flops) / (profile.device.gflops * 1e9)
            else:
                compute_s = float(measured) if isinstance(measured, (int, float)) else 0.0
            cost = round_cost(profile, self.rng, bytes_down=down, bytes_up=up, compute_s=compute_s)
            self.log.append(
                Delivery(
                    msg.metadata.message_type,
                    node,
                    cost.seconds,
                    cost.joules,
                    up,
                    down,
                    cost.available,
                )
            )
            if reply is None or not cost.available:
                self._replies.pop(mid, None)
                continue
            if reply.has_content() and reply.content.metric_records:
                key = next(iter(reply.content.metric_records))
                record = reply.content.metric_records[key]
                if "compute-s" in record:
                    record["compute-s"] = cost.compute_s
            self._arrival[mid] = cost.seconds
        return ids

    def send_timed(
        self, messages: Iterable[Message], timeout: float
    ) -> list[tuple[Message, float]]:
        """Return the replies that arrive before ``timeout`` (emulated clock) and when."""
        ids = list(self.push_messages(messages))
        out = []
        for mid in ids:
            reply = self._replies.pop(mid, None)
            t = self._arrival.pop(mid, None)
            if reply is not None and t is not None and t <= timeout:
                out.append((reply, t))
        return out

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Flower's call, with the same emulated deadline."""
        return [
            m for m, _ in self.send_timed(messages, float("inf") if timeout is None else timeout)
        ]


def _nbytes(content: RecordDict) -> int:
    return int(sum(len(a.data) for rec in content.array_records.values() for a in rec.values()))
