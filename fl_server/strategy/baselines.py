"""Flower's own FedAvg, FedAdam and FedProx as baselines, with the same reply validation as GSFS.

The strategies are Flower's, unchanged; a mixin only removes replies that fail validation (keys,
shapes, dtypes, finite values, bounded change, sane ``num-examples``) before Flower aggregates, so
that a comparison with GSFS is not won or lost on who tolerates a poisoned node. Each round also
leaves its line in ``rounds.jsonl`` when a checkpoint directory is given (``fl_server.history``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx, Result

from fl_server.history import RoundRecorder, plain_metrics
from fl_server.signing import Publisher
from fl_server.validation import Limits, check_num_examples, log_rejection, validate_dense


class ValidatedMixin:
    """Filter replies through ``validate_dense`` before the wrapped strategy aggregates."""

    limits: Limits = Limits()
    strategy_name = "fedavg"
    publisher: Publisher | None = None  # names and signs the models sent out for evaluation
    _reference: dict[str, np.ndarray]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recorder = RoundRecorder(None, self.strategy_name)  # make_baseline gives it a folder
        self._updates = 0

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
        """Flower's round loop; the server-side evaluation, last in a round, also ends its line."""

        def evaluate_and_record(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            res = evaluate_fn(server_round, arrays) if evaluate_fn is not None else None
            if server_round > 0:
                self.recorder.set(eval_server=plain_metrics(res))
                self.recorder.finish(arrays)
            return res

        return super().start(  # type: ignore[misc,no-any-return]
            grid,
            initial_arrays,
            num_rounds,
            timeout,
            train_config,
            evaluate_config,
            evaluate_and_record,
        )

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Flower's evaluate messages, their config naming (and signing) the global model."""
        if self.publisher is not None:
            config.update(
                self.publisher.stamp({k: a.numpy() for k, a in arrays.items()}, server_round)
            )
        return super().configure_evaluate(server_round, arrays, config, grid)  # type: ignore[misc,no-any-return]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global arrays the replies must be comparable to."""
        self.recorder.begin(server_round)
        self._reference = {k: a.numpy() for k, a in arrays.items()}
        config["strategy"] = self.strategy_name
        messages = list(super().configure_train(server_round, arrays, config, grid))  # type: ignore[misc]
        online = len(list(grid.get_node_ids()))
        self.recorder.set(
            available=online,
            asked=len(messages),
            skipped=max(online - len(messages), 0),
            bytes_down=sum(_nbytes(m) for m in messages),
        )
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate only the replies that pass validation."""
        kept: list[Message] = []
        replies = list(replies)
        for msg in replies:
            node = msg.metadata.src_node_id
            if msg.has_error():
                kept.append(msg)  # Flower logs and skips error replies itself
                self.recorder.refuse(f"error reply: {msg.error.reason}")
                continue
            content = msg.content
            if len(content.array_records) != 1 or len(content.metric_records) != 1:
                log_rejection(node, "expected one ArrayRecord and one MetricRecord")
                self.recorder.refuse("expected one ArrayRecord")
                continue
            metrics = next(iter(content.metric_records.values()))
            why = check_num_examples(metrics.get("num-examples"), self.limits)
            if why is None:
                try:
                    arrays = {
                        k: a.numpy() for k, a in next(iter(content.array_records.values())).items()
                    }
                    why = validate_dense(arrays, self._reference, self.limits)
                except (TypeError, ValueError) as err:
                    why = f"undecodable arrays: {err}"
            if why is not None:
                log_rejection(node, why)
                self.recorder.refuse(why)
                continue
            kept.append(msg)
        arrays, metrics = super().aggregate_train(server_round, kept)  # type: ignore[misc]
        self._updates += arrays is not None
        asked = self.recorder.fields.get("asked", len(replies))
        self.recorder.set(
            replied=len(replies),
            accepted=sum(not m.has_error() for m in kept),
            missed=max(asked - len(replies), 0),
            bytes_up=sum(_nbytes(m) for m in replies),
            train_loss=None if metrics is None else metrics.get("train-loss"),
            model_version=self._updates,
            train_s=self.recorder.elapsed(),
        )
        return arrays, metrics

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Flower's weighted mean of the sane replies, noted in the round's line.

        A hub that skipped (no data, busy, deadline) answers ``num-examples`` 0 and no more;
        Flower's own check would take the differing replies for an inconsistent round and stop
        the run, so they are dropped here as GSFS drops them.
        """
        kept: list[Message] = []
        for reply in replies:
            if reply.has_error():
                kept.append(reply)
                continue
            metrics = list(reply.content.metric_records.values())
            why = (
                "expected one MetricRecord"
                if len(metrics) != 1
                else check_num_examples(metrics[0].get("num-examples"), self.limits)
            )
            if why is not None:
                log_rejection(reply.metadata.src_node_id, why)
                continue
            kept.append(reply)
        result: MetricRecord | None = super().aggregate_evaluate(server_round, kept)  # type: ignore[misc]
        self.recorder.set(eval_clients=plain_metrics(result))
        return result


def _nbytes(msg: Message) -> int:
    """Bytes of the arrays a message carries (none for an error reply)."""
    if msg.has_error():
        return 0
    return sum(len(a.data) for r in msg.content.array_records.values() for a in r.values())


class ValidatedFedAvg(ValidatedMixin, FedAvg):
    """FedAvg (McMahan et al., 2017) with reply validation."""


class ValidatedFedAdam(ValidatedMixin, FedAdam):
    """FedAdam (Reddi et al., 2021) with reply validation."""

    strategy_name = "fedadam"


class ValidatedFedProx(ValidatedMixin, FedProx):
    """FedProx (Li et al., 2020) with reply validation; clients add the proximal term."""

    strategy_name = "fedprox"


def make_baseline(
    name: str, limits: Limits, checkpoint_dir: str | None = None, **kwargs: Any
) -> ValidatedMixin:
    """Build a validated Flower baseline by name (``fedavg`` | ``fedadam`` | ``fedprox``).

    With ``checkpoint_dir``, each round appends its line to ``rounds.jsonl`` there.
    """
    classes: dict[str, type[ValidatedMixin]] = {
        "fedavg": ValidatedFedAvg,
        "fedadam": ValidatedFedAdam,
        "fedprox": ValidatedFedProx,
    }
    strategy = classes[name](**kwargs)
    strategy.limits = limits
    strategy.recorder = RoundRecorder(checkpoint_dir or None, name)
    return strategy
