"""Benchmark: GSFS against Flower's FedAvg, FedAdam and FedProx on emulated home links.

``scripts/bench federation [--nodes N] [--rounds R] [--strategies gsfs,fedavg,...]`` runs every
strategy with the same GIoT model, the same clients and data partitions, and the same emulated
homes (``fl_server.simulation.profiles``: link tier, device, latency and energy model), on an
in-process Grid with an emulated clock (nothing sleeps). Reported per strategy and round: the
global model's mean next-token NLL on held-out windows of every partition, bytes up and down,
the emulated round time (until the last reply, or the deadline if someone missed it), energy of
all homes (late replies spent theirs too) and missed replies. Written to
``docs/results/federation.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, MetricRecord

from fl_server.client_app import make_client_app, mean_nll, model_config, settings
from fl_server.data import load_partition
from fl_server.server_app import build_strategy, initial_arrays
from fl_server.simulation.grid import ProfiledGrid
from fl_server.simulation.profiles import assign_profiles
from fl_server.strategy.gsfs import GSFS
from giot_engine.model import GIoTModel


@dataclass
class RoundRow:
    """One round of one strategy."""

    loss: float
    up: int
    down: int
    seconds: float
    joules: float
    missed: int


@dataclass
class Run:
    """All rounds of one strategy."""

    name: str
    rows: list[RoundRow] = field(default_factory=list)
    wall_s: float = 0.0


def _held_out(cfg: dict[str, Any], nodes: int) -> np.ndarray:
    fresh = {**cfg, "seed": int(cfg["seed"]) + 1000, "windows-per-node": 16}
    return np.concatenate([load_partition(p, nodes, fresh) for p in range(nodes)])


def run_strategy(name: str, args: argparse.Namespace) -> Run:
    """One federation under one strategy."""
    cfg = settings(
        {},
        {
            "strategy": name,
            "num-server-rounds": args.rounds,
            "fraction-evaluate": 0.0,
            "round-timeout": args.round_timeout,
            "local-steps": args.local_steps,
            "gsfs-max-steps": args.local_steps,
            "gsfs-min-steps": args.local_steps,
            "gsfs-target-round-s": args.target_round_s,
            "seed": args.seed,
            "gsfs-server-lr": args.gsfs_server_lr,
            "min-nodes": max(2, args.nodes // 2),
        },
    )
    profiles = assign_profiles(args.nodes, args.seed)
    grid = ProfiledGrid(make_client_app(cfg), profiles, seed=args.seed)
    strategy = build_strategy(cfg)
    test = _held_out(cfg, args.nodes)
    mcfg = model_config(cfg)
    run = Run(name)
    seen = 0

    def evaluate(rnd: int, arrays: ArrayRecord) -> MetricRecord | None:
        nonlocal seen
        params = {k: np.asarray(a.numpy(), np.float32) for k, a in arrays.items()}
        loss = mean_nll(GIoTModel(mcfg, params), test)
        if rnd == 0:
            seen = len(grid.log)
            run.rows.append(RoundRow(loss, 0, 0, 0.0, 0.0, 0))
            return MetricRecord({"test-loss": loss})
        train = [d for d in grid.log[seen:] if d.kind == "train"]
        seen = len(grid.log)
        deadline = (
            float(strategy.history[-1]["deadline-s"])
            if isinstance(strategy, GSFS)
            else args.round_timeout
        )
        arrived = [d for d in train if d.available and d.seconds <= deadline]
        missed = len(train) - len(arrived)
        seconds = deadline if missed else max((d.seconds for d in arrived), default=0.0)
        run.rows.append(
            RoundRow(
                loss,
                sum(d.bytes_up for d in arrived),
                sum(d.bytes_down for d in train),
                seconds,
                sum(d.joules for d in train if d.available),
                missed,
            )
        )
        return MetricRecord({"test-loss": loss})

    t0 = time.perf_counter()
    strategy.start(
        grid=grid,
        initial_arrays=initial_arrays(cfg),
        num_rounds=args.rounds,
        timeout=args.round_timeout,
        evaluate_fn=evaluate,
    )
    run.wall_s = time.perf_counter() - t0
    return run


def render(runs: list[Run], args: argparse.Namespace, argv: list[str]) -> str:
    """Markdown report."""
    lines = [
        "# Federation benchmark: GSFS vs Flower baselines on emulated home links",
        "",
        f"Command: `scripts/bench federation {' '.join(argv)}`",
        f"Machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}",
        "",
        f"{args.nodes} homes (profiles drawn with seed {args.seed} from "
        "`fl_server/simulation/profiles.py`: link tiers fiber/cable/dsl/lte, "
        "devices rpi4/mini-pc), "
        f"{args.rounds} rounds, {args.local_steps} local steps, baseline deadline "
        f"{args.round_timeout:g} s. Times and energy are emulated (model in profiles.py; link "
        "tiers are assumptions, see its docstring), losses and bytes are real.",
        "",
        "| strategy | final test NLL | uplink MB | downlink MB | emulated time s | energy J "
        "| missed | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        rows = r.rows[1:]
        lines.append(
            f"| {r.name} | {r.rows[-1].loss:.4f} | {sum(x.up for x in rows) / 1e6:.3f} "
            f"| {sum(x.down for x in rows) / 1e6:.3f} | {sum(x.seconds for x in rows):.1f} "
            f"| {sum(x.joules for x in rows):.1f} | {sum(x.missed for x in rows)} "
            f"| {r.wall_s:.1f} |"
        )
    lines += [
        "",
        "Notes: uplink/downlink count the bytes of the arrays as Flower carries them (npy, with",
        "headers). Emulated compute time and energy scale the compute time measured here, on a",
        "shared machine, so they are noisy between strategies; bytes and losses are not. Flower's",
        "FedAdam returns float64 global arrays, which doubles its downlink. GSFS uses server Adam",
        f"with eta {args.gsfs_server_lr:g}; FedAdam uses Flower's defaults but eta 1e-2.",
        "",
        "Per round (test NLL / uplink kB / emulated s):",
        "",
    ]
    lines.append("| round | " + " | ".join(r.name for r in runs) + " |")
    lines.append("|---" * (len(runs) + 1) + "|")
    for i in range(args.rounds + 1):
        cells = [
            f"{r.rows[i].loss:.4f} / {r.rows[i].up / 1e3:.1f} / {r.rows[i].seconds:.1f}"
            if i < len(r.rows)
            else "-"
            for r in runs
        ]
        lines.append(f"| {i} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and write the report."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--strategies", default="gsfs,fedavg,fedadam,fedprox")
    parser.add_argument("--local-steps", type=int, default=5)
    parser.add_argument("--round-timeout", type=float, default=120.0)
    parser.add_argument("--target-round-s", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gsfs-server-lr", type=float, default=3e-3, help="GSFS server Adam")
    parser.add_argument("--out", default="docs/results/federation.md")
    args = parser.parse_args(argv)
    runs = [run_strategy(name, args) for name in args.strategies.split(",")]
    text = render(runs, args, argv)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
