"""What the GIoT model costs on one CPU core: flows/s, FLOP/s against peak, training, memory.

scripts/bench cost             # the brief's default config, all runtimes (~30 s)
scripts/bench cost --sweep     # plus a numpy sweep of widths/layers/heads/tokens (~1 min)
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy/torch load a BLAS: single-core numbers

import argparse  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from giot_engine.model import GIoTConfig, GIoTModel  # noqa: E402
from giot_engine.train import AdamW, train_windows  # noqa: E402

TARGET_FLOWS, TARGET_FRACTION = 5_000, 0.5
METHOD = """\
A hub scores each flow in its device's context as it arrives. Protocol: windows of
`context_flows` flows of `tokens_per_flow` tokens per device; flow k of a window is scored given
the k flows before it, then the window starts again, so every runtime computes the same tokens
(useful FLOPs: every GEMM, attention over the keys each token sees, and the tied LM head on the
rows whose next token is scored). numpy scores streaming with the KV cache
(`GIoTModel.score_append`: each arriving flow computes only its own tokens, many devices'
flows batched into one GEMM); numpy, torch and ONNX Runtime also score whole windows
(`token_nll`, logits), which needs the whole window first. Times are process CPU time
(`time.process_time`), best of repeats, one thread (OpenBLAS/OMP threads = 1,
`torch.set_num_threads(1)`, ORT intra-op threads = 1): other load on the shared machine does not
count, though it still shares caches, so repeated runs vary by about +-10%."""
NOTES = """\
How the streaming scorer gets there (each step measured while developing, C=64 L=2 t=12, 512
devices): a straightforward numpy forward reaches ~30% of peak; reusing work buffers instead of
fresh large arrays per op removed page faults worth ~30% of the time (this VM faults expensively
on fresh memory); LayerNorm means as a GEMV instead of `mean(axis=1)` (7x faster on 64-wide rows);
softmax without the row max (`max(axis=-1)` over short rows costs more than the GEMMs; an
over/underflow check falls back to the safe form); the softmax denominator as a GEMV and the
normalisation applied to the scores before `p @ v`; LayerNorm affines and the attention scale
folded into the GEMM weights, the key bias dropped (it cancels in the softmax) and the value bias
moved behind the projection; exp2 on base-2 scores and logits and gelu as a / (1 + 2^-2z log2 e)
(numpy's float32 exp2 is twice as fast as exp and tanh); the LM head only on scored rows, with
log-sum-exp as exp2 + GEMV (a bound on |logit| from the weights makes the max subtraction
unnecessary); 1024-token chunks (best of 256-2048, within a few %). Together ~50% of peak at
C=64; what is left is elementwise work numpy cannot fuse (gelu, LayerNorm, exp) and ~200 ns per
small attention GEMM per head, which is why wider models reach a larger fraction of peak."""
RECOMMENDED = {"width": 64, "layers": 2, "heads": 2, "tokens_per_flow": 7, "context_flows": 9}


@dataclass(frozen=True)
class Setup:
    """One model/protocol configuration."""

    width: int
    layers: int
    heads: int
    vocab: int
    tokens_per_flow: int
    context_flows: int

    @property
    def window(self) -> int:
        """Tokens of one device window."""
        return self.tokens_per_flow * self.context_flows

    def config(self) -> GIoTConfig:
        """Model config whose positions hold exactly one window."""
        return GIoTConfig(
            vocab_size=self.vocab,
            n_positions=self.window,
            n_embd=self.width,
            n_layer=self.layers,
            n_head=self.heads,
        )

    def flops_per_flow(self) -> float:
        """Count useful FLOPs (2 per multiply-add) per flow: GEMMs, attention, scored head rows."""
        c, n, t = self.width, self.layers, self.window
        gemm = 24 * c * c * n * t  # qkv 3c^2, proj c^2, fc 4c^2, out 4c^2 per token and layer
        attention = sum(4 * c * (p + 1) * n for p in range(t))  # q.k and p.v over p+1 keys
        head = 2 * c * self.vocab * (t - 1)  # the first token of a window has no prediction
        return (gemm + attention + head) / self.context_flows

    def label(self) -> str:
        """Short name for tables."""
        return (
            f"C={self.width} L={self.layers} H={self.heads} V={self.vocab} "
            f"t={self.tokens_per_flow} F={self.context_flows}"
        )


def scoring(model: GIoTModel) -> GIoTModel:
    """Return a frozen copy: a hub scores with a frozen model (folded once, model_manager)."""
    return GIoTModel(model.config, {k: v.copy() for k, v in model.params.items()}).freeze()


def cpu_seconds(fn: Callable[[], object], min_total: float, min_reps: int = 3) -> float:
    """Best CPU time of one call of ``fn`` over repeats totalling at least ``min_total``."""
    fn()  # warm-up: first-touch allocations, BLAS buffers
    best, total, reps = math.inf, 0.0, 0
    while reps < min_reps or total < min_total:
        c0 = time.process_time()
        fn()
        cpu = time.process_time() - c0
        best, total, reps = min(best, cpu), total + cpu, reps + 1
    return best


def gemm_peak(n: int, seconds: float) -> float:
    """Single-core float32 GEMM rate (GFLOP/s) of a large square product."""
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), np.float32), rng.random((n, n), np.float32)
    out = np.empty((n, n), np.float32)
    best = cpu_seconds(lambda: np.matmul(a, b, out=out), seconds, min_reps=5)
    return 2 * n**3 / best / 1e9


def flows(setup: Setup, devices: int, seed: int = 0) -> np.ndarray:
    """Random token ids (devices, window): cost does not depend on the values."""
    return np.random.default_rng(seed).integers(0, setup.vocab, (devices, setup.window))


def stream_cycle(model: GIoTModel, setup: Setup, devices: int) -> Callable[[], None]:
    """One window per device, each flow scored on arrival with the KV cache, devices batched."""
    ids, t = flows(setup, devices), setup.tokens_per_flow
    cache = model.new_cache(devices)

    def cycle() -> None:
        cache.reset()
        for k in range(setup.context_flows):
            model.score_append(cache, ids[:, k * t : (k + 1) * t])

    return cycle


def numpy_stream(model: GIoTModel, setup: Setup, devices: int, seconds: float) -> float:
    """Flows/s of the KV-cached streaming scorer."""
    best = cpu_seconds(stream_cycle(model, setup, devices), seconds)
    return devices * setup.context_flows / best


def numpy_windows(model: GIoTModel, setup: Setup, devices: int, seconds: float) -> float:
    """Flows/s scoring whole windows with ``token_nll``."""
    ids = flows(setup, devices)
    best = cpu_seconds(lambda: model.token_nll(ids), seconds)
    return devices * setup.context_flows / best


def numpy_naive(model: GIoTModel, setup: Setup, devices: int, seconds: float) -> float:
    """Flows/s of a straightforward forward: all logits, then a log-softmax."""
    from fl_server.hf import nll_from_logits  # noqa: PLC0415

    ids = flows(setup, devices)
    best = cpu_seconds(lambda: nll_from_logits(model.logits(ids), ids), seconds)
    return devices * setup.context_flows / best


def torch_windows(model: GIoTModel, setup: Setup, devices: int, seconds: float) -> float:
    """Flows/s of transformers' GPT2LMHeadModel on whole windows, one thread."""
    import torch  # noqa: PLC0415

    from fl_server.hf import to_transformers  # noqa: PLC0415

    torch.set_num_threads(1)
    hf = to_transformers(model)
    ids = torch.from_numpy(flows(setup, devices))

    def run() -> None:
        with torch.inference_mode():
            logp = torch.log_softmax(hf(input_ids=ids, use_cache=False).logits[:, :-1], dim=-1)
            logp.gather(2, ids[:, 1:, None])

    best = cpu_seconds(run, seconds)
    return devices * setup.context_flows / best


def onnx_windows(
    model: GIoTModel, setup: Setup, devices: int, seconds: float
) -> tuple[float, float]:
    """Flows/s of ONNX Runtime (one intra-op thread) on whole windows, and the export seconds."""
    from fl_server.hf import OnnxLogits, export_onnx  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = export_onnx(model, Path(tmp) / "giot.onnx")
        export_s = time.perf_counter() - t0
        session = OnnxLogits(path, threads=1)
        ids = flows(setup, devices)
        best = cpu_seconds(lambda: session.token_nll(ids), seconds)
    return devices * setup.context_flows / best, export_s


def training(model: GIoTModel, setup: Setup, batch: int, steps: int) -> tuple[float, float]:
    """Training tokens/s (CPU time) and its FLOP/s (forward + backward ~ 3x forward)."""
    windows = flows(setup, 8 * batch, seed=1)
    opt = AdamW()
    train_windows(model, windows, 1, batch, seed=0, optimizer=opt)  # warm-up
    c0 = time.process_time()
    report = train_windows(model, windows, steps, batch, seed=0, optimizer=opt)
    cpu = time.process_time() - c0
    flops = 3 * setup.flops_per_flow() * setup.context_flows * batch * steps
    return report.tokens / cpu, flops / cpu / 1e9


def traced_peak(fn: Callable[[], object]) -> int:
    """Peak bytes allocated (numpy reports to tracemalloc) while ``fn`` runs."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak - base


def memory(model: GIoTModel, setup: Setup, devices: int, batch: int) -> dict[str, int]:
    """Engine memory: KV cache, scoring peak, training-step peak, parameters on disk."""
    ids, t = flows(setup, devices), setup.tokens_per_flow

    def score() -> None:
        cache = model.new_cache(devices)
        for k in range(setup.context_flows):
            model.score_append(cache, ids[:, k * t : (k + 1) * t])

    def train_step() -> None:
        opt = AdamW()
        _, grads = model.loss_and_grads(ids[:batch])
        opt.step({k: p.copy() for k, p in model.params.items()}, grads)

    cache = model.new_cache(devices)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        file_bytes = (Path(tmp) / "model.safetensors").stat().st_size
    return {
        "kv_cache": sum(a.nbytes for a in (*cache.keys, *cache.values, cache.last)),
        "score_peak": traced_peak(score),
        "train_step_peak": traced_peak(train_step),
        "safetensors": file_bytes,
    }


def fmt_int(x: float) -> str:
    """Thousands separators for tables."""
    return f"{x:,.0f}"


def sweep(args: argparse.Namespace, peak: float, vocabs: list[int]) -> list[str]:
    """Numpy streaming throughput over a grid of widths, layers, heads and tokens per flow."""
    rows = [
        "| width | layers | heads | vocab | tokens/flow | flows (ctx) | params | MFLOP/flow "
        "| flows/s | GFLOP/s | of peak | targets |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    grid = [(48, 2, 4), (64, 1, 4), (64, 2, 2), (64, 2, 4), (64, 3, 4), (96, 1, 4), (96, 2, 4)]
    grid.append((128, 2, 4))
    runs = []
    for vocab in vocabs:
        for width, layers, heads in grid:
            for tpf, ctx in ((7, 9), (8, 8), (12, 4)):
                s = Setup(width, layers, heads, vocab, tpf, ctx)
                model = scoring(GIoTModel.init(s.config(), 0))
                cycle = stream_cycle(model, s, args.sweep_devices)
                cycle()  # warm-up
                runs.append((s, model.num_parameters(), cycle, [math.inf]))
    # rounds over all configs, best per config: a burst of load on the machine then hits one
    # sample of each config rather than every sample of a few
    for _ in range(args.sweep_rounds):
        for _, _, cycle, best in runs:
            c0 = time.process_time()
            cycle()
            best[0] = min(best[0], time.process_time() - c0)
    for s, params, _, best in runs:
        rate = args.sweep_devices * s.context_flows / best[0]
        gflops = rate * s.flops_per_flow() / 1e9
        ok = rate >= TARGET_FLOWS and gflops / peak >= TARGET_FRACTION
        rows.append(
            f"| {s.width} | {s.layers} | {s.heads} | {s.vocab} | {s.tokens_per_flow} "
            f"| {s.context_flows} | {fmt_int(params)} | {s.flops_per_flow() / 1e6:.2f} "
            f"| {fmt_int(rate)} | {gflops:.1f} | {gflops / peak:.0%} | {'yes' if ok else 'no'} |"
        )
        print(rows[-1], flush=True)
    return rows


def tokenizer_vocab() -> int | None:
    """Size of the tokenizer's current vocabulary, if the tokenizer is there."""
    try:
        from giot_engine.tokenizer import Vocabulary  # noqa: PLC0415
    except ImportError:
        return None
    return len(Vocabulary.default().tokens)


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0915 (one linear report)
    """Measure and write docs/results/cost.md."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=600)
    p.add_argument("--tokens-per-flow", type=int, default=12)
    p.add_argument("--context-flows", type=int, default=4)
    p.add_argument("--devices", type=int, default=256, help="devices scored together (batch)")
    p.add_argument("--seconds", type=float, default=1.0, help="CPU seconds per measurement")
    p.add_argument("--train-batch", type=int, default=32)
    p.add_argument("--train-steps", type=int, default=5)
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--no-onnx", action="store_true")
    p.add_argument("--sweep", action="store_true", help="numpy streaming over a config grid")
    p.add_argument("--sweep-devices", type=int, default=128)
    p.add_argument("--sweep-rounds", type=int, default=5, help="timed windows per config")
    p.add_argument("--out", type=Path, default=Path("docs/results/cost.md"))
    args = p.parse_args(argv)

    setup = Setup(
        args.width, args.layers, args.heads, args.vocab, args.tokens_per_flow, args.context_flows
    )
    model = GIoTModel.init(setup.config(), 0)
    scorer = scoring(model)
    load_start = os.getloadavg()[0]
    peak = gemm_peak(1024, 1.0)
    print(f"float32 GEMM peak, one core: {peak:.1f} GFLOP/s", flush=True)
    fpf = setup.flops_per_flow()
    mem = memory(model, setup, args.devices, args.train_batch)
    rss_numpy = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    results: list[tuple[str, float]] = []
    for name, fn in (
        ("numpy, KV-cached streaming (score_append)", numpy_stream),
        ("numpy, whole windows (token_nll)", numpy_windows),
        ("numpy, straightforward (logits + log-softmax)", numpy_naive),
    ):
        results.append((name, fn(scorer, setup, args.devices, args.seconds)))
        print(f"{name}: {results[-1][1]:,.0f} flows/s", flush=True)
    sizes = sorted({1, 8, 64, 1024} - {args.devices})
    latency = [(d, numpy_stream(scorer, setup, d, args.seconds / 2)) for d in sizes]
    latency = sorted([*latency, (args.devices, results[0][1])])
    train_tps, train_gflops = training(model, setup, args.train_batch, args.train_steps)
    export_s = math.nan
    if not args.no_torch:
        results.append(
            (
                "torch (transformers), whole windows",
                torch_windows(model, setup, args.devices, args.seconds),
            )
        )
        print(f"{results[-1][0]}: {results[-1][1]:,.0f} flows/s", flush=True)
    if not args.no_onnx:
        rate, export_s = onnx_windows(model, setup, args.devices, args.seconds)
        results.append(("ONNX Runtime, whole windows", rate))
        print(f"{results[-1][0]}: {rate:,.0f} flows/s", flush=True)
    tok_vocab = tokenizer_vocab()
    rec = Setup(vocab=tok_vocab or args.vocab, **RECOMMENDED)
    rec_model = GIoTModel.init(rec.config(), 0)
    rec_scorer = scoring(rec_model)
    rec_rate = numpy_stream(rec_scorer, rec, args.devices, args.seconds)
    rec_alone = numpy_stream(rec_scorer, rec, 1, args.seconds / 2)
    rec_gflops = rec_rate * rec.flops_per_flow() / 1e9
    rec_train, _ = training(rec_model, rec, args.train_batch, args.train_steps)
    rec_mem = memory(rec_model, rec, args.devices, args.train_batch)
    print(f"recommended {rec.label()}: {rec_rate:,.0f} flows/s", flush=True)
    sweep_rows = sweep(args, peak, [tok_vocab or args.vocab]) if args.sweep else []

    stream = results[0][1]
    met = stream >= TARGET_FLOWS and stream * fpf / 1e9 / peak >= TARGET_FRACTION
    command = shlex.join(["scripts/bench", "cost", *(sys.argv[1:] if argv is None else argv)])
    params = model.num_parameters()
    lines = [
        "# Cost of the GIoT model on one CPU core",
        "",
        METHOD,
        "",
        f"- Command: `{command}`",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs (shared), "
        f"Python {platform.python_version()}, numpy {np.__version__}; 1-min load average "
        f"{load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end",
        f"- Config: {setup.label()} (window {setup.window} tokens), "
        f"{fmt_int(model.num_parameters())} parameters, {args.devices} devices per batch",
        f"- Single-core float32 GEMM peak (1024x1024x1024, numpy/OpenBLAS): **{peak:.1f} GFLOP/s**",
        f"- Useful work: {fpf / 1e6:.3f} MFLOP per flow "
        f"({fpf / setup.tokens_per_flow / 1e3:.0f} kFLOP per token: GEMMs, attention, LM head)",
        "",
        "## Flows scored per second (one thread)",
        "",
        "| runtime | flows/s | GFLOP/s | of peak |",
        "|---|---:|---:|---:|",
    ]
    for name, rate in results:
        g = rate * fpf / 1e9
        lines.append(f"| {name} | {fmt_int(rate)} | {g:.1f} | {g / peak:.0%} |")
    lines += [
        "",
        f"Targets: >= {TARGET_FLOWS:,} flows/s with numpy at >= {TARGET_FRACTION:.0%} of peak: "
        f"**{'met' if met else 'not met'}**"
        " by the KV-cached streaming scorer for this config.",
        "",
        "Batching across devices (numpy streaming; 1 = each flow scored alone on arrival):",
        "",
        "| devices per batch | KV cache | flows/s | µs per flow |",
        "|---:|---:|---:|---:|",
    ]
    per_device = mem["kv_cache"] / args.devices
    lines += [
        f"| {d} | {d * per_device / 2**20:.2f} MiB | {fmt_int(r)} | {1e6 / r:.1f} |"
        for d, r in latency
    ]
    lines += [
        "",
        "## Training, memory, size",
        "",
        f"- Training (numpy, batch {args.train_batch} windows, AdamW, clipping): "
        f"**{fmt_int(train_tps)} tokens/s** ({train_gflops:.1f} GFLOP/s, backward = 2x forward)",
        f"- Parameters: {fmt_int(params)} ({params * 4 / 1024:.0f} KiB float32); "
        f"model.safetensors {mem['safetensors'] / 1024:.0f} KiB",
        f"- KV cache for {args.devices} devices: {mem['kv_cache'] / 2**20:.2f} MiB "
        f"({mem['kv_cache'] / args.devices / 1024:.1f} KiB per device)",
        f"- Peak numpy allocation (tracemalloc) scoring {args.devices} devices' windows: "
        f"{mem['score_peak'] / 2**20:.2f} MiB (cache + work buffers); one training step of "
        f"{args.train_batch} windows: {mem['train_step_peak'] / 2**20:.2f} MiB",
        "- Process max RSS after the numpy measurements (Python + numpy + engine): "
        f"{rss_numpy / 2**20:.0f} MiB",
    ]
    if not math.isnan(export_s):
        lines.append(f"- ONNX export (dynamo) took {export_s:.1f} s wall")
    rec_ok = rec_rate >= TARGET_FLOWS and rec_gflops / peak >= TARGET_FRACTION
    lines += [
        "",
        "## Recommended default",
        "",
        f"**{rec.label()}**: width {rec.width}, {rec.layers} layers, {rec.heads} heads, "
        f"{rec.tokens_per_flow} tokens per flow (what the tokenizer emits today), context "
        f"{rec.context_flows} flows = {rec.window} positions (with `[BOS]`: the detector's 64), "
        f"vocabulary {rec.vocab}"
        + (" (the tokenizer's current one)" if tok_vocab else "")
        + f". Measured here: **{fmt_int(rec_rate)} flows/s** streaming ({args.devices} devices "
        f"per batch), {rec_gflops:.1f} GFLOP/s = **{rec_gflops / peak:.0%} of peak** "
        f"(targets {'met' if rec_ok else 'not met'}); {fmt_int(rec_alone)} flows/s scoring each "
        f"flow alone; training {fmt_int(rec_train)} tokens/s; "
        f"{fmt_int(rec_model.num_parameters())} parameters "
        f"({rec_mem['safetensors'] / 1024:.0f} KiB on disk), KV cache "
        f"{rec_mem['kv_cache'] / args.devices / 1024:.0f} KiB per device.",
        "",
        "Why: home hubs have far less float32 throughput than this AVX-512 core (the reference "
        "machine in ENVIRONMENT.md measured 22 GFLOP/s; small ARM boards have less), so the "
        f"default is sized for them: at {rec.flops_per_flow() / 1e6:.1f} MFLOP per flow, "
        f"10 GFLOP/s sustained still scores ~{1e10 / rec.flops_per_flow():,.0f} flows/s. "
        "Tokens per flow are the main lever (cost is linear in them and the KV cache makes a "
        "flow cost only its own tokens); width buys efficiency (wider models reach a larger "
        "fraction of peak, see the sweep) but costs quadratically on small hubs. 2 heads of 32 "
        "rather than 4 of 16: the same FLOPs in half as many small attention GEMMs (a few "
        "percent faster at width 64, see the "
        "sweep), and 32 is closer to usual head sizes; 4 heads remain a fine choice if the "
        "detection evaluation prefers them. If detection quality needs more capacity, width 96 "
        "with 2 layers is the next step (about 2x the FLOPs).",
        "",
        NOTES,
    ]
    if sweep_rows:
        lines += [
            "",
            f"## Sweep (numpy streaming, {args.sweep_devices} devices, best of "
            f"{args.sweep_rounds} interleaved rounds)",
            "",
            "`flows (ctx)`: flows per device window (context: the flows before it in the window).",
            "",
            *sweep_rows,
        ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
