"""The GIoT model of one entry: load it, score with it, train it locally, save it safely.

The model is the engine's numpy GPT-2 (``GIoTModel``), kept in Hugging Face layout under
``.storage/giot/model/`` (config.json, model.safetensors, tokenizer.json) so that a global model
from the federation can be dropped in there, together with what local training needs to resume
(AdamW state), the bigram counts and a small ``giot.json`` (version, how much it has learnt).

A freshly initialised model predicts nothing, so the detector scores with bigram counts fitted on
the stored windows until the model's loss on those windows beats the bigram's; from then on it
scores with the model, mixed with the bigram at ``BIGRAM_WEIGHT`` (a floor for transitions the
model has not learnt yet). ``scorer`` says which is active.

Training works on copies of the weights and the optimizer; they replace the live ones only after
the whole directory was written and swapped in (temporary directory, fsync, rename), so a failed
write (a full disk) leaves both the file and the scoring model as they were. The federation's
global model comes in the same way (``load_global``); ``origin`` says which kind scores.

A hub starts from a base model when it has none of its own: the one shipped inside the
integration (``base``, checked against its manifest first), a GIoT model trained on public
captures plus the known-attack head (``SignatureHead``), which the detector uses whatever model
scores. Without a usable one it starts from a fresh model and a head that names nothing.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .artifact import ArtifactError, BaseModel, load_base
from .context import Group, TokenScorer
from .detector import BigramModel
from .gil import yield_gil
from .model import GIoTConfig, GIoTModel, KVCache
from .persist import atomic_write_dir, recover_dir
from .signature import SignatureHead
from .tokenizer import Vocabulary
from .train import AdamW, train_windows

LOGGER = logging.getLogger(__name__)

# docs/results/cost.md, recommended default: width 64, 2 layers, 2 heads, 64 positions.
N_EMBD = 64
N_LAYER = 2
N_HEAD = 2
N_POSITIONS = 64
INIT_SEED = 0
BIGRAM_WEIGHT = 0.1
# One training run: at most this many AdamW steps of BATCH windows and this much time (both
# bound the hub's CPU use: docs/results/ha_load.md measures a run), at least MIN_STEPS.
BATCH = 32
MAX_STEPS = 200
MIN_STEPS = 20
MAX_SECONDS = 120.0
CHUNK_STEPS = 1
LEARNING_RATE = 1e-3
EVAL_WINDOWS = 256

META_FILE = "giot.json"
OPTIMIZER_FILE = "optimizer.npz"
BIGRAM_FILE = "bigram.npz"
TOKENIZER_FILE = "tokenizer.json"


@dataclass(frozen=True, slots=True)
class TrainResult:
    """What one local training run did (losses are mean NLL per token on the stored windows)."""

    version: str
    steps: int
    windows: int
    seconds: float
    loss_before: float
    loss_after: float
    bigram_loss: float
    scorer: str


class BlendScorer:
    """The GIoT model mixed with bigram counts: the detector's scorer once the model has learnt.

    It is a ``CachedScorer``, so the engine scores it on KV-cached windows and shows its
    attention; before, the detector gets the ``BigramModel`` itself (whole windows, no attention).
    """

    def __init__(self, model: GIoTModel, bigram: BigramModel) -> None:
        """Mix ``model`` with ``bigram`` at ``BIGRAM_WEIGHT``."""
        self.model = model
        self.bigram = bigram

    @property
    def config(self) -> GIoTConfig:
        """The model's configuration."""
        return self.model.config

    def token_nll(self, ids: np.ndarray) -> np.ndarray:
        """-log of the mixture probability of each next token."""
        bigram = np.asarray(self.bigram.token_nll(ids), np.float64)
        model = np.asarray(self.model.token_nll(np.asarray(ids, np.int64)), np.float64)
        return _mix(model, bigram)

    def new_cache(self, batch: int) -> KVCache:
        """Return the model's cache: the bigram needs only each row's last token, kept there."""
        return self.model.new_cache(batch)

    def score_groups(self, cache: KVCache, groups: Sequence[Group]) -> list[np.ndarray]:
        """Mix the model's cached scoring with the bigram (given the rows' last tokens)."""
        before = [cache.last_token[np.asarray(rows, np.intp)] for rows, _, _, _ in groups]
        model = self.model.score_groups(cache, groups)
        out = []
        for (_, _, ids, _), prev, nll in zip(groups, before, model, strict=True):
            pairs = np.concatenate([prev[:, None], np.asarray(ids, np.int64)], axis=1)  # empty
            bigram = np.asarray(self.bigram.token_nll(pairs), np.float64)  # contexts: NaN stays
            with np.errstate(invalid="ignore"):  # NaN where a context was empty, and padding
                out.append(_mix(np.asarray(nll, np.float64), bigram))
        return out

    def attention(self, ids: np.ndarray) -> np.ndarray:
        """Return the model's attention: the bigram's would be the previous token, always."""
        return self.model.attention(ids)


def _mix(model: np.ndarray, bigram: np.ndarray) -> np.ndarray:
    """-log((1 - w) p_model + w p_bigram) from the two NLLs."""
    mixed: np.ndarray = -np.logaddexp(
        math.log(1.0 - BIGRAM_WEIGHT) - model, math.log(BIGRAM_WEIGHT) - bigram
    )
    return mixed


class ModelManager:
    """Owns one entry's GIoT model and its files; every method here runs in the executor."""

    def __init__(self, directory: Path | None, vocab: Vocabulary, base: Path | None = None) -> None:
        """Start from a fresh model; ``load`` reads the saved one (``directory`` None: no files).

        ``base``: a base model directory (``artifact``) to start from when nothing is saved.
        """
        self.directory = directory
        self.base_dir = base
        self.vocab = vocab
        self.config = GIoTConfig(
            vocab_size=len(vocab),
            n_positions=N_POSITIONS,
            n_embd=N_EMBD,
            n_layer=N_LAYER,
            n_head=N_HEAD,
        )
        self.optimizer = AdamW(lr=LEARNING_RATE)
        self.meta: dict[str, Any] = {"version": 0, "trained_windows": 0, "use_model": False}
        # the model that scores (or will, once trained enough), and what the detector scores with
        self.model = GIoTModel.init(self.config, INIT_SEED).freeze()
        self.bigram = BigramModel(np.zeros((len(vocab), len(vocab))))
        self.scorer: TokenScorer = self.bigram
        # the known-attack stage: the base model's, until a model brings another
        self.head = SignatureHead.untrained()
        self.last: TrainResult | None = None
        self.write_errors = 0
        self.disk_full = False
        self.last_error: str | None = None

    # -- what it is -----------------------------------------------------------------------------

    @property
    def version(self) -> str:
        """Name the weights: giot-<n> after n changes (local trainings and global models loaded).

        A global model of the federation is giot-<n>-global-<round>; one dropped in by hand
        (no giot.json) giot-global; a base model scores under its own name (base-<weights hash>).
        """
        if self.meta.get("source") == "base":
            return str(self.meta.get("base") or "giot-base")
        version = int(self.meta.get("version", 0))
        global_round = self.meta.get("round") if self.meta.get("source") == "global" else None
        if version:
            return (
                f"giot-{version}"
                if global_round is None
                else f"giot-{version}-global-{global_round}"
            )
        return "giot-global" if self.meta.get("source") == "global" else "giot-untrained"

    @property
    def origin(self) -> str:
        """Where the weights come from: "local", "base", or "global round N" (the federation's)."""
        if self.meta.get("source") == "base":
            return "base"
        if self.meta.get("source") != "global":
            return "local"
        global_round = self.meta.get("round")
        return "global" if global_round is None else f"global round {global_round}"

    @property
    def active(self) -> str:
        """Which scorer the detector uses now: ``giot`` (mixed with the bigram) or ``bigram``."""
        return "giot" if isinstance(self.scorer, BlendScorer) else "bigram"

    def info(self) -> dict[str, Any]:
        """Plain values for diagnostics and the model-version sensor."""
        last = self.last
        return {
            "scorer": self.active,
            "origin": self.origin,
            "bigram_weight": BIGRAM_WEIGHT if isinstance(self.scorer, BlendScorer) else 1.0,
            "parameters": self.model.num_parameters(),
            "config": {
                "n_embd": self.config.n_embd,
                "n_layer": self.config.n_layer,
                "n_head": self.config.n_head,
                "n_positions": self.config.n_positions,
                "vocab_size": self.config.vocab_size,
            },
            "trained_windows": int(self.meta.get("trained_windows", 0)),
            # what this model grew from, and the federation's name for the last global model
            "base": self.meta.get("base"),
            "global_version": self.meta.get("global_version"),
            "previous_version": self.meta.get("previous"),
            "signature_head": "trained" if self.head.trained else "untrained",
            "optimizer_steps": self.optimizer.step_count,
            "last_loss": self.meta.get("loss"),
            "last_bigram_loss": self.meta.get("bigram_loss"),
            "last_training_steps": last.steps if last else None,
            "last_training_seconds": round(last.seconds, 2) if last else None,
            "disk_full": self.disk_full,
            "write_errors": self.write_errors,
            "last_write_error": self.last_error,
        }

    # -- files ----------------------------------------------------------------------------------

    def load(self) -> None:
        """Read the saved model, else the base model; with neither, the fresh model stays.

        The base model's head detects known attacks whichever model scores.
        """
        limit_blas_threads()
        base = self._read_base()
        if base is not None:
            self.head = base.head
        if self._load_saved() or base is None:
            return
        if base.model.config != self.config:  # a global model of the hub's size would not fit
            LOGGER.warning(
                "GIoT's base model %s is not of the hub's size (%s): only its head is used",
                base.version,
                base.model.config,
            )
            return
        self.optimizer = AdamW(lr=LEARNING_RATE)
        self.meta = {
            "version": 0,
            "source": "base",
            "base": base.version,
            "trained_windows": 0,
            "use_model": True,  # trained on public captures: it predicts better than no counts
            "vocab": self.vocab.version,
        }
        self._use(base.model, self.bigram, use_model=True)

    def _read_base(self) -> BaseModel | None:
        """Return the checked base model; None (logged) when there is none or it fails a check."""
        if self.base_dir is None:
            return None
        try:
            return load_base(self.base_dir, self.vocab)
        except ArtifactError as err:
            LOGGER.warning("GIoT does not use its base model: %s", err)
            return None

    def _load_saved(self) -> bool:
        """Read the model this hub saved; False when there is none or it is unreadable."""
        if self.directory is None:
            return False
        recover_dir(self.directory)
        if not (self.directory / "config.json").is_file():
            return False
        try:
            model = GIoTModel.from_pretrained(self.directory)
            if model.config.vocab_size != len(self.vocab):
                raise ValueError(
                    f"vocabulary of {model.config.vocab_size} tokens, expected {len(self.vocab)}"
                )
            meta_path = self.directory / META_FILE
            # No giot.json: a model from elsewhere (the federation's global model), trained.
            meta: dict[str, Any] = (
                json.loads(meta_path.read_text())
                if meta_path.is_file()
                else {"version": 0, "source": "global", "trained_windows": 0, "use_model": True}
            )
            optimizer = AdamW(lr=LEARNING_RATE)
            if (path := self.directory / OPTIMIZER_FILE).is_file():
                with np.load(path, allow_pickle=False) as data:
                    optimizer.load_state_dict(dict(data))
            counts = np.zeros((len(self.vocab), len(self.vocab)))
            if (path := self.directory / BIGRAM_FILE).is_file():
                with np.load(path, allow_pickle=False) as data:
                    counts = np.asarray(data["counts"], np.float64)
            if counts.shape != (len(self.vocab), len(self.vocab)):
                raise ValueError(f"bigram counts of shape {counts.shape}")
        except (OSError, ValueError, KeyError) as err:
            LOGGER.warning("GIoT does not use its saved model, which is unreadable: %s", err)
            return False
        self.config, self.optimizer, self.meta = model.config, optimizer, meta
        self._use(model, BigramModel(counts), use_model=bool(meta.get("use_model", False)))
        return True

    def _use(self, model: GIoTModel, bigram: BigramModel, *, use_model: bool) -> None:
        """Score with the blend once the model predicts better than the counts, else the counts."""
        self.model = model.freeze()
        self.bigram = bigram
        self.scorer = BlendScorer(model, bigram) if use_model else bigram

    def _write(
        self, model: GIoTModel, optimizer: AdamW, counts: np.ndarray, meta: dict[str, Any]
    ) -> None:
        """Write the whole directory beside the old one, then swap it in (old kept on error)."""
        if self.directory is None:
            return

        def fill(tmp: Path) -> None:
            model.save_pretrained(tmp)
            (tmp / TOKENIZER_FILE).write_text(json.dumps(self.vocab.to_tokenizers_json()))
            with (tmp / OPTIMIZER_FILE).open("wb") as handle:
                np.savez(handle, allow_pickle=False, **optimizer.state_dict())
            with (tmp / BIGRAM_FILE).open("wb") as handle:
                np.savez(handle, allow_pickle=False, counts=counts)
            (tmp / META_FILE).write_text(json.dumps(meta))

        atomic_write_dir(self.directory, fill)

    # -- training -------------------------------------------------------------------------------

    def train(self, windows: np.ndarray, seed: int) -> TrainResult:
        """Train copies on ``windows`` (N, T), save them, then let them score.

        Raises ``OSError`` when the files could not be written; nothing changes then.
        """
        windows = np.asarray(windows, np.int64)
        model = GIoTModel(self.model.config, {k: v.copy() for k, v in self.model.params.items()})
        optimizer = AdamW(lr=self.optimizer.lr)
        if self.optimizer.step_count:
            optimizer.load_state_dict(self.optimizer.state_dict())
        rng = np.random.default_rng(seed)
        held = windows[rng.choice(len(windows), min(EVAL_WINDOWS, len(windows)), replace=False)]
        size = len(self.vocab)  # BigramModel.fit's counts, in one C call instead of a loop
        pairs = windows[:, :-1].ravel() * size + windows[:, 1:].ravel()
        bigram = BigramModel(np.bincount(pairs, minlength=size * size).reshape(size, size) * 1.0)
        loss_before = float(model.token_nll(held).mean())
        steps = min(MAX_STEPS, max(MIN_STEPS, math.ceil(2 * len(windows) / BATCH)))
        start, done = time.monotonic(), 0
        while done < steps and time.monotonic() - start < MAX_SECONDS:
            chunk = min(CHUNK_STEPS, steps - done)
            train_windows(model, windows, chunk, min(BATCH, len(windows)), seed, optimizer)
            done += chunk
            yield_gil()
        seconds = time.monotonic() - start
        loss_after = float(model.token_nll(held).mean())
        bigram_loss = float(bigram.token_nll(held).mean())
        meta = {
            "version": int(self.meta.get("version", 0)) + 1,
            "trained_windows": int(self.meta.get("trained_windows", 0))
            + done * min(BATCH, len(windows)),
            # The model scores once it predicts the home's windows better than bigram counts do.
            "use_model": bool(self.meta.get("use_model")) or loss_after < bigram_loss,
            "loss": round(loss_after, 4),
            "bigram_loss": round(bigram_loss, 4),
            "vocab": self.vocab.version,
            "base": self.meta.get("base"),
        }
        try:
            self._write(model, optimizer, bigram.counts, meta)
        except OSError as err:
            self._record_error(err)
            raise
        self.disk_full = False
        self.optimizer, self.meta = optimizer, meta
        self._use(model, bigram, use_model=bool(meta["use_model"]))
        self.last = TrainResult(
            self.version,
            done,
            len(windows),
            seconds,
            loss_before,
            loss_after,
            bigram_loss,
            self.active,
        )
        return self.last

    def load_global(
        self,
        params: Mapping[str, np.ndarray],
        windows: np.ndarray,
        server_round: int,
        run_id: int | None = None,
        global_version: str | None = None,
    ) -> float:
        """Save the federation's model of ``server_round``, then let it score; return its loss.

        ``params`` must be the model's tensors (``federated.validate_global``). The home's bigram
        counts stay; the model joins them in the blend only if it predicts the home's stored
        windows (``eval_windows`` of ``windows``) better than they do: the rule after local
        training, decided afresh for the new weights. The optimizer starts afresh too (its
        moments belong to the old weights). Raises ``OSError`` when the files could not be
        written, ``ValueError`` when the model scores this home's windows as NaN or infinite
        (a broken model); nothing changes then. Returns the model's mean NLL per token on those
        windows.
        ``global_version`` is the server's name for the model; it is kept with the version it
        replaced (what changed, for diagnostics).
        """
        model = GIoTModel(self.config, {k: np.array(v, np.float32) for k, v in params.items()})
        held = eval_windows(windows)
        if len(held):
            loss = float(model.token_nll(held).mean())
            bigram_loss = float(self.bigram.token_nll(held).mean())
        else:  # a new hub: its bigram has learnt nothing either, the federation's model scores
            loss, bigram_loss = math.nan, math.inf
        if len(held) and not math.isfinite(loss):
            raise ValueError(f"the model's loss on this home's windows is {loss}")
        meta = {
            "version": int(self.meta.get("version", 0)) + 1,
            "trained_windows": int(self.meta.get("trained_windows", 0)),
            "use_model": not loss >= bigram_loss,  # NaN (nothing measured): the model
            "loss": round(loss, 4) if math.isfinite(loss) else None,
            "bigram_loss": round(bigram_loss, 4),
            "vocab": self.vocab.version,
            "source": "global",
            "round": int(server_round),
            "run_id": run_id,
            "base": self.meta.get("base"),
            "global_version": global_version,
            "previous": self.version,
        }
        optimizer = AdamW(lr=LEARNING_RATE)
        try:
            self._write(model, optimizer, self.bigram.counts, meta)
        except OSError as err:
            self._record_error(err, "global model")
            raise
        self.disk_full = False
        self.optimizer, self.meta = optimizer, meta
        self._use(model, self.bigram, use_model=bool(meta["use_model"]))
        return loss

    def _record_error(self, err: OSError, what: str = "trained model") -> None:
        self.write_errors += 1
        self.last_error = f"{errno.errorcode.get(err.errno or 0, 'OSError')}: {err}"
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            self.disk_full = True
        LOGGER.error("GIoT could not save its %s (the previous one is kept): %s", what, err)


def eval_windows(windows: np.ndarray) -> np.ndarray:
    """Up to ``EVAL_WINDOWS`` of the stored windows, spread evenly over them (deterministic)."""
    windows = np.asarray(windows, np.int64)
    if len(windows) <= EVAL_WINDOWS:
        return windows
    return windows[np.linspace(0, len(windows) - 1, EVAL_WINDOWS).round().astype(np.int64)]


def limit_blas_threads() -> bool:
    """Run numpy's OpenBLAS on one thread; return whether it was found.

    GIoT's matrix products are tiny (64 wide): OpenBLAS threads only add hand-offs and spin
    on cores Home Assistant needs. Measured on the shared 2-core development machine: scoring a
    64-token window took 28 ms with OpenBLAS's default threads and 0.64 ms with one, a training
    step 245 ms against 65 ms. The setting is process-wide (OpenBLAS has no per-call one).
    """
    global _BLAS_LIMITED  # noqa: PLW0603
    if _BLAS_LIMITED is not None:
        return _BLAS_LIMITED
    _BLAS_LIMITED = False
    libs = Path(np.__file__).parent.parent / "numpy.libs"
    for path in sorted(libs.glob("*openblas*")) if libs.is_dir() else []:
        try:
            lib = ctypes.CDLL(str(path))
        except OSError:
            continue
        for name in (
            "scipy_openblas_set_num_threads64_",
            "scipy_openblas_set_num_threads",
            "openblas_set_num_threads64_",
            "openblas_set_num_threads",
        ):
            if (setter := getattr(lib, name, None)) is not None:
                setter(1)
                _BLAS_LIMITED = True
                return True
    return False


_BLAS_LIMITED: bool | None = None
