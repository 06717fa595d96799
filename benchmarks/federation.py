"""Benchmark: GSFS against Flower's FedAvg, FedAdam and FedProx on real data and emulated homes.

``scripts/bench federation [--nodes N] [--rounds R] [--strategies gsfs,fedavg,...]``

- Hubs: every IoT-23 capture and home event log under ``$GIOT_DATA`` (default ``../shared/data``)
  becomes one or more virtual hubs (``fl_server.simulation.corpus``: non-IID by construction,
  malware-infected devices mixed with benign homes); the last 20 % in time of every capture is
  held out as separate hubs that never train.
- Homes: every hub gets a link and a device (``fl_server.simulation.profiles``: cited tiers, TCP
  under loss, FLOP-based compute time, marginal CPU power and radio energy per bit). Every
  strategy sees the same hubs, data, profiles, seeds and rounds, on an in-process Grid with an
  emulated clock (``ProfiledGrid``; nothing sleeps). A round lasts until its slowest included
  participant replied, or until the deadline if someone did not.
- Detection, per round, on the held-out hubs, the same for every strategy: the global model's
  surprise of each flow given the device's preceding flows (``corpus.record_surprise``),
  calibrated per hub on its first ``--calib`` benign-labelled flows (an emulated clean
  installation period: labels pick those flows, never features): threshold = max of their
  surprises + ``--margin`` nats. Flow-level F1, accuracy and AUROC over the remaining flows of
  all held-out hubs, pooled.

Writes ``docs/results/federation.md`` and ``federation-*.png`` beside it.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, MetricRecord

from benchmarks.metrics import auroc, prf
from fl_server.client_app import make_client_app, model_config
from fl_server.run_config import RunConfig
from fl_server.server_app import build_strategy, initial_arrays
from fl_server.simulation.corpus import Corpus, corpus, record_surprise
from fl_server.simulation.grid import ProfiledGrid
from fl_server.simulation.profiles import assign_profiles
from fl_server.strategy.gsfs import GSFS
from giot_engine.model import GIoTModel
from giot_engine.tokenizer import Vocabulary


@dataclass
class RoundRow:
    """One round of one strategy."""

    f1: float
    acc: float
    auc: float
    up: int
    down: int
    seconds: float
    joules: float
    asked: int
    missed: int
    timed_out: bool


@dataclass
class Run:
    """All rounds of one strategy."""

    name: str
    rows: list[RoundRow] = field(default_factory=list)
    wall_s: float = 0.0


@dataclass
class HeldOut:
    """Held-out hubs, ready to score: per hub its stream, calibration and scored positions."""

    hubs: Corpus
    calib: list[np.ndarray]
    scored: list[np.ndarray]
    truth: np.ndarray


def held_out(hubs: Corpus, calib: int) -> HeldOut:
    """Calibration = first ``calib`` benign-labelled flows of each held-out hub; the rest scored."""
    cal, scored, truth = [], [], []
    for hub in hubs.held_out:
        mal = hub.streams[0].malicious
        benign = np.flatnonzero(~mal)[:calib]
        rest = np.setdiff1d(np.arange(len(mal)), benign)
        cal.append(benign)
        scored.append(rest)
        truth.append(mal[rest])
    return HeldOut(hubs, cal, scored, np.concatenate(truth))


def detection(model: GIoTModel, ho: HeldOut, length: int, margin: float) -> tuple[float, ...]:
    """Pooled flow-level F1, accuracy and AUROC of the held-out hubs (module docstring)."""
    alarms, scores = [], []
    for hub, cal, rest in zip(ho.hubs.held_out, ho.calib, ho.scored, strict=True):
        s = record_surprise(model.token_nll, hub.streams[0], length)
        thr = (float(np.max(s[cal])) if cal.size else float(np.quantile(s, 0.5))) + margin
        scores.append(s[rest])
        alarms.append(s[rest] > thr)
    pred, score = np.concatenate(alarms), np.concatenate(scores)
    _, _, f1 = prf(ho.truth, pred)
    return f1, float(np.mean(pred == ho.truth)), auroc(ho.truth, score)


def bench_config(args: argparse.Namespace, name: str, dense_bytes: int) -> RunConfig:
    """Run config of one strategy (identical except for the strategy's own knobs)."""
    return RunConfig.load(
        {},
        {
            "strategy": name,
            "num-server-rounds": args.rounds,
            "fraction-train": args.gsfs_fraction if name == "gsfs" else args.baseline_fraction,
            "fraction-evaluate": 0.0,
            "min-nodes": 2,
            "round-timeout": args.round_timeout,
            "local-steps": args.local_steps,
            "gsfs-max-steps": args.local_steps,
            "gsfs-min-steps": 1,
            "gsfs-target-round-s": args.gsfs_target_round_s,
            "gsfs-initial-deadline-s": 5 * args.gsfs_target_round_s,
            "gsfs-max-budget": max(256, int(args.gsfs_budget_fraction * dense_bytes)),
            "gsfs-default-budget": max(256, int(args.gsfs_budget_fraction * dense_bytes)),
            "gsfs-server-lr": args.gsfs_server_lr,
            "server-opt": args.gsfs_server_opt,
            "gsfs-server-momentum": args.gsfs_server_momentum,
            "gsfs-mean-over": args.gsfs_mean_over,
            "gsfs-selection": args.gsfs_selection,
            "seed": args.seed,
            "data-source": "corpus",
            "data-dir": args.data,
            "vocab-size": len(Vocabulary.default()),
            "n-positions": args.window,
            "n-embd": args.n_embd,
            "n-layer": 2,
            "n-head": 2,
            "batch-size": args.batch_size,
            "lr": args.lr,
        },
    )


def run_strategy(name: str, args: argparse.Namespace, ho: HeldOut) -> Run:
    """One federation under one strategy."""
    probe = RunConfig.load({}, {"vocab-size": len(Vocabulary.default()), "n-positions": args.window,
                          "n-embd": args.n_embd, "n-head": 2})  # fmt: skip
    dense = sum(int(a.numpy().nbytes) for a in initial_arrays(probe).values())
    cfg = bench_config(args, name, dense)
    grid = ProfiledGrid(
        make_client_app(cfg), assign_profiles(args.nodes, args.seed), seed=args.seed
    )
    strategy = build_strategy(cfg)
    mcfg = model_config(cfg)
    run = Run(name)
    seen = 0

    def evaluate(rnd: int, arrays: ArrayRecord) -> MetricRecord | None:
        nonlocal seen
        params = {k: np.asarray(a.numpy(), np.float32) for k, a in arrays.items()}
        f1, acc, auc = detection(GIoTModel(mcfg, params), ho, args.window, args.margin)
        train = [d for d in grid.log[seen:] if d.kind == "train"]
        seen = len(grid.log)
        if rnd == 0:
            run.rows.append(RoundRow(f1, acc, auc, 0, 0, 0.0, 0.0, 0, 0, False))
            return MetricRecord({"f1": f1})
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
                f1,
                acc,
                auc,
                sum(d.bytes_up for d in arrived),
                sum(d.bytes_down for d in train),
                seconds,
                sum(d.joules for d in train if d.available),
                len(train),
                missed,
                bool(missed),
            )
        )
        print(f"  {name} round {rnd}: F1 {f1:.3f} AUROC {auc:.3f} {seconds:.1f}s", flush=True)
        return MetricRecord({"f1": f1})

    random.seed(args.seed)  # Flower samples (and orders) nodes with the global ``random``
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


def bytes_to_reach(run: Run, target: float) -> float:
    """Cumulative uplink bytes until the first round whose F1 reaches ``target`` (inf: never)."""
    total = 0
    for row in run.rows[1:]:
        total += row.up
        if row.f1 >= target - 1e-9:
            return float(total)
    return math.inf


def _totals(r: Run) -> dict[str, float]:
    rows = r.rows[1:]
    return {
        "f1": r.rows[-1].f1,
        "acc": r.rows[-1].acc,
        "auc": r.rows[-1].auc,
        "up": sum(x.up for x in rows),
        "down": sum(x.down for x in rows),
        "lat": float(np.mean([x.seconds for x in rows])),
        "lat_med": float(np.median([x.seconds for x in rows])),
        "energy": sum(x.joules for x in rows),
        "timeouts": sum(x.timed_out for x in rows),
    }


def plots(runs: list[Run], out: Path) -> list[str]:
    """Per-round plots next to the report; returns the file names."""
    import matplotlib  # noqa: PLC0415 (benchmark-only dependency)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(2, 2, figsize=(11, 8))
    for r in runs:
        rounds = np.arange(len(r.rows))
        ax[0, 0].plot(rounds, [x.f1 for x in r.rows], marker="o", label=r.name)
        cum = np.cumsum([x.up for x in r.rows]) / 1e6
        ax[0, 1].plot(np.maximum(cum, 1e-3), [x.f1 for x in r.rows], marker="o", label=r.name)
        ax[1, 0].plot(rounds[1:], [x.seconds for x in r.rows[1:]], marker="o", label=r.name)
        ax[1, 1].plot(rounds[1:], np.cumsum([x.joules for x in r.rows[1:]]), marker="o",
                      label=r.name)  # fmt: skip
    ax[0, 0].set(xlabel="round", ylabel="held-out flow F1", title="Detection on held-out hubs")
    ax[0, 1].set(xlabel="cumulative uplink MB (log)", ylabel="held-out flow F1", xscale="log",
                 title="F1 against bytes sent")  # fmt: skip
    ax[1, 0].set(xlabel="round", ylabel="s (emulated)", yscale="log", title="Round latency")
    ax[1, 1].set(xlabel="round", ylabel="J (all hubs)", title="Cumulative node energy")
    for a in ax.flat:
        a.grid(alpha=0.3)
        a.legend()
    fig.tight_layout()
    name = f"{out.stem}.png"
    fig.savefig(out.parent / name, dpi=90)
    plt.close(fig)
    return [name]


def render(
    runs: list[Run], args: argparse.Namespace, argv: list[str], ho: HeldOut, pngs: list[str]
) -> str:
    """Markdown report."""
    hubs = ho.hubs
    tot = {r.name: _totals(r) for r in runs}
    lines = [
        "# Federation benchmark: GSFS vs Flower baselines, real hubs, emulated homes",
        "",
        f"Command: `scripts/bench federation {' '.join(argv)}`",
        f"Machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}",
        "",
        f"{args.nodes} training hubs ({', '.join(f'{k}: {v}' for k, v in hubs.describe().items())})"
        f"; {len(hubs.held_out)} held-out hubs ({int(ho.truth.size)} scored flows, "
        f"{int(ho.truth.sum())} malicious). {args.rounds} rounds; every strategy: same hubs, "
        f"data, home profiles (seed {args.seed}), model (GPT-2 layout, n_embd {args.n_embd}, "
        f"2 layers, window {args.window}), local AdamW lr {args.lr:g}, batch {args.batch_size}, "
        f"{args.local_steps} local steps (GSFS: at most). Baseline round timeout "
        f"{args.round_timeout:g} s; baselines train {args.baseline_fraction:.0%} of the hubs per "
        f"round (Flower's sampling). GSFS: {args.gsfs_fraction:.0%} of the hubs per round (least "
        f"recently asked first, FedCS filter), upload budget at most "
        f"{args.gsfs_budget_fraction:g} of the dense model's bytes, server optimiser "
        f"{args.gsfs_server_opt} with eta {args.gsfs_server_lr:g}"
        + (
            f" and beta {args.gsfs_server_momentum:g}"
            if args.gsfs_server_opt in ("ema", "sgdm", "adam")
            else ""
        )
        + f", target round "
        f"{args.gsfs_target_round_s:g} s (deadline prior {5 * args.gsfs_target_round_s:g} s "
        "while nodes are unmeasured).",
        "",
        "Latency and energy are emulated with `fl_server/simulation/profiles.py` (model and "
        "sources in its docstring); bytes, F1 and AUROC are real. Detection: per held-out hub, "
        f"threshold = max surprise of its first {args.calib} benign-labelled flows + "
        f"{args.margin:g} nats; pooled flow-level metrics over the other flows.",
        "",
        "| strategy | final F1 | final acc | final AUROC | uplink MB | downlink MB "
        "| mean round s | median round s | rounds at timeout | node energy J | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        t = tot[r.name]
        lines.append(
            f"| {r.name} | {t['f1']:.3f} | {t['acc']:.3f} | {t['auc']:.3f} | {t['up'] / 1e6:.3f} "
            f"| {t['down'] / 1e6:.3f} | {t['lat']:.2f} | {t['lat_med']:.2f} | {t['timeouts']:.0f} "
            f"| {t['energy']:.0f} | {r.wall_s:.0f} |"
        )
    if "gsfs" in tot and "fedavg" in tot:
        g, f = tot["gsfs"], tot["fedavg"]
        run = {r.name: r for r in runs}
        target = f["f1"]
        bg, bf = bytes_to_reach(run["gsfs"], target), bytes_to_reach(run["fedavg"], target)
        ratio = bg / bf if math.isfinite(bg) and bf > 0 else math.inf
        checks = [
            ("GSFS final F1 >= FedAvg's", f"{g['f1']:.3f} vs {f['f1']:.3f}", g["f1"] >= f["f1"]),
            (
                "GSFS uplink to reach FedAvg's final F1 <= 1/20 of FedAvg's",
                f"{bg / 1e6:.3f} MB vs {bf / 1e6:.3f} MB (ratio {ratio:.4f})",
                ratio <= 0.05,
            ),
            (
                "mean round latency <= 0.5 x FedAvg's",
                f"{g['lat']:.2f} s vs {f['lat']:.2f} s (ratio {g['lat'] / f['lat']:.3f})",
                g["lat"] <= 0.5 * f["lat"],
            ),
            (
                "node energy <= 0.55 x FedAvg's",
                f"{g['energy']:.0f} J vs {f['energy']:.0f} J "
                f"(ratio {g['energy'] / f['energy']:.3f})",
                g["energy"] <= 0.55 * f["energy"],
            ),
        ]
        lines += ["", "Targets (this run):", "", "| target | measured | met |", "|---|---|---|"]
        lines += [f"| {a} | {b} | {'yes' if ok else 'NO'} |" for a, b, ok in checks]
    lines += ["", "Per round (F1 / uplink kB / round s / energy J):", ""]
    lines.append("| round | " + " | ".join(r.name for r in runs) + " |")
    lines.append("|---" * (len(runs) + 1) + "|")
    for i in range(args.rounds + 1):
        cells = [
            f"{r.rows[i].f1:.3f} / {r.rows[i].up / 1e3:.1f} / {r.rows[i].seconds:.2f} / "
            f"{r.rows[i].joules:.0f}"
            if i < len(r.rows)
            else "-"
            for r in runs
        ]
        lines.append(f"| {i} | " + " | ".join(cells) + " |")
    lines += ["", *[f"![federation plots]({p})" for p in pngs]]
    lines += [
        "",
        "Notes: bytes are the arrays as Flower carries them (npy, with headers). Flower's FedAdam",
        "returns float64 global arrays, which doubles its downlink. FedAvg, FedAdam and FedProx",
        "wait for every reply up to the timeout (Flower's behaviour), so an unreachable home",
        "(profiles give LTE homes 95 % availability) costs them the whole timeout; GSFS waits",
        "until its sensed deadline. Energy counts every asked, reachable hub (late ones spent",
        "theirs too).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and write the report."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=40, help="training hubs (up to 1000)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--strategies", default="gsfs,fedavg,fedadam,fedprox")
    parser.add_argument("--local-steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--window", type=int, default=32, help="tokens per training row")
    parser.add_argument("--n-embd", type=int, default=32)
    parser.add_argument("--round-timeout", type=float, default=60.0)
    parser.add_argument("--gsfs-fraction", type=float, default=0.5)
    parser.add_argument(
        "--baseline-fraction", type=float, default=1.0, help="hubs per round for the baselines"
    )
    parser.add_argument("--gsfs-budget-fraction", type=float, default=0.04)
    parser.add_argument("--gsfs-target-round-s", type=float, default=3.0)
    parser.add_argument("--gsfs-server-lr", type=float, default=1.0)
    parser.add_argument("--gsfs-server-opt", default="ema", choices=["adam", "sgd", "sgdm", "ema"])
    parser.add_argument("--gsfs-server-momentum", type=float, default=0.5)
    parser.add_argument("--gsfs-mean-over", default="senders", choices=["senders", "all"])
    parser.add_argument("--gsfs-selection", default="rotate", choices=["rotate", "random"])
    parser.add_argument("--calib", type=int, default=50)
    parser.add_argument("--margin", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default=os.environ.get("GIOT_DATA", "../shared/data"))
    parser.add_argument("--out", default="docs/results/federation.md")
    args = parser.parse_args(argv)
    if not Path(args.data, "iot23").is_dir():
        parser.error(f"no IoT-23 data under {args.data} (set GIOT_DATA)")
    args.data = str(Path(args.data).resolve())
    ho = held_out(corpus(args.data, args.nodes), args.calib)
    runs = []
    for name in args.strategies.split(","):
        print(f"{name}:", flush=True)
        runs.append(run_strategy(name, args, ho))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = render(runs, args, argv, ho, plots(runs, out))
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
