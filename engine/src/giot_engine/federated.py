"""A node's side of a GSFS round, and what a home hub keeps of the federation between rounds.

``gsfs_client_round`` is the one implementation of a node's round, shared by the Flower
simulation (``fl_server.client_app.train_gsfs``, state in the Flower context) and the home hubs
(``InProcessDetector.federated_train``, state in ``HubFederation``): merge the partial downlink into
the copy of the global model the node holds, train, encode ``w_local - w_held`` with the
error-feedback residual into the round's byte budget (``gsfs_codec``), pack it.

Semantics of the downlink (``fl_server.strategy.downlink``): ``base-state`` is the copy the server
believes the node holds (-1: none, the task carries the full model); the task's arrays overwrite
those tensors of it; the node then holds ``new-state``. A node that does not hold ``base-state``
trains nothing and says so (``downlink-ok`` 0); the server sends it everything next time.

``TaskAnswer`` is what the detector returns for a node's task, and what the integration turns
into a ``result`` frame of ``node_protocol``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from . import gsfs_codec
from .persist import atomic_write_dir, recover_dir

LOGGER = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
Arrays: TypeAlias = dict[str, F32]
Metrics: TypeAlias = dict[str, int | float]

# A train task's arrays that are not model tensors: the SecAgg mode's shared index set and grid
# (``<prefix><name>.idx``, ``<prefix><name>.scale``), which Flower carries as a record of their own.
SHARED_PREFIX = "shared/"
DEFAULT_BUDGET = 16384  # bytes, when a task names none (the run config's gsfs-default-budget)


@dataclass(frozen=True, slots=True)
class TaskAnswer:
    """The hub's answer to one train or evaluate task.

    ``status`` / ``reason`` are ``node_protocol.RESULT_STATUSES`` / ``REASONS``; ``metrics`` and
    ``arrays`` go back to the server as they are (a GSFS payload for train, nothing for
    evaluate). ``model_version`` / ``origin`` say which model the hub scores with afterwards
    (``origin`` is "local" or "global round N").
    """

    status: str
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    model_version: str | None = None
    origin: str | None = None


@dataclass(frozen=True, slots=True)
class Trained:
    """What a node's local training did: new weights, mean step loss, and the work it counts.

    ``steps`` is what ran (a hub stops early at its time limit); ``examples`` weighs the reply
    (0: nothing in the windows to learn); ``flops`` is ``train_flops``.
    """

    params: Mapping[str, np.ndarray]
    loss: float
    steps: int
    examples: int
    flops: float


# (weights to start from, steps asked for, seed) -> what training did
TrainFn: TypeAlias = Callable[[Arrays, int, int], Trained]


@dataclass(frozen=True, slots=True)
class RoundOutcome:
    """One round of a node: the reply (metrics, payload) and the state to keep for the next.

    When ``downlink_ok`` is False nothing was trained and the state is the one the node had.
    """

    downlink_ok: bool
    held: Arrays
    held_id: int
    residual: Arrays
    metrics: Metrics
    payload: dict[str, np.ndarray]


def config_number(config: Mapping[str, object], key: str, default: float) -> float:
    """Read a number of a task's config; anything else (absent, a string, a bool): the default."""
    value = config.get(key, default)
    return (
        float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default
    )


def train_flops(n_params: int, steps: int, batch: int, width: int) -> float:
    """Work of ``steps`` training steps: 6 FLOPs per parameter per processed token (Kaplan 2020)."""
    return 6.0 * n_params * steps * batch * width


def _f32(arrays: Mapping[str, np.ndarray]) -> Arrays:
    return {k: np.asarray(v, np.float32) for k, v in arrays.items()}


def gsfs_client_round(  # noqa: PLR0917 (the round's inputs, in the order it uses them)
    held: Mapping[str, np.ndarray],
    held_id: int,
    received: Mapping[str, np.ndarray],
    config: Mapping[str, object],
    train_fn: TrainFn,
    residual: Mapping[str, np.ndarray],
    *,
    seed: int,
    default_steps: int,
    default_budget: int = DEFAULT_BUDGET,
    shared: Mapping[str, np.ndarray] | None = None,
    clock: Callable[[], float] = time.process_time,
) -> RoundOutcome:
    """Run one GSFS round of a node (see the module docstring); the caller keeps the state.

    ``config`` is the task's (``base-state``, ``new-state``, ``local-steps``, ``gsfs-budget``,
    ``gsfs-mode``); ``shared`` the SecAgg mode's index set and grid (``<name>.idx``,
    ``<name>.scale``). ``clock`` measures ``compute-s`` (a hub that scores on other threads
    meanwhile passes its thread's clock).
    """
    base = int(config_number(config, "base-state", -1))
    new_state = int(config_number(config, "new-state", -1))
    if base not in (-1, held_id):
        refused: Metrics = {"num-examples": 0, "downlink-ok": 0, "state-id": held_id}
        return RoundOutcome(False, _f32(held), held_id, _f32(residual), refused, {})
    start = _f32(received) if base == -1 else {**_f32(held), **_f32(received)}
    t0 = clock()
    steps = int(config_number(config, "local-steps", float(default_steps)))
    trained = train_fn(start, steps, seed)
    update = {k: np.asarray(trained.params[k], np.float32) - start[k] for k in start}
    sparse = config.get("gsfs-mode") != "shared"
    if sparse:
        budget = int(config_number(config, "gsfs-budget", float(default_budget)))
        enc = gsfs_codec.encode(update, start, budget, residual=residual)
    else:  # SecAgg-compatible: the server's index set and grid
        shared = shared or {}
        idx = {k[: -len(".idx")]: v for k, v in shared.items() if k.endswith(".idx")}
        scales = {
            k[: -len(".scale")]: float(np.asarray(v).reshape(-1)[0])
            for k, v in shared.items()
            if k.endswith(".scale")
        }
        enc = gsfs_codec.encode_shared(update, idx, scales, residual=residual)
    compute_s = clock() - t0
    metrics: Metrics = {
        "num-examples": trained.examples,
        "train-loss": trained.loss,
        "compute-s": compute_s,
        "local-steps": trained.steps,
        "state-id": new_state,
        "downlink-ok": 1,
        "payload-bytes": enc.nbytes,
        "compute-flops": trained.flops,
    }
    payload: dict[str, np.ndarray] = dict(enc.payload)
    if sparse:  # a few arrays instead of ~3 per tensor: less framing
        payload = dict(gsfs_codec.pack(payload, {k: v.shape for k, v in start.items()}))
    return RoundOutcome(True, start, new_state, enc.residual, metrics, payload)


# -- what a hub accepts ----------------------------------------------------------------------


def model_bytes_limit(shapes: Mapping[str, tuple[int, ...]]) -> int:
    """Largest model a hub takes for these shapes: every tensor in float64, nothing more."""
    return 8 * sum(int(np.prod(s, dtype=np.int64)) for s in shapes.values())


# No weight of a working GIoT model comes near this (GPT-2 layout: embeddings ~0.02, LayerNorm
# gains ~1); a finite model scaled past it overflows in the first forward pass and scores NaN.
MAX_WEIGHT = 1e4


def _problem(
    arrays: Mapping[str, object],
    shapes: Mapping[str, tuple[int, ...]],
    max_bytes: int,
    partial_ok: bool,
) -> tuple[str, str] | None:
    total = sum(int(getattr(a, "nbytes", 0)) for a in arrays.values())
    if total > max_bytes:
        return "invalid_model", f"{total} bytes, over the limit of {max_bytes}"
    extra, missing = set(arrays) - set(shapes), set(shapes) - set(arrays)
    if extra or (missing and not partial_ok):
        return "incompatible_model", f"unknown {sorted(extra)[:3]}, missing {sorted(missing)[:3]}"
    for name, a in arrays.items():
        if not isinstance(a, np.ndarray) or a.dtype.kind != "f":
            return "incompatible_model", f"{name}: {getattr(a, 'dtype', type(a).__name__)}"
        if a.shape != tuple(shapes[name]):
            return "incompatible_model", f"{name}: shape {a.shape}, expected {shapes[name]}"
    for name, a in arrays.items():
        if (broken := _broken(name, a)) is not None:
            return "invalid_model", broken
    return None


def _broken(name: str, a: object) -> str | None:
    """Why a float tensor cannot be a working model's: not finite, or absurdly large."""
    with np.errstate(over="ignore"):
        values = np.asarray(a, np.float32)
        finite = bool(np.all(np.isfinite(values)))
    if not finite:
        return f"{name}: not finite (in float32)"
    if values.size and float(np.max(np.abs(values))) > MAX_WEIGHT:
        return f"{name}: a weight beyond +-{MAX_WEIGHT:g}"
    return None


def validate_global(
    arrays: Mapping[str, object],
    expected_shapes: Mapping[str, tuple[int, ...]],
    max_bytes: int,
    *,
    partial: bool = False,
) -> str | None:
    """None if ``arrays`` can be the hub's model, else why not (a ``node_protocol.REASONS``).

    Exactly the hub model's tensor names and shapes (``partial``: a subset, a downlink), of a
    float dtype (cast to float32 on use), finite in float32, no weight beyond ``MAX_WEIGHT``,
    ``max_bytes`` in all:
    "incompatible_model" for what does not fit, "invalid_model" for what is broken or too big.
    """
    problem = _problem(arrays, expected_shapes, max_bytes, partial)
    if problem is None:
        return None
    LOGGER.warning("GIoT refuses the federation's model (%s): %s", *problem)
    return problem[0]


def _fits_shared(key: str, a: object, shapes: Mapping[str, tuple[int, ...]]) -> bool:
    name, _, kind = key.rpartition(".")
    if not isinstance(a, np.ndarray) or name not in shapes:
        return False
    if kind == "idx":
        numel = int(np.prod(shapes[name], dtype=np.int64))
        in_range = a.size == 0 or (int(a.min()) >= 0 and int(a.max()) < numel)
        return a.ndim == 1 and a.dtype.kind in "iu" and in_range
    if kind == "scale":
        return a.size == 1 and a.dtype.kind == "f" and bool(np.isfinite(a).all() and a.item() > 0)
    return False


def validate_shared(
    shared: Mapping[str, object], shapes: Mapping[str, tuple[int, ...]]
) -> str | None:
    """None if a SecAgg index set and grid fit the model (indices in range, steps positive)."""
    for key, a in shared.items():
        if not _fits_shared(key, a, shapes):
            LOGGER.warning("GIoT refuses the round's shared index set: %s", key)
            return "incompatible_model"
    return None


# -- the hub's federated state ----------------------------------------------------------------


class HubFederation:
    """What a hub keeps between rounds, in a directory of its own, written before it answers.

    Layout (``directory``, by default the detector's ``federation/``), replaced as a whole by
    ``persist.atomic_write_dir`` so the three files always belong together::

        state.json    {"format": 1, "held_id": int, "run_id": int|null,
                       "train_round": int|null, "global_round": int|null}
        held.npz      the copy of the global model the server believes the hub holds (float32)
        residual.npz  the error-feedback residual (float32; empty before the first round)

    A round's new state is written before its answer is returned, so a restart (or a kill)
    after the answer resumes with the residual and the copy the server counts on; a write that
    fails leaves memory and files as they were and the round is refused. A state that cannot be
    read (or no longer fits the model) is counted, logged and replaced by a clean one: the
    server then finds the hub holds nothing and sends the full model.
    """

    FORMAT = 1
    STATE_FILE = "state.json"
    HELD_FILE = "held.npz"
    RESIDUAL_FILE = "residual.npz"

    def __init__(self, directory: Path | None, shapes: Mapping[str, tuple[int, ...]]) -> None:
        """Start clean; ``load`` reads what was saved (``directory`` None: memory only)."""
        self.directory = directory
        self.shapes = {k: tuple(v) for k, v in shapes.items()}
        self.held: Arrays = {}
        self.held_id = -1
        self.residual: Arrays = {}
        self.run_id: int | None = None
        self.train_round: int | None = None  # last round trained and answered
        self.global_round: int | None = None  # round of the last global model adopted
        self.load_errors = 0
        self.write_errors = 0

    def load(self) -> None:
        """Read the saved state; a missing one is a clean start, an unreadable one too (logged)."""
        if self.directory is None:
            return
        try:
            recover_dir(self.directory)
            if not self.directory.exists():
                return
            meta = json.loads((self.directory / self.STATE_FILE).read_text())
            if not isinstance(meta, dict) or meta.get("format") != self.FORMAT:
                raise ValueError(
                    f"state format {meta.get('format') if isinstance(meta, dict) else meta!r}"
                )
            held = self._arrays(self.HELD_FILE)
            residual = self._arrays(self.RESIDUAL_FILE)
            if held and set(held) != set(self.shapes):
                raise ValueError("the held copy is not the model's tensors")
            held_id = int(meta["held_id"]) if held else -1
            run_id, train_round, global_round = (
                _opt_int(meta.get(k)) for k in ("run_id", "train_round", "global_round")
            )
        except Exception as err:  # whatever the files hold, the hub starts clean
            self.load_errors += 1
            LOGGER.warning(
                "GIoT starts its federated state afresh: the saved one is unreadable: %s", err
            )
            return
        self.held, self.held_id, self.residual = held, held_id, residual
        self.run_id, self.train_round, self.global_round = run_id, train_round, global_round

    def _arrays(self, name: str) -> Arrays:
        assert self.directory is not None
        with np.load(self.directory / name, allow_pickle=False) as data:
            arrays = {k: np.array(data[k], np.float32) for k in data.files}
        for k, a in arrays.items():
            if k not in self.shapes or a.shape != self.shapes[k] or not np.isfinite(a).all():
                raise ValueError(f"{name}: {k} {a.shape} does not fit the model")
        return arrays

    def _save(self, held: Arrays, held_id: int, residual: Arrays, meta: dict[str, Any]) -> None:
        """Write the whole state beside the old one and swap it in (``OSError``: old one kept)."""
        if self.directory is None:
            return
        state = {"format": self.FORMAT, "held_id": held_id, **meta}

        def fill(tmp: Path) -> None:
            (tmp / self.STATE_FILE).write_text(json.dumps(state))
            for name, arrays in ((self.HELD_FILE, held), (self.RESIDUAL_FILE, residual)):
                with (tmp / name).open("wb") as handle:
                    np.savez(handle, allow_pickle=False, **arrays)

        try:
            atomic_write_dir(self.directory, fill)
        except OSError as err:
            self.write_errors += 1
            LOGGER.error("GIoT could not save its federated state (the last one is kept): %s", err)
            raise

    def _meta(self, **changes: int | None) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "run_id": self.run_id,
            "train_round": self.train_round,
            "global_round": self.global_round,
        }
        return meta | changes

    def run_round(
        self,
        received: Mapping[str, np.ndarray],
        config: Mapping[str, object],
        train_fn: TrainFn,
        *,
        seed: int,
        default_steps: int,
        shared: Mapping[str, np.ndarray] | None = None,
        clock: Callable[[], float] = time.thread_time,
    ) -> RoundOutcome:
        """Run a train task's round from the held state; save what it leaves, then keep it.

        ``config`` may name the run (``run-id``): the residual of another run is dropped (its
        update belongs to another model's history); the held copy stays, since a new run's server
        holds no copy of the hub and sends the full model anyway. Raises ``OSError`` when the
        state could not be saved; nothing changes then.
        """
        run_id = _opt_int(config.get("run-id"))
        residual = self.residual
        if run_id is not None and self.run_id is not None and run_id != self.run_id:
            residual = {}
        outcome = gsfs_client_round(
            self.held,
            self.held_id,
            received,
            config,
            train_fn,
            residual,
            seed=seed,
            default_steps=default_steps,
            default_budget=DEFAULT_BUDGET,
            shared=shared,
            clock=clock,
        )
        if not outcome.downlink_ok:
            return outcome
        meta = self._meta(
            run_id=run_id if run_id is not None else self.run_id,
            train_round=_opt_int(config.get("server-round")),
        )
        self._save(outcome.held, outcome.held_id, outcome.residual, meta)
        self.held, self.held_id, self.residual = outcome.held, outcome.held_id, outcome.residual
        self.run_id, self.train_round = meta["run_id"], meta["train_round"]
        return outcome

    def adopt(self, params: Mapping[str, np.ndarray], config: Mapping[str, object]) -> None:
        """Hold the global model an evaluate task published; the next round trains from it.

        Its state id is the task's ``new-state`` if it names one, else the id held so far (the
        server's next downlink is relative to that copy; the tensors it leaves out moved less
        than its threshold, and the hub has them newer). A model of a round older than the one
        last trained on is not held (tasks that arrive out of order never roll the copy back).
        Raises ``OSError`` when the state could not be saved; nothing changes then.
        """
        server_round = _opt_int(config.get("server-round"))
        run_id = _opt_int(config.get("run-id"))
        same_run = run_id is None or self.run_id is None or run_id == self.run_id
        last = self.train_round
        if same_run and server_round is not None and last is not None and server_round < last:
            return
        held_id = int(config_number(config, "new-state", float(self.held_id)))
        held = _f32(params)
        residual = self.residual if same_run else {}
        meta = self._meta(
            run_id=run_id if run_id is not None else self.run_id, global_round=server_round
        )
        self._save(held, held_id, residual, meta)
        self.held, self.held_id, self.residual = held, held_id, residual
        self.run_id, self.global_round = meta["run_id"], server_round


def _opt_int(value: object) -> int | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
        return int(value)
    return None
