"""The evaluation contract: ``scripts/bench detect-score --train F... --test F --out OUT.csv``.

Trains the GIoT model (benign-labelled flows of the training captures) and the signature head
(all training flows, families from the detailed labels), then streams the test capture through the
same ``Detector`` Home Assistant runs and writes ``uid,score,alarm`` per flow in file order.
Rejected rows get an empty score and alarm 0, and their reasons go to stderr. Seeds are fixed.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from fl_server import base_model
from fl_server.base_model import read_rows, score_rows
from giot_engine.detector import Detector, DetectorConfig
from giot_engine.records import ParseStats
from giot_engine.tokenizer import Vocabulary

SEED = 23
DEFAULT_STEPS = 300
WINDOW = 64

__all__ = ["TrainConfig", "main", "read_rows", "score_rows", "train_detector"]


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Training budget: small enough for a 25k-flow capture in minutes on one core."""

    model: str = "giot"  # "giot" (numpy GPT-2) or "bigram" (counts; fast fallback)
    steps: int = DEFAULT_STEPS
    batch_size: int = 16
    lr: float = 3e-3
    seed: int = SEED
    n_embd: int = 48
    n_layer: int = 2
    n_head: int = 4


def train_detector(
    train_paths: Sequence[str | os.PathLike[str]],
    train_cfg: TrainConfig | None = None,
    det_cfg: DetectorConfig | None = None,
) -> Detector:
    """Fit the model and the signature head on the training captures; return a fresh detector.

    The fit is the base model builder's (``fl_server.base_model.fit``), at this benchmark's size.
    """
    tcfg = base_model.TrainConfig(**asdict(train_cfg or TrainConfig()), window=WINDOW)
    fitted = base_model.fit(train_paths, tcfg, det_cfg)
    return Detector(fitted.model, fitted.head, det_cfg, Vocabulary.default())


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (see module docstring)."""
    ap = argparse.ArgumentParser(prog="scripts/bench detect-score", description=__doc__)
    ap.add_argument("--train", nargs="+", required=True, help="training captures")
    ap.add_argument("--test", required=True, help="capture to score")
    ap.add_argument("--out", required=True, help="output CSV: uid,score,alarm")
    ap.add_argument("--model", choices=("giot", "bigram"), default="giot")
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    detector = train_detector(args.train, TrainConfig(model=args.model, steps=args.steps))
    t1 = time.perf_counter()
    stats = ParseStats()
    rows = read_rows(args.test, stats)
    results = score_rows(detector, rows)
    with open(args.out, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["uid", "score", "alarm"])
        for uid, score, alarm in results:
            w.writerow([uid, "" if score is None else f"{score:.4f}", alarm])
    reasons = Counter(row.reason for row in rows if row.reason is not None)
    for reason, n in sorted(reasons.items()):
        print(f"rejected {n} row(s): {reason}", file=sys.stderr)
    print(
        f"scored {len(rows) - sum(reasons.values())} flows, rejected {sum(reasons.values())}; "
        f"train {t1 - t0:.1f}s, score {time.perf_counter() - t1:.1f}s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
