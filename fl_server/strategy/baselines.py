"""Flower's own FedAvg, FedAdam and FedProx as baselines, with the same reply validation as GSFS.

The strategies are Flower's, unchanged; a mixin only removes replies that fail validation (keys,
shapes, dtypes, finite values, bounded change, sane ``num-examples``) before Flower aggregates, so
that a comparison with GSFS is not won or lost on who tolerates a poisoned node.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx

from fl_server.validation import Limits, check_num_examples, log_rejection, validate_dense


class ValidatedMixin:
    """Filter replies through ``validate_dense`` before the wrapped strategy aggregates."""

    limits: Limits = Limits()
    strategy_name = "fedavg"
    _reference: dict[str, np.ndarray]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global arrays the replies must be comparable to."""
        self._reference = {k: a.numpy() for k, a in arrays.items()}
        config["strategy"] = self.strategy_name
        return super().configure_train(server_round, arrays, config, grid)  # type: ignore[misc,no-any-return]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate only the replies that pass validation."""
        kept: list[Message] = []
        for msg in replies:
            node = msg.metadata.src_node_id
            if msg.has_error():
                kept.append(msg)  # Flower logs and skips error replies itself
                continue
            content = msg.content
            if len(content.array_records) != 1 or len(content.metric_records) != 1:
                log_rejection(node, "expected one ArrayRecord and one MetricRecord")
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
                continue
            kept.append(msg)
        return super().aggregate_train(server_round, kept)  # type: ignore[misc,no-any-return]

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Aggregate only evaluation replies with one MetricRecord and a sane ``num-examples``.

        A hub that skipped (no data, busy, deadline) answers ``num-examples`` 0 and no more;
        Flower's own check would take the differing replies for an inconsistent round and stop
        the run, so they are dropped here as GSFS drops them.
        """
        kept: list[Message] = []
        for msg in replies:
            if msg.has_error():
                kept.append(msg)
                continue
            metrics = list(msg.content.metric_records.values())
            why = (
                "expected one MetricRecord"
                if len(metrics) != 1
                else check_num_examples(metrics[0].get("num-examples"), self.limits)
            )
            if why is not None:
                log_rejection(msg.metadata.src_node_id, why)
                continue
            kept.append(msg)
        return super().aggregate_evaluate(server_round, kept)  # type: ignore[misc,no-any-return]


class ValidatedFedAvg(ValidatedMixin, FedAvg):
    """FedAvg (McMahan et al., 2017) with reply validation."""


class ValidatedFedAdam(ValidatedMixin, FedAdam):
    """FedAdam (Reddi et al., 2021) with reply validation."""

    strategy_name = "fedadam"


class ValidatedFedProx(ValidatedMixin, FedProx):
    """FedProx (Li et al., 2020) with reply validation; clients add the proximal term."""

    strategy_name = "fedprox"


def make_baseline(name: str, limits: Limits, **kwargs: Any) -> ValidatedMixin:
    """Build a validated Flower baseline by name (``fedavg`` | ``fedadam`` | ``fedprox``)."""
    classes: dict[str, type[ValidatedMixin]] = {
        "fedavg": ValidatedFedAvg,
        "fedadam": ValidatedFedAdam,
        "fedprox": ValidatedFedProx,
    }
    strategy = classes[name](**kwargs)
    strategy.limits = limits
    return strategy
