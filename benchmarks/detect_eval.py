"""Leave-one-capture-out detection benchmark on IoT-23 (EVALUATION.md), GIoT against baselines.

``scripts/bench detect-eval [--data DIR] [--methods giot,iforest,kitsune,rf]`` trains on all
captures but one, scores the held-out one flow by flow (GIoT through exactly the code of
``detect-score``), and reports per-capture and macro window precision / recall / F1, window AUROC,
false alarms per device-day on the benign captures and flow-level numbers, all from the one
``metrics`` module. Baselines see the same splits and the same per-flow features: Isolation Forest
and a Kitsune-style autoencoder (unsupervised, trained on the benign training flows) and a random
forest (supervised upper bound). Results go to docs/results/detection.md, followed by the
hand-written notes of docs/results/detection-notes.md (which re-runs leave alone).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.detect_score import (
    DEFAULT_STEPS,
    TrainConfig,
    read_rows,
    score_rows,
    train_detector,
)
from benchmarks.metrics import CaptureMetrics, capture_metrics, scored_mask
from giot_engine.detector import BigramModel, Detector, DetectorConfig
from giot_engine.records import FlowRecord
from giot_engine.signature import FEATURE_NAMES
from giot_engine.tokenizer import STATES, port_class
from giot_engine.zeek import FlowRow

ROOT = Path(__file__).resolve().parents[1]
Scores = tuple[np.ndarray, np.ndarray]  # per-row score (NaN for rejected), alarm


def captures(data: Path) -> list[Path]:
    """List the development captures (CSV extracts; the Zeek copy of 34-1 is the same capture)."""
    return sorted((data / "iot23" / "csv").glob("*.csv"))


def is_honeypot(path: Path) -> bool:
    """Benign multi-host captures, where every flow is scored (evaluation only, never a feature)."""
    return "honeypot" in path.name.lower()


def flow_features(rows: Sequence[FlowRow]) -> np.ndarray:
    """Per-flow features for the baselines.

    The flow's own fields plus the same causal behaviour features the signature head sees, so the
    baselines are not handicapped.
    """
    view = Detector(BigramModel(np.zeros((1, 1))))
    out = []
    classes = ["dns", "ntp", "http", "https", "telnet", "wk", "reg", "eph"]
    for row in rows:
        f: FlowRecord | None = row.record
        if f is None:
            out.append(np.full(len(FEATURE_NAMES) + 10 + len(STATES) + len(classes), np.nan))
            continue
        _, _, beh = view.observe(f)
        own = [
            np.log1p(f.duration or 0.0),
            np.log1p(f.orig_bytes or 0),
            np.log1p(f.resp_bytes or 0),
            np.log1p(f.orig_pkts or 0),
            np.log1p(f.resp_pkts or 0),
            np.log1p(f.orig_ip_bytes or 0),
            np.log1p(f.resp_ip_bytes or 0),
            float(f.proto == "tcp"),
            float(f.proto == "udp"),
            float(f.proto == "icmp"),
        ]
        state = [float(f.conn_state == s) for s in STATES]
        pc = port_class(f.resp_p)
        svc = [float(pc == c) for c in classes]
        out.append(np.concatenate([beh, own, state, svc]))
    return np.asarray(out)


def _labels(rows: Sequence[FlowRow]) -> np.ndarray:
    return np.asarray(
        [r.record is not None and (r.record.label or "").lower() == "malicious" for r in rows]
    )


def run_giot(
    train: Sequence[Path],
    test_rows: Sequence[FlowRow],
    tcfg: TrainConfig,
    det_cfg: DetectorConfig | None = None,
) -> Scores:
    """GIoT exactly as ``detect-score`` runs it."""
    det = train_detector(train, tcfg, det_cfg)
    res = score_rows(det, test_rows)
    score = np.asarray([np.nan if s is None else s for _, s, _ in res], dtype=np.float64)
    return score, np.asarray([a for _, _, a in res], dtype=bool)


def _baseline(kind: str) -> Callable[[Sequence[Path], Sequence[FlowRow]], Scores]:
    def run(train: Sequence[Path], test_rows: Sequence[FlowRow]) -> Scores:
        from sklearn.ensemble import IsolationForest, RandomForestClassifier  # noqa: PLC0415
        from sklearn.neural_network import MLPRegressor  # noqa: PLC0415
        from sklearn.preprocessing import StandardScaler  # noqa: PLC0415

        tr_rows = [r for p in train for r in read_rows(p)]
        xs, ys = [], []
        for p in train:
            rows = read_rows(p)
            x = flow_features(rows)
            ok = np.isfinite(x).all(axis=1)
            xs.append(x[ok])
            ys.append(_labels(rows)[ok])
        del tr_rows
        x_tr, y_tr = np.vstack(xs), np.concatenate(ys)
        x_te = flow_features(test_rows)
        ok = np.isfinite(x_te).all(axis=1)
        score = np.full(len(test_rows), np.nan)
        alarm = np.zeros(len(test_rows), dtype=bool)
        sc = StandardScaler().fit(x_tr[~y_tr])
        if kind == "iforest":
            m = IsolationForest(n_estimators=100, random_state=0).fit(sc.transform(x_tr[~y_tr]))
            s = -m.score_samples(sc.transform(x_te[ok]))
            thr = float(np.quantile(-m.score_samples(sc.transform(x_tr[~y_tr])), 0.99))
        elif kind == "kitsune":
            z = sc.transform(x_tr[~y_tr])
            ae = MLPRegressor(hidden_layer_sizes=(8,), max_iter=300, random_state=0).fit(z, z)
            err_tr = ((ae.predict(z) - z) ** 2).mean(axis=1)
            zt = sc.transform(x_te[ok])
            s = ((ae.predict(zt) - zt) ** 2).mean(axis=1)
            thr = float(np.quantile(err_tr, 0.99))
        else:
            rf = RandomForestClassifier(n_estimators=100, random_state=0, n_jobs=1)
            rf.fit(x_tr, y_tr)
            proba = rf.predict_proba(x_te[ok])
            s = proba[:, list(rf.classes_).index(True)] if True in rf.classes_ else proba[:, 0] * 0
            thr = 0.5
        score[ok] = s
        alarm[ok] = s > thr
        return score, alarm

    return run


def evaluate(
    paths: Sequence[Path],
    methods: Sequence[str],
    tcfg: TrainConfig,
    det_cfg: DetectorConfig | None = None,
) -> dict[str, dict[str, CaptureMetrics]]:
    """Leave-one-capture-out over ``paths`` for every method."""
    results: dict[str, dict[str, CaptureMetrics]] = {m: {} for m in methods}
    for held in paths:
        train = [p for p in paths if p != held]
        rows = read_rows(held)
        ts = np.asarray([r.record.ts if r.record else np.nan for r in rows])
        hosts = [r.record.orig_h if r.record else "" for r in rows]
        mask = scored_mask(hosts, is_honeypot(held)) & np.isfinite(ts)
        y = _labels(rows)
        for m in methods:
            t0 = time.perf_counter()
            if m == "giot":
                score, alarm = run_giot(train, rows, tcfg, det_cfg)
            else:
                score, alarm = _baseline(m)(train, rows)
            results[m][held.name] = capture_metrics(ts, y, score, alarm, mask)
            print(
                f"{m:8s} {held.name}: {results[m][held.name]} ({time.perf_counter() - t0:.1f}s)",
                file=sys.stderr,
            )
    return results


def _f(x: float) -> str:
    return "n/a" if np.isnan(x) else f"{x:.3f}"


def render(
    results: dict[str, dict[str, CaptureMetrics]],
    command: str,
    seconds: float,
    setup: str = "",
) -> str:
    """Markdown report."""
    lines = [
        "# Detection on IoT-23: leave one capture out (EVALUATION.md protocol)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}; wall time {seconds:.0f} s.",
        "",
        "## Headline",
        "",
        "| method | macro window F1 (captures with attacks) | macro window AUROC "
        "| false alarms / device-day on benign captures (pooled) |",
        "|---|---|---|---|",
    ]
    for m, per in results.items():
        attacked = [c for c in per.values() if c.malicious_windows > 0]
        benign = [c for c in per.values() if c.malicious_windows == 0]
        f1 = float(np.mean([c.window_f1 for c in attacked])) if attacked else float("nan")
        au = float(np.nanmean([c.window_auroc for c in attacked])) if attacked else float("nan")
        days = sum(c.device_days for c in benign)
        fa = sum(c.false_alarm_windows for c in benign)
        lines.append(
            f"| {m} | {_f(f1)} | {_f(au)} | {_f(fa / days if days else float('nan'))} "
            f"({fa} in {days:.2f} device-days) |"
        )
    lines += [
        "",
        "## Per capture",
        "",
        "| method | capture | windows (malicious) | window P | R | F1 | window AUROC "
        "| false-alarm windows | FA / device-day | flow P | R | F1 | flow AUROC |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m, per in results.items():
        for name, c in per.items():
            lines.append(
                f"| {m} | {name} | {c.windows} ({c.malicious_windows}) | {_f(c.window_precision)} "
                f"| {_f(c.window_recall)} | {_f(c.window_f1)} | {_f(c.window_auroc)} "
                f"| {c.false_alarm_windows} | {_f(c.fa_per_device_day)} | {_f(c.flow_precision)} "
                f"| {_f(c.flow_recall)} | {_f(c.flow_f1)} | {_f(c.flow_auroc)} |"
            )
    if setup:
        lines += ["", "## Setup", "", setup]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    ap = argparse.ArgumentParser(prog="scripts/bench detect-eval", description=__doc__)
    ap.add_argument(
        "--data", default=os.environ.get("GIOT_DATA", str(ROOT.parent / "shared" / "data"))
    )
    ap.add_argument("--methods", default="giot,iforest,kitsune,rf")
    ap.add_argument("--model", choices=("giot", "bigram"), default="giot")
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    ap.add_argument(
        "--train-set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a TrainConfig field (e.g. n_embd=64); repeatable",
    )
    ap.add_argument("--warmup", type=int, default=DetectorConfig().warmup)
    ap.add_argument("--signature-in-warmup", action="store_true")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a DetectorConfig field (e.g. k_on=2); repeatable",
    )
    ap.add_argument(
        "--carry-tokens",
        type=int,
        default=DetectorConfig().carry_tokens,
        help="tokens a device's KV-cached window starts with (56: a sliding window)",
    )
    ap.add_argument(
        "--late-switches-on",
        action="store_true",
        help="let records that started before the window switch a device on (the old behaviour)",
    )
    ap.add_argument(
        "--notes",
        default=str(ROOT / "docs" / "results" / "detection-notes.md"),
        help="hand-written notes appended to the report (kept across re-runs)",
    )
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "detection.md"))
    args = ap.parse_args(argv)
    paths = captures(Path(args.data))
    if not paths:
        print(f"no IoT-23 captures under {args.data}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    det_cfg = DetectorConfig(
        warmup=args.warmup,
        signature_in_warmup=args.signature_in_warmup,
        fresh_only=not args.late_switches_on,
        carry_tokens=args.carry_tokens,
    )
    for item in args.set:
        name, _, value = item.partition("=")
        kind = type(getattr(det_cfg, name))
        parsed: Any = value.lower() in {"1", "true", "yes"} if kind is bool else kind(value)
        det_cfg = dataclasses.replace(det_cfg, **{name: parsed})
    tcfg = TrainConfig(model=args.model, steps=args.steps)
    for item in args.train_set:
        name, _, value = item.partition("=")
        tcfg = dataclasses.replace(tcfg, **{name: type(getattr(tcfg, name))(value)})
    results = evaluate(paths, args.methods.split(","), tcfg, det_cfg)
    cmd = "scripts/bench detect-eval " + " ".join(argv if argv is not None else sys.argv[1:])
    setup = (
        f"GIoT: model `{args.model}` ({tcfg}) trained "
        "on the benign-labelled flows of the training captures; signature head on all their "
        f"flows (families from detailed labels); detector `{det_cfg}`. Captures: "
        + ", ".join(p.name for p in paths)
        + ". Baselines: per-flow fields + the same causal behaviour features; Isolation Forest "
        "and autoencoder (MLPRegressor 8 hidden units) fitted on benign training flows, alarm "
        "above their 99th training percentile; random forest (100 trees) on all labelled flows."
    )
    text = render(results, cmd.strip(), time.perf_counter() - t0, setup)
    notes = Path(args.notes)
    if notes.is_file():
        text += "\n" + notes.read_text(encoding="utf-8")
    Path(args.out).write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
