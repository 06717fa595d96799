"""The ServerApp logic driven through an in-process Grid that calls the real ClientApp.

Fast and deterministic: budgets and local steps are pinned (min == max) so that measured timings
cannot change what is trained; everything else (downlink, validation, aggregation, optimiser,
checkpoints) runs as in a federation.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from fl_server.client_app import make_client_app
from fl_server.run_config import RunConfig
from fl_server.server_app import build_strategy, initial_arrays, run_server
from fl_server.simulation.grid import LocalGrid
from fl_server.strategy.gsfs import GSFS, GSFSConfig
from giot_engine import gsfs_codec

BASE: dict[str, Any] = {
    "num-server-rounds": 3,
    "local-steps": 2,
    "gsfs-min-steps": 2,
    "gsfs-max-steps": 2,
    "gsfs-default-budget": 3000,
    "gsfs-min-budget": 3000,
    "gsfs-max-budget": 3000,
    "windows-per-node": 24,
    "batch-size": 8,
    "n-embd": 16,
    "fraction-evaluate": 0.0,
}


def _cfg(**extra: Any) -> RunConfig:
    return RunConfig.load({}, {**BASE, **extra})


def _run(cfg: RunConfig, nodes: int = 4, grid: LocalGrid | None = None) -> tuple[Any, LocalGrid]:
    grid = grid or LocalGrid(make_client_app(cfg), nodes)
    return run_server(grid, cfg), grid


SHAPES = {k: a.shape for k, a in initial_arrays(_cfg()).items()}


def _replace_arrays(reply: Message, fn: Any) -> Message:
    """Tamper with a reply per tensor; a packed GSFS reply is sent packed again, as clients do."""
    arrays = {k: a.numpy() for k, a in reply.content.array_records["arrays"].items()}
    if "gsfs.head" in arrays:
        arrays = gsfs_codec.pack(fn(gsfs_codec.unpack(arrays, SHAPES)), SHAPES)
    else:
        arrays = fn(arrays)
    reply.content["arrays"] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    return reply


def _largest(arrays: dict[str, np.ndarray]) -> str:
    """The tensor with the most values in a payload."""
    key = max((k for k in arrays if k.endswith(".val")), key=lambda k: arrays[k].size)
    return key[: -len(".val")]


def test_gsfs_rounds_complete_within_budget_and_learn() -> None:
    cfg = _cfg(**{"num-server-rounds": 4, "fraction-evaluate": 1.0})
    result, grid = _run(cfg)
    train = result.train_metrics_clientapp
    assert sorted(train) == [1, 2, 3, 4]
    for m in train.values():
        assert m["accepted"] == 4
        assert m["rejected"] == 0
    assert grid.pushed == 4 * 4 + 4 * 4  # train + evaluate messages
    ev = result.evaluate_metrics_clientapp
    assert ev[4]["eval-loss"] < ev[1]["eval-loss"]
    # every node's context holds the error-feedback residual and its copy of the global model
    for ctx in grid.contexts.values():
        assert "gsfs.residual" in ctx.state
        assert "gsfs.global" in ctx.state


def test_client_payload_respects_budget() -> None:
    cfg = _cfg()
    grid = LocalGrid(make_client_app(cfg), 2)
    seen: list[int] = []

    def spy(node: int, reply: Message) -> Message:
        seen.append(int(reply.content.metric_records["metrics"]["payload-bytes"]))  # type: ignore[arg-type]
        assert set(reply.content.array_records["arrays"]) <= set(gsfs_codec.PACKED_KEYS)
        return reply

    grid.tamper = {1: spy, 2: spy}
    _run(cfg, grid=grid)
    assert len(seen) == 6
    assert all(0 < b <= 3000 for b in seen)
    assert max(seen) > 2900  # budget used, not wasted


def test_poisoned_clients_are_rejected_and_round_completes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = _cfg(**{"num-server-rounds": 1, "max-update-norm": 50.0})
    grid = LocalGrid(make_client_app(cfg), 7)

    def nan_scale(a: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        a[f"{_largest(a)}.scale"] = np.array([np.nan], np.float32)
        return a

    def huge(a: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        a[f"{_largest(a)}.scale"] = np.array([1e9], np.float32)
        return a

    def wrong_shape(a: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        name = _largest(a)
        a.pop(f"{name}.idx", None)  # dense claims must carry every value
        a[f"{name}.val"] = a[f"{name}.val"][:-1]
        return a

    def out_of_range(a: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        name = _largest(a)
        a[f"{name}.val"] = a[f"{name}.val"][:4]
        a[f"{name}.idx"] = np.array([0, 1, 2, 65535], np.uint16)
        return a

    def lying_examples(node: int, reply: Message) -> Message:
        reply.content["metrics"] = MetricRecord(
            {**dict(reply.content.metric_records["metrics"]), "num-examples": 10**12}
        )
        return reply

    grid.tamper = {
        1: lambda n, r: _replace_arrays(r, nan_scale),
        2: lambda n, r: _replace_arrays(r, huge),
        3: lambda n, r: _replace_arrays(r, wrong_shape),
        4: lambda n, r: _replace_arrays(r, out_of_range),
        5: lying_examples,
    }
    with caplog.at_level(logging.WARNING):
        result, _ = _run(cfg, grid=grid)
    m = result.train_metrics_clientapp[1]
    assert m["accepted"] == 2
    assert m["rejected"] == 5
    log = caplog.text
    for node, reason in [
        (1, "not finite"),
        (2, "norm"),
        (3, "dense value count"),
        (4, "out of range"),
        (5, "num-examples out of range"),
    ]:
        assert f"node {node}:" in log
        assert reason in log
    # the global model moved, and only finitely
    assert all(np.all(np.isfinite(a.numpy())) for a in result.arrays.values())


def test_missed_deadline_is_sensed_and_node_gets_full_model_again() -> None:
    cfg = _cfg(**{"num-server-rounds": 2, "gsfs-min-budget": 256, "gsfs-max-budget": 4 << 20})
    grid = LocalGrid(make_client_app(cfg), 3)
    strategy = build_strategy(cfg)
    assert isinstance(strategy, GSFS)
    grid.drop = {2}
    strategy.start(grid, initial_arrays(cfg), num_rounds=2, timeout=0.3)
    assert strategy.sensor.nodes[2].misses == 2
    assert strategy.sensor.nodes[2].miss_streak == 2
    assert 2 not in strategy.downlink.committed
    assert strategy.history[0]["missed"] == 1
    # a node that keeps missing gets a smaller budget and fewer steps
    assert strategy.sensor.plan(2, 0).budget < strategy.sensor.plan(1, 0).budget


def test_downlink_skips_unchanged_tensors_and_nodes_stay_in_sync() -> None:
    cfg = _cfg(**{"num-server-rounds": 3, "downlink-threshold": 0.05, "gsfs-server-lr": 1e-3})
    result, _ = _run(cfg, nodes=3)
    train = result.train_metrics_clientapp
    assert train[2]["downlink-bytes"] < train[1]["downlink-bytes"]
    assert all(train[r]["accepted"] == 3 for r in train)  # partial downlinks applied cleanly


def test_node_that_lost_its_state_is_resynchronised() -> None:
    """A hub restarted without its saved copy says so; it gets the full model next round."""
    cfg = _cfg(**{"num-server-rounds": 3})
    grid = LocalGrid(make_client_app(cfg), 3)
    strategy = build_strategy(cfg)
    assert isinstance(strategy, GSFS)

    def wipe_after_round_1(rnd: int, arrays: Any) -> None:
        if rnd == 1:
            grid.contexts[2].state = RecordDict()

    strategy.start(grid, initial_arrays(cfg), num_rounds=3, evaluate_fn=wipe_after_round_1)
    accepted = [h["accepted"] for h in strategy.history]
    assert accepted == [3, 2, 3]
    assert 2 in strategy.downlink.committed


def test_kill_and_resume_gives_same_rounds(tmp_path: Path) -> None:
    rounds = 4
    full_cfg = _cfg(**{"num-server-rounds": rounds, "checkpoint-dir": str(tmp_path / "a")})
    full, _ = _run(full_cfg)

    cut_cfg = _cfg(**{"num-server-rounds": 2, "checkpoint-dir": str(tmp_path / "b")})
    grid = LocalGrid(make_client_app(cut_cfg), 4)
    run_server(grid, cut_cfg)  # server "killed" after round 2; homes keep their state
    pushed_before = grid.pushed
    resumed_cfg = cut_cfg.with_overrides({"num-server-rounds": rounds})
    resumed = run_server(grid, resumed_cfg)  # a fresh strategy object reads the checkpoint

    assert grid.pushed - pushed_before == 2 * 4  # only rounds 3 and 4 ran
    assert sorted(resumed.train_metrics_clientapp) == [3, 4]
    for rnd in (3, 4):
        assert dict(resumed.train_metrics_clientapp[rnd]) == pytest.approx(
            dict(full.train_metrics_clientapp[rnd])
        )
    for name, arr in full.arrays.items():
        np.testing.assert_array_equal(resumed.arrays[name].numpy(), arr.numpy())


def test_robust_and_dp_modes_run() -> None:
    robust, _ = _run(_cfg(**{"robust": "trimmed-mean", "clip-norm": 1.0}), nodes=5)
    assert robust.train_metrics_clientapp[3]["accepted"] == 5
    dp, _ = _run(_cfg(**{"dp-noise": 1.0, "dp-clip": 0.5}), nodes=4)
    eps = [dp.train_metrics_clientapp[r]["dp-epsilon"] for r in (1, 2, 3)]
    assert 0 < eps[0] < eps[1] < eps[2]


def test_secagg_compatible_mode_uses_one_shared_index_set() -> None:
    cfg = _cfg(**{"gsfs-shared-index": True, "num-server-rounds": 3, "fraction-evaluate": 1.0})
    grid = LocalGrid(make_client_app(cfg), 4)
    sizes: list[dict[str, int]] = []

    def spy(node: int, reply: Message) -> Message:
        if reply.metadata.message_type != "train":
            return reply
        arrays = reply.content.array_records["arrays"]
        assert all(k.endswith(".val") for k in arrays)  # no indices, no scales travel
        sizes.append({k: int(a.shape[0]) for k, a in arrays.items()})
        return reply

    grid.tamper = dict.fromkeys(range(1, 5), spy)
    result = run_server(grid, cfg)
    train = result.train_metrics_clientapp
    assert all(train[r]["accepted"] == 4 for r in (1, 2, 3))
    # all nodes of a round sent the same coordinates: one shared set of exactly the budget
    for r in range(3):
        per_round = sizes[4 * r : 4 * r + 4]
        assert all(s == per_round[0] for s in per_round)
        assert sum(per_round[0].values()) == 3000
    ev = result.evaluate_metrics_clientapp
    assert ev[3]["eval-loss"] < ev[1]["eval-loss"]


@pytest.mark.parametrize("name", ["fedavg", "fedadam", "fedprox"])
def test_flower_baselines_with_validation(name: str, caplog: pytest.LogCaptureFixture) -> None:
    cfg = _cfg(
        **{"strategy": name, "num-server-rounds": 2, "min-nodes": 3, "fraction-evaluate": 1.0}
    )
    grid = LocalGrid(make_client_app(cfg), 4)

    def nan(a: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        k = next(iter(a))
        a[k] = np.full_like(a[k], np.nan)
        return a

    def skipped_evaluation(node: int, reply: Message) -> Message:
        if reply.metadata.message_type != "evaluate":
            return reply
        # what a GIoT node answers for a hub that had nothing to evaluate on
        for key in list(reply.content.metric_records):
            del reply.content[key]
        reply.content["metrics"] = MetricRecord({"num-examples": 0, "skipped": 1})
        return reply

    def poisoned(node: int, reply: Message) -> Message:
        return reply if reply.metadata.message_type != "train" else _replace_arrays(reply, nan)

    grid.tamper = {3: poisoned, 4: skipped_evaluation}
    with caplog.at_level(logging.WARNING):
        result = run_server(grid, cfg)
    assert "node 3: " in caplog.text
    assert "node 4: num-examples out of range: 0" in caplog.text
    assert sorted(result.train_metrics_clientapp) == [1, 2]
    assert sorted(result.evaluate_metrics_clientapp) == [1, 2]
    assert all(np.all(np.isfinite(a.numpy())) for a in result.arrays.values())
    initial = initial_arrays(cfg)
    assert any(not np.array_equal(result.arrays[k].numpy(), initial[k].numpy()) for k in initial)


def test_rotation_alternates_halves_and_random_selection_mixes_them() -> None:
    grid = LocalGrid(make_client_app(_cfg()), 8)

    def picks(selection: str) -> list[set[int]]:
        strategy = GSFS(GSFSConfig(fraction_train=0.5, selection=selection, seed=0))
        out = []
        for rnd in range(1, 7):
            chosen = strategy._select(grid, rnd)
            strategy.last_asked.update(dict.fromkeys(chosen, rnd))  # as configure_train does
            out.append(set(chosen))
        return out

    rot = picks("rotate")
    assert all(len(p) == 4 for p in rot)
    assert rot[0].isdisjoint(rot[1])
    assert rot[0] | rot[1] == set(range(1, 9))
    assert rot[2::2] == [rot[0]] * 2
    assert rot[3::2] == [rot[1]] * 2
    rnd = picks("random")
    assert rnd == picks("random")  # seeded
    assert all(len(p) == 4 for p in rnd)
    assert any(a & b for a, b in itertools.pairwise(rnd))  # no fixed alternation
