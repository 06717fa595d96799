"""Records per second through the whole online detector, one record at a time vs batched.

``scripts/bench detector-throughput [--devices N] [--records N]``: a synthetic home (N LAN devices,
each with a few services of its own, flows interleaved in time, plus state changes of a few HA
devices) streams through ``Detector.process`` (one record per call, as a hub without batching would)
and through ``Detector.process_many`` in batches (as Home Assistant's coordinator calls it), with
the default GIoT model size (width 64, 2 layers, 2 heads, 64 positions; random weights: speed does
not depend on them) and with the bigram fallback. Everything a record costs is in the number:
tokens, signature features, model, calibration, decision. Process CPU time, one thread. Writes
docs/results/detector.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from giot_engine.context import TokenScorer
from giot_engine.detector import BigramModel, Detector, DetectorConfig
from giot_engine.model import GIoTConfig, GIoTModel
from giot_engine.records import DeviceEvent, FlowRecord
from giot_engine.tokenizer import Vocabulary

ROOT = Path(__file__).resolve().parents[1]
SERVICES = (
    (443, "tcp", 900, 5200),
    (53, "udp", 70, 140),
    (123, "udp", 48, 48),
    (8883, "tcp", 300, 200),
)


def stream(devices: int, records: int, seed: int = 0) -> list[FlowRecord | DeviceEvent]:
    """Return a home's records in time order: 90% flows of ``devices`` hosts, 10% state changes."""
    rng = np.random.default_rng(seed)
    out: list[FlowRecord | DeviceEvent] = []
    ts = 1_700_000_000.0
    for i in range(records):
        ts += float(rng.exponential(0.01))
        if i % 10 == 9:
            d = int(rng.integers(0, 10))
            on = bool(rng.integers(0, 2))
            out.append(
                DeviceEvent(
                    ts,
                    f"switch.s{d}",
                    "switch",
                    "off" if on else "on",
                    "on" if on else "off",
                    device_id=f"ha{d}",
                    source="device",
                )
            )
            continue
        d = int(rng.integers(0, devices))
        port, proto, ob, rb = SERVICES[(d + int(rng.integers(0, 2))) % len(SERVICES)]
        out.append(
            FlowRecord(
                ts,
                f"192.168.1.{10 + d}",
                int(rng.integers(30000, 60000)),
                f"52.{d % 200}.{int(rng.integers(0, 3))}.9",
                port,
                proto,
                f"u{i}",
                None,
                float(rng.exponential(0.5)),
                ob,
                rb,
                "SF",
                "ShADadfF",
                5,
                5,
            )
        )
    return out


def rate(run: Callable[[], object], n: int) -> float:
    """Return records per CPU second of one run (best of two: the first warms caches, pools)."""
    best = float("inf")
    for _ in range(2):
        t0 = time.process_time()
        run()
        best = min(best, time.process_time() - t0)
    return n / best


def measure(model: TokenScorer, records: Sequence[FlowRecord | DeviceEvent], batch: int) -> float:
    def run() -> None:
        det = Detector(model, config=DetectorConfig())
        if batch == 1:
            for r in records:
                if isinstance(r, FlowRecord):
                    det.process(r)
                else:
                    det.process_event(r)
        else:
            for lo in range(0, len(records), batch):
                det.process_many(records[lo : lo + batch])

    return rate(run, len(records))


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    ap = argparse.ArgumentParser(prog="scripts/bench detector-throughput", description=__doc__)
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--records", type=int, default=6000)
    ap.add_argument("--batches", default="1,64,256,1024")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "detector.md"))
    args = ap.parse_args(argv)
    # One BLAS thread, as in the hub's detector process (CHILD_ENV): numpy has loaded its BLAS
    # by now, so an environment variable would be too late; two threads doubled the CPU time.
    limits = threadpool_limits(limits=1)
    vocab = Vocabulary.default()
    records = stream(args.devices, args.records)
    giot = GIoTModel.init(  # frozen, as the hub's model_manager scores with it
        GIoTConfig(vocab_size=len(vocab), n_positions=64, n_embd=64, n_layer=2, n_head=2), 0
    ).freeze()
    rng = np.random.default_rng(1)
    bigram = BigramModel(rng.random((len(vocab), len(vocab))) * 5)
    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    for name, model in (("GIoT (numpy, KV-cached windows)", giot), ("bigram fallback", bigram)):
        for b in batches:
            r = measure(model, records, b)
            rows.append(f"| {name} | {b} | {r:,.0f} | {1e6 / r:.0f} |")
            print(rows[-1], flush=True)
    limits.restore_original_limits()
    cfg = DetectorConfig()
    command = " ".join(
        ["scripts/bench detector-throughput", *(argv if argv is not None else sys.argv[1:])]
    )
    machine = (
        f"{platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs (shared), Python "
        f"{platform.python_version()}, numpy {np.__version__}; 1-min load average "
        f"{os.getloadavg()[0]:.1f} at the end"
    )
    stream_text = (
        f"{len(records):,} records ({args.devices} LAN devices' flows, 10% HA state changes of 10 "
        f"devices); detector defaults (context {cfg.context_tokens} tokens, windows start with "
        f"{cfg.carry_tokens} carried tokens, {cfg.cached_devices} cached windows)"
    )
    text = "\n".join(
        [
            "# The online detector, records per second (one core)",
            "",
            (__doc__ or "").split("\n\n")[1].replace("\n", " "),
            "",
            f"- Command: `{command}`",
            f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            f"- Machine: {machine}",
            f"- Stream: {stream_text}",
            "",
            "| scorer | records per call | records/s | µs per record |",
            "|---|---:|---:|---:|",
            *rows,
            "",
        ]
    )
    Path(args.out).write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
