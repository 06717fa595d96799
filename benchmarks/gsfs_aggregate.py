"""Benchmark: server cost of one GSFS round with many nodes (decode, validate, aggregate, step).

``scripts/bench gsfs-aggregate [--nodes 1000] [--budget-fraction 0.04] [--repeats 3]``

Builds ``--nodes`` real GSFS payloads (``giot_engine.gsfs_codec.encode`` of random updates of the
benchmark model, each within the byte budget) as Flower reply Messages, then times
``GSFS.aggregate_train`` on them on one core (the process is pinned to one CPU where the OS
allows): every reply is decoded from its ArrayRecord, validated, streamed into the sparse mean,
and the server optimiser steps. Peak Python memory of the aggregation is measured with
``tracemalloc`` (the replies themselves, which Flower already holds, are not counted). Target:
<= 2 s per round for 1,000 nodes. Writes ``docs/results/federation-aggregate.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import tracemalloc
from pathlib import Path

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
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from fl_server.strategy.gsfs import GSFS, GSFSConfig, _Sent
from fl_server.strategy.sensing import PlannerConfig
from giot_engine import gsfs_codec
from giot_engine.model import GIoTConfig, GIoTModel
from giot_engine.tokenizer import Vocabulary


def build_replies(
    params: dict[str, np.ndarray], nodes: int, budget: int, seed: int, distinct: int = 0
) -> list[Message]:
    """One valid GSFS reply per node, as the ClientApp would send it.

    ``distinct`` > 0 encodes only that many random updates and hands them out in turn (node ``i``
    sends payload ``i % distinct``): encoding is the slow part of building 10,000 replies of a
    large model, and the server's cost per reply does not depend on the values.
    """
    TaskIdentity.run_id = 1
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    TaskIdentity.task_id = 0
    rng = np.random.default_rng(seed)
    shapes = {k: v.shape for k, v in params.items()}
    wires: list[dict[str, np.ndarray]] = []
    out = []
    for node in range(1, nodes + 1):
        if distinct <= 0 or len(wires) < distinct:
            update = {
                k: (rng.standard_normal(v.shape) * 1e-3).astype(np.float32)
                for k, v in params.items()
            }
            enc = gsfs_codec.encode(update, params, budget)
            wires.append(gsfs_codec.pack(enc.payload, shapes))
        wire = wires[(node - 1) % distinct] if distinct > 0 else wires[-1]
        instruction = Message(
            RecordDict({"config": ConfigRecord({"server-round": 1})}),
            dst_node_id=node,
            message_type=MessageType.TRAIN,
            group_id="1",
        )
        instruction.metadata.__dict__["_message_id"] = f"m{node}"
        content = RecordDict(
            {
                "arrays": ArrayRecord({k: Array(v) for k, v in wire.items()}),
                "metrics": MetricRecord(
                    {
                        "num-examples": 80,
                        "train-loss": 1.0,
                        "compute-s": 0.1,
                        "local-steps": 5,
                        "state-id": node,
                        "downlink-ok": 1,
                    }
                ),
            }
        )
        reply = Message(content, reply_to=instruction)
        reply.metadata.__dict__["_src_node_id"] = node
        out.append(reply)
    return out


def fresh_strategy(params: dict[str, np.ndarray], nodes: int, budget: int) -> GSFS:
    """Return a GSFS server that has just asked nodes ``1..nodes`` for a round at ``budget`` B."""
    strategy = GSFS(GSFSConfig(server_opt="sgd", server_lr=1.0, planner=PlannerConfig()))
    strategy.global_arrays = {k: v.copy() for k, v in params.items()}
    strategy._sent = {n: _Sent(0.0, 0, 5, budget, n) for n in range(1, nodes + 1)}
    strategy.downlink.pending = {}
    return strategy


def main(argv: list[str] | None = None) -> None:
    """Time the aggregation and write the report."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--budget-fraction", type=float, default=0.04)
    parser.add_argument("--n-embd", type=int, default=32)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/results/federation-aggregate.md")
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    mcfg = GIoTConfig(len(Vocabulary.default()), args.window, args.n_embd, 2, 2)
    params = GIoTModel.init(mcfg, args.seed).params
    dense = sum(int(v.nbytes) for v in params.values())
    budget = int(args.budget_fraction * dense)
    t0 = time.perf_counter()
    replies = build_replies(params, args.nodes, budget, args.seed)
    build_s = time.perf_counter() - t0
    up = sum(len(a.data) for m in replies for a in m.content.array_records["arrays"].values())
    times, peaks = [], []
    for _ in range(args.repeats):
        strategy = fresh_strategy(params, args.nodes, budget)
        tracemalloc.start()
        t0 = time.perf_counter()
        new, metrics = strategy.aggregate_train(1, replies)
        times.append(time.perf_counter() - t0)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert new is not None
        assert metrics is not None
        assert metrics["accepted"] == args.nodes
    # tracemalloc slows allocation-heavy code: time once more without it.
    strategy = fresh_strategy(params, args.nodes, budget)
    t0, c0 = time.perf_counter(), time.process_time()
    strategy.aggregate_train(1, replies)
    plain, cpu = time.perf_counter() - t0, time.process_time() - c0
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "# GSFS server aggregation cost",
        "",
        f"Command: `scripts/bench gsfs-aggregate {' '.join(argv)}`",
        f"Machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs (pinned to one), Python {platform.python_version()}",
        "",
        f"Model: {sum(v.size for v in params.values()):,} parameters ({dense / 1e3:.0f} kB dense). "
        f"{args.nodes} replies of at most {budget} B each ({args.budget_fraction:g} of dense; "
        f"{up / 1e6:.2f} MB on the wire in all), built in {build_s:.1f} s (not timed).",
        "",
        "| what | value |",
        "|---|---|",
        f"| aggregate_train (decode + validate + sparse mean + server step), best of "
        f"{args.repeats} with tracemalloc | {min(times):.3f} s |",
        f"| same, without tracemalloc | {plain:.3f} s |",
        f"| same, CPU time of the process (what one core spent) | {cpu:.3f} s |",
        f"| per node (CPU) | {cpu / args.nodes * 1e3:.2f} ms |",
        f"| machine load average during the run (2 cores, shared) | {load:.1f} |",
        f"| peak Python memory during aggregation | {max(peaks) / 1e6:.1f} MB |",
        f"| target (1,000 nodes, one core, CPU time) | <= 2 s: "
        f"{'met' if cpu <= 2.0 else 'NOT met'} |",
        "",
        "Memory: the plain mean streams every validated update into two float64 vectors of the "
        "model size (`SparseMean`), so it does not grow with the number of nodes; DP and "
        "trimmed-mean modes keep all updates of the round.",
    ]
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
