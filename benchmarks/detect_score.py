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
from dataclasses import dataclass

import numpy as np

from giot_engine.context import TokenScorer
from giot_engine.detector import BigramModel, Detector, DetectorConfig
from giot_engine.model import GIoTConfig, GIoTModel
from giot_engine.records import FlowRecord, ParseStats
from giot_engine.signature import SignatureHead, family_of
from giot_engine.tokenizer import BOS_ID, PAD_ID, Vocabulary
from giot_engine.train import AdamW, train_windows
from giot_engine.zeek import FlowRow, iter_flow_rows

SEED = 23
DEFAULT_STEPS = 300
WINDOW = 64
BATCH = 256  # records per Detector.process_many call


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


def read_rows(path: str | os.PathLike[str], stats: ParseStats | None = None) -> list[FlowRow]:
    """Every row of a capture in file order (accepted and rejected)."""
    return list(iter_flow_rows(path, stats))


def _windows(seqs: Sequence[Sequence[list[int]]], length: int) -> np.ndarray:
    """Per-device flow sequences -> [BOS] + whole flows windows, half-overlapping, PAD-filled."""
    rows: list[list[int]] = []
    for flows in seqs:
        i = 0
        while i < len(flows):
            row, j = [BOS_ID], i
            while j < len(flows) and len(row) + len(flows[j]) <= length:
                row += flows[j]
                j += 1
            if j == i:
                break
            rows.append(row + [PAD_ID] * (length - len(row)))
            i = max(i + 1, (i + j) // 2) if j < len(flows) else len(flows)
    return np.asarray(rows, dtype=np.int64).reshape(-1, length)


def _train_giot(windows: np.ndarray, vocab_size: int, cfg: TrainConfig) -> TokenScorer:
    mcfg = GIoTConfig(
        vocab_size=vocab_size,
        n_positions=WINDOW,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
    )
    model = GIoTModel.init(mcfg, cfg.seed)
    mask = windows[:, 1:] != PAD_ID
    train_windows(model, windows, cfg.steps, cfg.batch_size, cfg.seed, AdamW(lr=cfg.lr), mask)
    return model.freeze()  # it only scores from here on, as a hub's model does


def train_detector(
    train_paths: Sequence[str | os.PathLike[str]],
    train_cfg: TrainConfig | None = None,
    det_cfg: DetectorConfig | None = None,
) -> Detector:
    """Fit the model and the signature head on the training captures; return a fresh detector."""
    tcfg = train_cfg or TrainConfig()
    vocab = Vocabulary.default()
    seqs: list[list[list[int]]] = []
    feats: list[np.ndarray] = []
    fams: list[str] = []
    for path in train_paths:
        view = Detector(BigramModel(np.zeros((1, 1))), config=det_cfg, vocab=vocab)
        per_device: dict[str, list[list[int]]] = {}
        for row in iter_flow_rows(path):
            if row.record is None:
                continue
            flow: FlowRecord = row.record
            device, ids, f = view.observe(flow)
            fam = family_of(flow.label, flow.detailed_label)
            feats.append(f)
            fams.append(fam)
            if fam == "benign":
                per_device.setdefault(device, []).append(ids)
        seqs.extend(per_device.values())
    windows = _windows(seqs, WINDOW)
    if tcfg.model == "bigram" or len(windows) == 0:
        model: TokenScorer = BigramModel.fit((w[w != PAD_ID] for w in windows), len(vocab))
    else:
        model = _train_giot(windows, len(vocab), tcfg)
    head = SignatureHead.fit(np.asarray(feats).reshape(len(feats), -1), fams)
    return Detector(model, head, det_cfg, vocab)


def score_rows(detector: Detector, rows: Sequence[FlowRow]) -> list[tuple[str, float | None, int]]:
    """(uid, score or None, alarm) for every row, in order."""
    out: list[tuple[str, float | None, int]] = []
    for lo in range(0, len(rows), BATCH):  # batches as a hub forms them; verdicts are the same
        chunk = rows[lo : lo + BATCH]
        verdicts = iter(detector.process_many([r.record for r in chunk if r.record is not None]))
        for row in chunk:
            if row.record is None:
                out.append((row.uid or "", None, 0))
                continue
            v = next(verdicts)
            out.append((row.record.uid or row.uid or "", round(float(v.score), 4), int(v.alarm)))
    return out


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
