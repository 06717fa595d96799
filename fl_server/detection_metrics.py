"""Detection metrics of EVALUATION.md, shared by GIoT and every baseline so numbers compare.

They live in the server world (not only in ``benchmarks``) because ``giot-server base-model``
measures the base model it builds with them, for its model card.

Windows: tumbling 60 s from the first scored flow; a window is malicious if any scored flow in it
is, alarms if any of its scored flows alarms, and scores the max of its scored flows' scores.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

WINDOW_S = 60.0
DAY_S = 86400.0


def auroc(labels: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney with tie correction); NaN when one class is absent."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def prf(truth: np.ndarray, pred: np.ndarray) -> tuple[float, float, float]:
    """Precision, recall, F1 (0 where undefined)."""
    tp = int((truth & pred).sum())
    fp = int((~truth & pred).sum())
    fn = int((truth & ~pred).sum())
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


@dataclass(frozen=True, slots=True)
class CaptureMetrics:
    """Per-capture numbers of the protocol."""

    windows: int
    malicious_windows: int
    window_precision: float
    window_recall: float
    window_f1: float
    window_auroc: float
    false_alarm_windows: int
    device_days: float
    fa_per_device_day: float
    flow_precision: float
    flow_recall: float
    flow_f1: float
    flow_auroc: float


def scored_mask(orig_h: Sequence[str], all_flows: bool) -> np.ndarray:
    """Which flows count: the main device's (most frequent originator), or all (honeypots)."""
    if all_flows or not orig_h:
        return np.ones(len(orig_h), dtype=bool)
    main = Counter(orig_h).most_common(1)[0][0]
    return np.asarray([h == main for h in orig_h], dtype=bool)


def capture_metrics(
    ts: np.ndarray,
    malicious: np.ndarray,
    scores: np.ndarray,
    alarms: np.ndarray,
    scored: np.ndarray,
) -> CaptureMetrics:
    """Window and flow metrics of one capture; rejected flows carry NaN ts/score and are skipped."""
    ok = scored & np.isfinite(ts)
    t, y = ts[ok], malicious[ok].astype(bool)
    s = np.where(np.isfinite(scores[ok]), scores[ok], -np.inf)
    a = alarms[ok].astype(bool)
    if len(t) == 0:
        nan = float("nan")
        return CaptureMetrics(0, 0, 0.0, 0.0, 0.0, nan, 0, 0.0, 0.0, 0.0, 0.0, 0.0, nan)
    w = ((t - t.min()) // WINDOW_S).astype(np.int64)
    uniq, inv = np.unique(w, return_inverse=True)
    n = len(uniq)
    w_mal = np.zeros(n, dtype=bool)
    w_alarm = np.zeros(n, dtype=bool)
    w_score = np.full(n, -np.inf)
    np.logical_or.at(w_mal, inv, y)
    np.logical_or.at(w_alarm, inv, a)
    np.maximum.at(w_score, inv, s)
    finite = np.isfinite(w_score)
    w_score = np.where(finite, w_score, (w_score[finite].min() - 1.0) if finite.any() else 0.0)
    wp, wr, wf = prf(w_mal, w_alarm)
    days = float(t.max() - t.min()) / DAY_S
    fa = int((w_alarm & ~w_mal).sum())
    fs = np.where(
        np.isfinite(s), s, (s[np.isfinite(s)].min() - 1.0) if np.isfinite(s).any() else 0.0
    )
    fp_, fr_, ff_ = prf(y, a)
    return CaptureMetrics(
        windows=n,
        malicious_windows=int(w_mal.sum()),
        window_precision=wp,
        window_recall=wr,
        window_f1=wf,
        window_auroc=auroc(w_mal, w_score),
        false_alarm_windows=fa,
        device_days=days,
        fa_per_device_day=fa / days if days > 0 else float(fa),
        flow_precision=fp_,
        flow_recall=fr_,
        flow_f1=ff_,
        flow_auroc=auroc(y, fs),
    )
