"""The base model every hub starts from: the GIoT model and the known-attack head, with a card.

``giot-server base-model --data DIR`` builds it from the labelled IoT-23 captures under
``DIR/iot23`` (and benign home event logs, if given) as a directory in Hugging Face layout
(``giot_engine.artifact``): the federation's round 0, and (``scripts/build-base-model``, in
float16) the small copy shipped inside the integration for hubs without a node.

``fit`` is the one training recipe, shared with ``scripts/bench detect-score``:

- the GIoT model learns the benign-labelled flows of the training captures, per device, as
  half-overlapping windows of [BOS] + whole flows, plus the device events of the home logs
  given (a hub's model scores both);
- the signature head (stage 1, known attack families) learns every labelled flow's behaviour
  features, its family from the detailed label.

The card's figures are measured the way a hub would see them, leave one capture out: a model
fitted exactly so on every capture but one held-out capture, rounded to the stored precision,
scoring as a hub scores at first start (``BlendScorer`` with empty bigram counts) through the
engine's ``Detector``, with ``detection_metrics`` (the protocol of EVALUATION.md).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fl_server.detection_metrics import CaptureMetrics, capture_metrics, scored_mask
from fl_server.signing import sign_artifact
from fl_server.simulation.corpus import iot23_files
from giot_engine.artifact import (
    CARD_FILE,
    HEAD_FILE,
    META_FILE,
    TOKENIZER_FILE,
    arrays_digest,
    write_head,
    write_manifest,
)
from giot_engine.context import TokenScorer
from giot_engine.detector import BigramModel, Detector, DetectorConfig
from giot_engine.home_events import detect_format, load_home
from giot_engine.model import GIoTConfig, GIoTModel
from giot_engine.model_manager import (
    N_EMBD,
    N_HEAD,
    N_LAYER,
    N_POSITIONS,
    BlendScorer,
    limit_blas_threads,
)
from giot_engine.persist import atomic_write_dir
from giot_engine.records import FlowRecord, ParseStats
from giot_engine.signature import FAMILIES, SignatureHead, family_of
from giot_engine.tokenizer import BOS_ID, PAD_ID, Vocabulary
from giot_engine.train import AdamW, train_windows
from giot_engine.zeek import FlowRow, iter_flow_rows

SEED = 23
STEPS = 300
BATCH = 256  # records per Detector.process_many call while scoring

IOT23_ATTRIBUTION = (
    "IoT-23, Stratosphere Laboratory, Czech Technical University in Prague: Sebastian Garcia, "
    "Agustin Parmisano, Maria Jose Erquiaga (2020), *IoT-23: A labeled dataset with malicious "
    "and benign IoT network traffic*, Zenodo, doi:10.5281/zenodo.4743746. Licence: Creative "
    "Commons Attribution 4.0 International (CC BY 4.0)."
)
# Home event logs the builder recognises (``home_events.detect_format``), with their terms as
# their publishers state them: the card repeats them for the model built from them.
CORPORA = {
    "casas": (
        "WSU CASAS smart home data set (Cook et al., Washington State University)",
        "CASAS terms: internal use only, do not redistribute",
    ),
    "ordonez": (
        "Activities of Daily Living (Ordonez, de Toledo, Sanchis 2013; UCI repository)",
        "non-commercial use (the data set's README)",
    ),
    "kasteren": (
        "van Kasteren, Noulas, Englebienne, Kroese, Accurate activity recognition in a home "
        "setting, UbiComp 2008",
        "academic use, cite the paper",
    ),
    "tapia": (
        "Tapia, Intille, Larson, Activity recognition in the home using simple and ubiquitous "
        "sensors, Pervasive 2004 (MIT)",
        "academic use, cite the paper",
    ),
    "ha_recording": ("a Home Assistant recording", "as given by whoever recorded it"),
}


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """How the GIoT model is fitted; the defaults build the hub's model (``model_manager``)."""

    model: str = "giot"  # "giot" (numpy GPT-2) or "bigram" (counts; fast fallback)
    steps: int = STEPS
    batch_size: int = 16
    lr: float = 3e-3
    seed: int = SEED
    n_embd: int = N_EMBD
    n_layer: int = N_LAYER
    n_head: int = N_HEAD
    window: int = N_POSITIONS  # training window in tokens, the model's n_positions


@dataclass
class Source:
    """What one training source gave: a capture's flows by family, or a home log's events."""

    name: str
    kind: str  # "iot23" | a home_events format
    records: int = 0
    families: Counter[str] = field(default_factory=Counter)


@dataclass
class Fitted:
    """A fitted model and head, and what they learnt from."""

    model: TokenScorer
    head: SignatureHead
    sources: list[Source]
    windows: int


def read_rows(path: str | os.PathLike[str], stats: ParseStats | None = None) -> list[FlowRow]:
    """Every row of a capture in file order (accepted and rejected)."""
    return list(iter_flow_rows(path, stats))


def windows_of(seqs: Sequence[Sequence[list[int]]], length: int) -> np.ndarray:
    """Per-device record sequences -> [BOS] + whole records rows, half-overlapping, PAD-filled."""
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


def train_giot(windows: np.ndarray, vocab_size: int, cfg: TrainConfig) -> GIoTModel:
    """Fit a fresh GIoT model on ``windows`` (padding not learnt); frozen, as a hub scores."""
    mcfg = GIoTConfig(
        vocab_size=vocab_size,
        n_positions=cfg.window,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
    )
    model = GIoTModel.init(mcfg, cfg.seed)
    mask = windows[:, 1:] != PAD_ID
    train_windows(model, windows, cfg.steps, cfg.batch_size, cfg.seed, AdamW(lr=cfg.lr), mask)
    return model.freeze()


def fit(
    train_paths: Sequence[str | os.PathLike[str]],
    cfg: TrainConfig | None = None,
    det_cfg: DetectorConfig | None = None,
    *,
    homes: Sequence[str | os.PathLike[str]] = (),
    max_flows: int | None = None,
) -> Fitted:
    """Fit the GIoT model and the signature head on captures (and benign home logs).

    Records are prepared by the detector's own code (``Detector.observe``), so training sees
    exactly the tokens and features a hub computes. ``max_flows`` bounds the flows read from
    each capture (its first ones).
    """
    tcfg = cfg or TrainConfig()
    vocab = Vocabulary.default()
    seqs: list[list[list[int]]] = []
    feats: list[np.ndarray] = []
    fams: list[str] = []
    sources: list[Source] = []
    for path in train_paths:
        view = Detector(BigramModel(np.zeros((1, 1))), config=det_cfg, vocab=vocab)
        per_device: dict[str, list[list[int]]] = {}
        source = Source(Path(path).name, "iot23")
        for row in iter_flow_rows(path):
            if row.record is None:
                continue
            if max_flows is not None and source.records >= max_flows:
                break
            flow: FlowRecord = row.record
            device, ids, f = view.observe(flow)
            fam = family_of(flow.label, flow.detailed_label)
            feats.append(f)
            fams.append(fam)
            source.records += 1
            source.families[fam] += 1
            if fam == "benign":
                per_device.setdefault(device, []).append(ids)
        seqs.extend(per_device.values())
        sources.append(source)
    for home in homes:
        kind = detect_format(home) or "unknown"
        source = Source(Path(home).name, kind)
        view = Detector(BigramModel(np.zeros((1, 1))), config=det_cfg, vocab=vocab)
        per_device = {}
        for event in load_home(home, ParseStats()):
            device, ids = view.observe_event(event)
            per_device.setdefault(device, []).append(ids)
            source.records += 1
        source.families["benign"] = source.records
        seqs.extend(per_device.values())
        sources.append(source)
    windows = windows_of(seqs, tcfg.window)
    if tcfg.model == "bigram" or len(windows) == 0:
        model: TokenScorer = BigramModel.fit((w[w != PAD_ID] for w in windows), len(vocab))
    else:
        model = train_giot(windows, len(vocab), tcfg)
    head = SignatureHead.fit(np.asarray(feats).reshape(len(feats), -1), fams)
    return Fitted(model, head, sources, len(windows))


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


def hub_detector(model: GIoTModel, head: SignatureHead, dtype: str = "F32") -> Detector:
    """Build the detector a hub runs at first start with this model and head, stored at ``dtype``.

    A hub scores a base model blended with its bigram counts, which are empty then
    (``ModelManager``), and keeps the weights as stored (float16 rounds them).
    """
    params = {k: np.array(v, np.float32) for k, v in model.params.items()}
    if dtype == "F16":
        params = {k: v.astype(np.float16).astype(np.float32) for k, v in params.items()}
    vocab = Vocabulary.default()
    scorer = BlendScorer(
        GIoTModel(model.config, params).freeze(),
        BigramModel(np.zeros((len(vocab), len(vocab)))),
    )
    return Detector(scorer, head, vocab=vocab)


def is_honeypot(path: str | os.PathLike[str]) -> bool:
    """Benign multi-host captures, where every flow is scored (evaluation only, never a feature)."""
    return "honeypot" in Path(path).name.lower()


def measure(detector: Detector, path: str | os.PathLike[str]) -> CaptureMetrics:
    """Score a held-out capture flow by flow and measure it (EVALUATION.md protocol)."""
    rows = read_rows(path)
    ts = np.asarray([r.record.ts if r.record else np.nan for r in rows])
    hosts = [r.record.orig_h if r.record else "" for r in rows]
    mask = scored_mask(hosts, is_honeypot(path)) & np.isfinite(ts)
    labels = np.asarray(
        [r.record is not None and (r.record.label or "").lower() == "malicious" for r in rows]
    )
    res = score_rows(detector, rows)
    score = np.asarray([np.nan if s is None else s for _, s, _ in res], dtype=np.float64)
    alarm = np.asarray([a for _, _, a in res], dtype=bool)
    return capture_metrics(ts, labels, score, alarm, mask)


def pick_holdout(paths: Sequence[Path], wanted: str | None) -> Path | None:
    """Choose the capture the card's figures are measured on.

    ``wanted``: a part of its name, or "none". By default the smallest capture with labelled
    attacks, if another capture with attacks remains to train the head; else the smallest
    benign one; never the only capture.
    """
    if wanted == "none" or len(paths) < 2:
        return None
    if wanted:
        matches = [p for p in paths if wanted.lower() in p.name.lower()]
        if len(matches) != 1:
            raise ValueError(f"--holdout {wanted!r} matches {len(matches)} captures")
        return matches[0]
    counts = {p: _label_counts(p) for p in paths}
    attacked = sorted((c.total(), p.name, p) for p, c in counts.items() if c["malicious"])
    if len(attacked) >= 2:
        return attacked[0][2]
    benign = sorted((c.total(), p.name, p) for p, c in counts.items() if not c["malicious"])
    return benign[0][2] if benign else None


def _label_counts(path: Path) -> Counter[str]:
    out: Counter[str] = Counter()
    for row in iter_flow_rows(path):
        if row.record is not None:
            out["malicious" if (row.record.label or "").lower() == "malicious" else "benign"] += 1
    return out


@dataclass(frozen=True)
class BuildOptions:
    """What ``giot-server base-model`` was asked."""

    data: Path
    out: Path
    seed: int = SEED
    steps: int = STEPS
    max_flows: int | None = None
    holdout: str | None = None  # part of a capture's name, "none", or None (automatic)
    homes: tuple[Path, ...] = ()
    dtype: str = "F32"  # "F16": the copy shipped inside the integration
    command: str = "giot-server base-model"


@dataclass(frozen=True)
class Built:
    """The artifact written, its name and the figures in its card."""

    directory: Path
    version: str
    holdout: str | None
    metrics: CaptureMetrics | None
    files: dict[str, int]
    parameters: int


def build(opts: BuildOptions, key: Ed25519PrivateKey | None) -> Built:
    """Measure on the held-out capture, fit on all captures, write (and sign) the artifact."""
    limit_blas_threads()  # one thread: faster for these sizes, and the same sums every run
    captures = iot23_files(opts.data / "iot23")
    if not captures:
        raise FileNotFoundError(f"no IoT-23 captures under {opts.data / 'iot23'}")
    cfg = TrainConfig(seed=opts.seed, steps=opts.steps)
    held = pick_holdout(captures, opts.holdout)
    metrics = None
    if held is not None:
        trial = fit(
            [p for p in captures if p != held], cfg, homes=opts.homes, max_flows=opts.max_flows
        )
        assert isinstance(trial.model, GIoTModel)
        metrics = measure(hub_detector(trial.model, trial.head, opts.dtype), held)
    fitted = fit(captures, cfg, homes=opts.homes, max_flows=opts.max_flows)
    model = fitted.model
    if not isinstance(model, GIoTModel):
        raise ValueError("no benign flows or events to train the GIoT model on")
    stored = hub_detector(model, fitted.head, opts.dtype).model
    assert isinstance(stored, BlendScorer)
    version = f"base-{arrays_digest(stored.model.params)[:12]}"
    sizes: dict[str, int] = {}

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp, dtype=opts.dtype)
        (tmp / TOKENIZER_FILE).write_text(json.dumps(Vocabulary.default().to_tokenizers_json()))
        write_head(tmp / HEAD_FILE, fitted.head)
        sizes.update({p.name: p.stat().st_size for p in sorted(tmp.iterdir())})
        meta = _meta(version, opts, cfg, fitted, held, metrics)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
        (tmp / CARD_FILE).write_text(_card(version, opts, cfg, fitted, held, metrics, sizes))
        write_manifest(tmp, version)
        if key is not None:
            sign_artifact(tmp, key)

    atomic_write_dir(opts.out, fill)
    return Built(
        opts.out, version, held.name if held else None, metrics, sizes, model.num_parameters()
    )


def _figures(m: CaptureMetrics) -> dict[str, float | int]:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(m).items()}


def _meta(  # noqa: PLR0917 (what giot.json records)
    version: str,
    opts: BuildOptions,
    cfg: TrainConfig,
    fitted: Fitted,
    held: Path | None,
    metrics: CaptureMetrics | None,
) -> dict[str, Any]:
    return {
        "version": version,
        "origin": "base",
        "vocab": Vocabulary.default().version,
        "dtype": opts.dtype,
        "train": {k: v for k, v in asdict(cfg).items() if k != "model"},
        "max_flows": opts.max_flows,
        "windows": fitted.windows,
        "sources": [
            {"name": s.name, "kind": s.kind, "records": s.records, "families": dict(s.families)}
            for s in fitted.sources
        ],
        "signature_head": {"families": list(FAMILIES), "trained": fitted.head.trained},
        "evaluation": None
        if held is None or metrics is None
        else {"held_out": held.name, "metrics": _figures(metrics)},
    }


def _card(  # noqa: PLR0917 (everything the card says)
    version: str,
    opts: BuildOptions,
    cfg: TrainConfig,
    fitted: Fitted,
    held: Path | None,
    metrics: CaptureMetrics | None,
    sizes: dict[str, int],
) -> str:
    homes = [s for s in fitted.sources if s.kind != "iot23"]
    captures = [s for s in fitted.sources if s.kind == "iot23"]
    licence = "cc-by-4.0" if not homes else "other"
    datasets = ["iot-23", *(s.kind for s in homes)]
    parameters = sum(int(np.prod(s)) for s in _shapes(fitted))
    weights = "float16 (loads as float32)" if opts.dtype == "F16" else "float32"
    lines = [
        "---",
        f"license: {licence}",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "datasets:",
        *(f"- {d}" for d in datasets),
        "tags:",
        "- giot",
        "- gpt2",
        "- anomaly-detection",
        "- iot",
        "- home-assistant",
        "---",
        "",
        f"# GIoT base model `{version}`",
        "",
        "The model every GIoT hub starts from: the GIoT model (a small GPT-2 over flow and event "
        "tokens; stage 2, generative surprise) and the signature head of the known-attack stage "
        "(stage 1: port scan, C&C, flood, file download), trained on public labelled captures. "
        "It is round 0 of the federation and the model a hub without a node detects with.",
        "",
        "## Intended use",
        "",
        "- Scoring a home's network flows and device events in the GIoT Home Assistant "
        "integration (numpy engine) until the home and the federation have taught it better.",
        "- Naming known attack families from behaviour (counts, rates, failures, regularity over "
        "a device's last minute), whatever protocol a device uses.",
        "- Not a product certification: it saw a few lab devices and malware families only "
        "(see Training data and Limitations).",
        "",
        "## Model",
        "",
        f"- GPT-2 layout (`config.json`, transformers `GPT2LMHeadModel`): {cfg.n_layer} layers, "
        f"width {cfg.n_embd}, {cfg.n_head} heads, {cfg.window} positions, vocabulary of "
        f"{len(Vocabulary.default())} tokens (`{Vocabulary.default().version}`), tied "
        f"embeddings; {parameters:,} parameters, weights in {weights}.",
        f"- Signature head (`{HEAD_FILE}`): multinomial logistic regression over "
        f"{fitted.head.weights.shape[0] - 1} behaviour features, families {', '.join(FAMILIES)}"
        f" ({'trained' if fitted.head.trained else 'untrained: no labelled attacks'}).",
        "- Files and sizes (bytes): "
        + ", ".join(f"`{name}` {size:,}" for name, size in sizes.items())
        + f"; {sum(sizes.values()):,} in all, besides this card, `{META_FILE}` and the manifest.",
        "",
        "## Training data",
        "",
        f"Trained with seed {cfg.seed}: {cfg.steps} AdamW steps (batch {cfg.batch_size}, lr "
        f"{cfg.lr}) on {fitted.windows:,} windows of benign records; the head on every labelled "
        "flow." + (f" At most {opts.max_flows:,} flows per capture." if opts.max_flows else ""),
        "",
        "| source | records | by family |",
        "|---|---|---|",
        *(
            f"| {s.name} | {s.records:,} | "
            + ", ".join(f"{k} {v:,}" for k, v in sorted(s.families.items()))
            + " |"
            for s in fitted.sources
        ),
        "",
        "Licences and attribution:",
        "",
        f"- {IOT23_ATTRIBUTION} This model is derived from it ({len(captures)} captures); "
        "no flow of it is included.",
        *(
            f"- {CORPORA.get(s.kind, (s.name, 'unknown'))[0]} ({s.name}): "
            f"{CORPORA.get(s.kind, (s.name, 'terms unknown'))[1]}."
            for s in homes
        ),
        "",
        "## Evaluation",
        "",
        *_evaluation(held, metrics, opts),
        "",
        "## Limitations",
        "",
        "- Lab captures: the infected devices' benign traffic is almost only DNS and NTP; benign "
        "TCP comes from few devices. Each home calibrates per device before surprise alarms.",
        "- Families absent from the training captures are not named by the head; the "
        "generative stage still finds what is new for a device.",
        "- IoT-23 labels are noisy (benign-labelled flows to C&C hosts); they were not edited.",
        "",
        "## Integrity",
        "",
        "`MANIFEST.json` lists the sha256 of every other file; `MANIFEST.sig` (when present) is "
        "the server's Ed25519 signature of `MANIFEST.json`'s bytes, checked by the ServerApp "
        "against the server's key before the model becomes round 0. Global models published "
        "later carry a signature of their tensors, checked by each hub with the key it learnt "
        "at pairing.",
        "",
        f"Built by `{opts.command}`.",
        "",
    ]
    return "\n".join(lines)


def _evaluation(held: Path | None, m: CaptureMetrics | None, opts: BuildOptions) -> list[str]:
    if held is None or m is None:
        return ["Not measured: no capture could be held out."]
    what = "all its flows (a honeypot)" if is_honeypot(held) else "its main device's flows"
    return [
        f"Leave one capture out: a model fitted exactly as this one on every capture but "
        f"`{held.name}` (seed {opts.seed}, {opts.steps} steps, the same precision), scoring as a "
        "hub does at first start (the model blended with empty bigram counts, default "
        f"`DetectorConfig`) through the engine's `Detector`, over {what} "
        f"({m.windows:,} one-minute windows, {m.malicious_windows:,} with attacks, "
        f"{m.device_days:.2f} device-days). Protocol: EVALUATION.md of the GIoT project.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| window precision / recall / F1 | {m.window_precision:.3f} / {m.window_recall:.3f} / "
        f"{m.window_f1:.3f} |",
        f"| window AUROC | {_num(m.window_auroc)} |",
        f"| false-alarm windows (per device-day) | {m.false_alarm_windows} "
        f"({m.fa_per_device_day:.2f}) |",
        f"| flow precision / recall / F1 | {m.flow_precision:.3f} / {m.flow_recall:.3f} / "
        f"{m.flow_f1:.3f} |",
        f"| flow AUROC | {_num(m.flow_auroc)} |",
        "",
        "One capture of a few lab devices: a figure for this model on this capture, not a "
        "promise for a home.",
    ]


def _num(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.3f}"  # NaN: one class absent


def _shapes(fitted: Fitted) -> list[tuple[int, ...]]:
    model = fitted.model
    return [p.shape for p in model.params.values()] if isinstance(model, GIoTModel) else []
