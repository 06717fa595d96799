"""The detector in a process of its own, off Home Assistant's GIL.

Scoring and training are CPU work, much of it in Python: run in Home Assistant's executor they
share the GIL with the event loop, which then waits up to a switch interval (5 ms) whenever it
wakes during a batch. ``ProcessDetector`` runs an ``InProcessDetector`` in a child process instead
and is the coordinator's ``HubDetector`` over two pipes:

- The child is started with ``subprocess`` and a few lines of bootstrap, not ``multiprocessing``
  (whose spawn imports the parent's ``__main__``: all of Home Assistant). The bootstrap takes the
  parent's ``sys.path`` and imports this module, so the child loads ``giot_engine`` (numpy and
  the standard library) and nothing else; records and verdicts pickle across under the same
  module names on both sides.
- Requests ``(id, method, args)`` and replies ``(id, ok, value)`` are pickles framed by
  ``multiprocessing.connection.Connection``; a reader thread resolves the callers' futures. The
  callers are executor threads and block; the event loop never waits on the child (the two
  properties it reads are cached here).
- The child answers in order on its main thread, except ``train`` and the federation's tasks
  (``BACKGROUND``), which run one at a time in a thread of their own so that scoring goes on
  meanwhile (training works on copies and swaps the new weights in at the end, as it did in the
  executor; a federated round's arrays cross out of band like training's windows). They run at a
  lower priority (background analytics must not take a core from Home Assistant's loop). The
  child forwards its log records, and exits when its request pipe closes: when the detector is
  closed, or when Home Assistant is gone.
- Records travel in chunks of ``CHUNK``, so that pickling on either side never holds the GIL
  long (the engine's batches are cut-invariant: the verdicts are those of one batch). The
  detector's state, megabytes of it, never crosses: the child writes and reads the file itself.
- A child that dies fails the calls in flight with ``DetectorError``; the next call starts a fresh
  one, which loads the model and the last saved state again (what was learnt since that save is
  lost; nothing stored is). Children that keep dying young are restarted with a growing delay.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import logging
import math
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from contextlib import suppress
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

import numpy as np

from .federated import TaskAnswer
from .gil import GilYielder, yield_gil
from .hub_detector import (
    BatchResult,
    Description,
    HubVerdict,
    InProcessDetector,
    StateFile,
    WindowBatch,
)
from .model_manager import TrainResult
from .records import DeviceEvent, FlowRecord

LOGGER = logging.getLogger(__name__)
CHUNK = 256  # records per request: well under a millisecond to pickle or unpickle
NICE = 5
STOP_TIMEOUT_S = 5.0
YOUNG_S = 60.0  # a child that dies younger than this counts towards the restart delay
MAX_DELAY_S = 300.0
YIELD_EVERY_S = 0.001
# Environment of the child: GIoT's matrices are tiny; BLAS threads would only spin on cores
# Home Assistant needs (model_manager.limit_blas_threads says more).
# One malloc arena (glibc; musl has none): the training thread's own arena kept ~12 MB of RSS.
CHILD_ENV = {
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "MALLOC_ARENA_MAX": "1",
}

# Run by ``python -c`` with one argument, a JSON spec (see ``_Child``). The child searches the
# parent's module path, so it imports the very ``giot_engine`` Home Assistant loaded, wherever
# Home Assistant installed its requirements.
BOOTSTRAP = """\
import json, sys
spec = json.loads(sys.argv[1])
sys.path[:] = spec["path"]
from giot_engine.detector_process import serve
serve(spec)
"""

# Requests answered in a thread of their own, so that scoring goes on meanwhile.
BACKGROUND = frozenset({"train", "federated_train", "federated_evaluate"})
_T = TypeVar("_T")

Message: TypeAlias = tuple[int | None, Any, Any]
Request: TypeAlias = tuple[int, str, Any]


class DetectorError(RuntimeError):
    """The detector's process stopped or could not start; the next call starts a fresh one."""


# --- the child ------------------------------------------------------------------------------


def serve(spec: Mapping[str, Any]) -> None:
    """Child process: answer requests until the request pipe closes, then exit.

    Signals to the whole process group are ignored: a service manager stops Home Assistant
    with SIGTERM to all its processes at once (systemd), a terminal sends SIGINT, and the child
    must live until Home Assistant has had it save its state. It exits when the request pipe
    closes (on ``close``, or with Home Assistant's process); SIGKILL still ends it.
    """
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    with suppress(OSError):
        os.nice(int(spec["nice"]))
    requests = Connection(int(spec["requests"]), writable=False)
    replies = Connection(int(spec["replies"]), readable=False)
    server = _Server(replies, spec["directory"], int(spec["log_level"]), spec.get("base_model"))
    server.run(requests)
    os._exit(0)  # a training thread may be running: it is abandoned (its writes are atomic)


class _Forward(logging.Handler):
    """Send the child's log records to Home Assistant's log, through the parent."""

    def __init__(self, send: Callable[[Message], None]) -> None:
        super().__init__()
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = {
                **record.__dict__,
                "msg": record.getMessage(),
                "args": None,
                "exc_info": None,
                "exc_text": record.exc_text
                or (
                    logging.Formatter().formatException(record.exc_info)
                    if record.exc_info
                    else None
                ),
            }
        except Exception:
            self.handleError(record)
            return
        plain = {k: v for k, v in fields.items() if isinstance(v, str | int | float | None)}
        self._send((None, "log", plain))


class _Server:
    """The child's side: an ``InProcessDetector`` and the methods the parent may call."""

    def __init__(
        self,
        replies: Connection,
        directory: str | None,
        log_level: int,
        base_model: str | None = None,
    ) -> None:
        self._replies = replies
        self._staged: tuple[list[tuple[str, FlowRecord]], list[tuple[str, DeviceEvent]]] = ([], [])
        self._send_lock = threading.Lock()
        self._train_lock = threading.Lock()
        root = logging.getLogger()
        root.handlers[:] = [_Forward(self._send)]
        root.setLevel(log_level)
        logging.captureWarnings(True)
        self.detector = InProcessDetector(
            Path(directory) if directory is not None else None,
            Path(base_model) if base_model is not None else None,
        )
        # No event loop shares this interpreter: scoring need not hand the GIL over.
        self.detector.gil = GilYielder(math.inf)
        detector = self.detector
        self._handlers: dict[str, Callable[..., Any]] = {
            "observe_flows": detector.observe_flows,
            "observe_events": detector.observe_events,
            "tick": detector.tick,
            "forget": detector.forget,
            "describe": detector.describe,
            "set_time_zone": detector.set_time_zone,
            "time_zone": lambda: detector.engine.config.time_zone,
            "mark_normal": detector.mark_normal,
            "load_model": detector.load_model,
            "save_state": self._save_state,
            "load_state_file": detector.load_state_file,
            "state": detector.state,
            "load_state": detector.load_state,
            "model_params": detector.model_params,
            "train": self._train,
            "federated_train": partial(self._in_background, detector.federated_train),
            "federated_evaluate": partial(self._in_background, detector.federated_evaluate),
            "stage": self._stage,
            "observe_batch": self._observe_batch,
            "drain_windows": self._drain_windows,
            "info": lambda: (detector.model_version, detector.model_info),
            "loaded_modules": lambda: sorted(sys.modules),
        }

    def _send(self, message: Message) -> None:
        with self._send_lock:
            try:
                self._replies.send(message)
            except OSError:  # the parent is gone
                os._exit(0)

    def run(self, requests: Connection) -> None:
        """Answer requests in order; ``BACKGROUND`` ones in a thread, so that scoring goes on."""
        while True:
            try:
                call_id, method, args = _receive(requests)
            except (EOFError, OSError):
                return
            if method in BACKGROUND:
                threading.Thread(
                    target=self._answer, args=(call_id, method, args), name="giot-train"
                ).start()
            else:
                self._answer(call_id, method, args)

    def _answer(self, call_id: int, method: str, args: Sequence[Any]) -> None:
        try:
            value = self._handlers[method](*args)
        except Exception as err:
            err.add_note("In GIoT's detector process:\n" + "".join(traceback.format_exception(err)))
            self._fail(call_id, err)
            return
        try:
            self._send((call_id, True, value))
        except Exception as err:
            self._fail(call_id, err)

    def _fail(self, call_id: int, err: BaseException) -> None:
        try:
            self._send((call_id, False, err))
        except Exception:
            self._send((call_id, False, RuntimeError(f"{type(err).__name__}: {err}")))

    def _train(self, windows: np.ndarray, seed: int) -> TrainResult:
        return self._in_background(self.detector.train, windows, seed)

    def _in_background(self, method: Callable[..., _T], *args: Any) -> _T:
        """Run training (or a federated task) in its thread, at the lowest priority."""
        _background()
        with self._train_lock:  # one run at a time, however many are asked for
            try:
                return method(*args)
            finally:
                _release_memory()

    def _save_state(self, path: Path) -> OSError | None:
        try:
            return self.detector.save_state(path)
        finally:
            _release_memory()  # the serialised text: megabytes, several copies

    def _drain_windows(self) -> WindowBatch:
        try:
            return self.detector.drain_windows()
        finally:
            _release_memory()  # a minute of windows and scoring's temporaries, freed

    def _stage(
        self, flows: list[tuple[str, FlowRecord]], events: list[tuple[str, DeviceEvent]]
    ) -> None:
        """Take one chunk of the batch ``observe_batch`` scores next."""
        self._staged[0].extend(flows)
        self._staged[1].extend(events)

    def _observe_batch(self, bars: tuple[float, float], away: bool) -> BatchResult:
        (flows, events), self._staged = self._staged, ([], [])
        return self.detector.observe_batch(flows, events, bars, away)


def _background() -> None:
    """Let the calling thread (training) run only when no other work wants the CPU.

    Training is the least urgent work of all (a nightly run of minutes), and its numpy steps
    would otherwise take a core Home Assistant's event loop wakes up to. Linux applies both
    settings to the calling thread only; where the scheduling class cannot be set (musl),
    the thread's nice value still goes to the lowest priority.
    """
    with suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    with suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def _release_memory() -> None:
    """Hand the heap that training or a state save freed back to the system.

    Training's arrays (logits of a batch: megabytes each) and the state's JSON text are freed at
    the end, but glibc keeps freed heap in the process: 25 MB of RSS for nothing after a training
    run. musl returns it by itself and has no ``malloc_trim``.
    """
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


# --- the parent -----------------------------------------------------------------------------


class _Calls:
    """The calls in flight to one child, shared by the callers and the reader thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: dict[int, Future[Any]] = {}
        self.alive = True
        self.stopping = False
        self.exit_code: int | None = None

    def add(self, call_id: int) -> Future[Any]:
        future: Future[Any] = Future()
        with self.lock:
            if not self.alive:
                raise DetectorError(self.reason())
            self.pending[call_id] = future
        return future

    def resolve(self, call_id: int, ok: bool, value: Any) -> None:
        with self.lock:
            future = self.pending.pop(call_id, None)
        if future is None:
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def fail(self, exit_code: int | None) -> None:
        """Fail every call in flight: the child is gone."""
        with self.lock:
            self.alive, self.exit_code = False, exit_code
            pending, self.pending = self.pending, {}
        if not self.stopping:
            LOGGER.error("%s; it is started again for the next batch", self.reason())
        for future in pending.values():
            future.set_exception(DetectorError(self.reason()))

    def reason(self) -> str:
        if self.stopping:
            return "GIoT's detector process was stopped"
        return f"GIoT's detector process stopped (exit status {self.exit_code})"


def _send(requests: Connection, message: Request) -> None:
    """Pickle a request with its arrays out of band, and send the arrays as they are.

    ``Connection.send`` pickles an array's bytes into the message in one C call under the GIL
    (training hands over megabytes of windows: ~10 ms with the event loop waiting). Pickle
    protocol 5 leaves them out; they go through the pipe from their own memory, in ``write``
    calls that release the GIL.
    """
    buffers: list[pickle.PickleBuffer] = []
    payload = pickle.dumps(message, protocol=5, buffer_callback=buffers.append)
    requests.send_bytes(struct.pack("!I", len(buffers)))
    requests.send_bytes(payload)
    for buffer in buffers:
        requests.send_bytes(buffer.raw())


def _receive(requests: Connection) -> Request:
    """Inverse of ``_send`` (child side): arrays arrive writable, as the caller had them."""
    (count,) = struct.unpack("!I", requests.recv_bytes())
    payload = requests.recv_bytes()
    buffers = [bytearray(requests.recv_bytes()) for _ in range(count)]
    message: Request = pickle.loads(payload, buffers=buffers)
    return message


def _read(replies: Connection, calls: _Calls, proc: subprocess.Popen[bytes]) -> None:
    """Reader thread: resolve the callers' futures until the child's reply pipe closes.

    It holds neither the request pipe nor the detector: a detector dropped without ``close``
    closes the request pipe, the child exits, and so does this thread.
    """
    gil = GilYielder(YIELD_EVERY_S)
    try:
        while True:
            try:
                call_id, ok, value = replies.recv()
            except (EOFError, OSError):
                break
            except Exception:  # a reply that does not unpickle: its caller cannot be told
                LOGGER.exception("GIoT's detector process sent an unreadable reply")
                proc.kill()
                break
            if call_id is None:  # a log record of the child, where and when it was made
                record = logging.makeLogRecord(value)
                logger = logging.getLogger(record.name)
                if logger.isEnabledFor(record.levelno):
                    logger.handle(record)
            else:
                calls.resolve(call_id, ok, value)
            # Unpickling is work too: let the event loop's thread have the GIL now and then.
            gil.maybe_yield()
    finally:
        replies.close()
        calls.fail(proc.wait())


class _Child:
    """One running detector process, its request pipe and its reader thread."""

    def __init__(self, directory: Path | None, nice: int, base_model: Path | None = None) -> None:
        request_r, request_w = os.pipe()
        reply_r, reply_w = os.pipe()
        spec = {
            "path": list(sys.path),
            "requests": request_r,
            "replies": reply_w,
            "directory": str(directory) if directory is not None else None,
            "base_model": str(base_model) if base_model is not None else None,
            "nice": nice,
            "log_level": logging.getLogger("giot_engine").getEffectiveLevel(),
        }
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", BOOTSTRAP, json.dumps(spec)],
                stdin=subprocess.DEVNULL,
                pass_fds=(request_r, reply_w),
                env=os.environ | CHILD_ENV,
            )
        except OSError as err:
            os.close(request_w)
            os.close(reply_r)
            raise DetectorError(f"GIoT's detector process could not start: {err}") from err
        finally:
            os.close(request_r)
            os.close(reply_w)
        self.started = time.monotonic()
        self.requests = Connection(request_w, readable=False)
        self.calls = _Calls()
        self._ids = itertools.count()
        self.reader = threading.Thread(
            target=_read,
            args=(Connection(reply_r, writable=False), self.calls, self.proc),
            name=f"giot-detector-{self.proc.pid}",
            daemon=True,
        )
        self.reader.start()

    def submit(self, method: str, args: Sequence[Any]) -> Future[Any]:
        """Send one request (the caller serialises sends); its future holds the reply."""
        call_id = next(self._ids)
        future = self.calls.add(call_id)
        try:
            _send(self.requests, (call_id, method, args))
        except OSError:  # the child is gone: its reader fails the future (with the exit status)
            self.reader.join(STOP_TIMEOUT_S)
            self.calls.resolve(call_id, False, DetectorError(self.calls.reason()))
        return future

    def stop(self) -> None:
        """Close the request pipe (the child finishes the request at hand and exits); reap it."""
        self.calls.stopping = True
        self.requests.close()
        self.reader.join(STOP_TIMEOUT_S)
        if self.reader.is_alive():  # stuck in a long request: no more waiting
            self.proc.kill()
            self.reader.join()


class ProcessDetector:
    """The coordinator's ``HubDetector``, scoring and training in a child process.

    Every method blocks its (executor) thread until the child answered; ``model_version`` and
    ``model_info`` answer at once from what the child said after loading the model, training and
    saving the state.
    """

    def __init__(
        self, directory: Path | None = None, *, nice: int = NICE, base_model: Path | None = None
    ) -> None:
        """Nothing starts until the first call (in the executor).

        ``base_model``: the base model directory the hub starts from (``ModelManager``).
        """
        self.directory = directory
        self.base_model = base_model
        self.nice = nice
        self._lock = threading.Lock()  # starting children and sending requests
        self._child: _Child | None = None
        self._closed = False
        self._young_deaths = 0
        self._next_start = -math.inf
        self._model_loaded = False
        self._state_path: Path | None = None
        self._version = ""
        self._info: dict[str, Any] = {}
        self._time_zone: str | None = None  # told to every child it starts

    # -- the child's life ------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The running child's process id (None before the first call and after ``close``)."""
        child = self._child
        return child.proc.pid if child is not None and child.calls.alive else None

    def _running(self) -> _Child:
        """Return the live child; start one (with the model and state again) if need be."""
        if self._closed:
            raise DetectorError("GIoT's detector is closed")
        child = self._child
        if child is not None and child.calls.alive:
            return child
        if child is not None:
            self._child = None
            child.stop()
            young = time.monotonic() - child.started < YOUNG_S
            self._young_deaths = self._young_deaths + 1 if young else 1
            delay = 0.0 if self._young_deaths <= 1 else 2.0 ** (self._young_deaths - 2)
            self._next_start = time.monotonic() + min(delay, MAX_DELAY_S)
        if (wait := self._next_start - time.monotonic()) > 0:
            raise DetectorError(
                f"GIoT's detector process keeps stopping; next start in {wait:.0f} s"
            )
        child = self._child = _Child(self.directory, self.nice, self.base_model)
        if self._model_loaded or self._state_path is not None:
            LOGGER.info("GIoT's detector process started again; loading the model and state")
        if self._time_zone is not None:
            child.submit("set_time_zone", (self._time_zone,)).result()
        if self._model_loaded:
            child.submit("load_model", ()).result()
        if self._state_path is not None:
            child.submit("load_state_file", (self._state_path,)).result()
        if self._model_loaded:
            self._version, self._info = child.submit("info", ()).result()
        return child

    def _submit(self, method: str, *args: Any) -> Future[Any]:
        with self._lock:
            return self._running().submit(method, args)

    def _call(self, method: str, *args: Any) -> Any:
        return self._submit(method, *args).result()

    def _chunked(self, requests: Sequence[tuple[str, tuple[Any, ...]]]) -> list[Any]:
        """Send requests back to back to one child; return their replies, in order."""
        with self._lock:  # no other request in between
            child = self._running()
            futures = []
            for method, args in requests:
                futures.append(child.submit(method, args))
                if len(requests) > 1:
                    yield_gil()  # let the event loop in between pickles
        return [future.result() for future in futures]

    def _observe(self, method: str, items: Sequence[Any]) -> list[HubVerdict]:
        """Score in requests of ``CHUNK`` records."""
        chunks = [(method, (items[i : i + CHUNK],)) for i in range(0, len(items), CHUNK)]
        return [verdict for verdicts in self._chunked(chunks) for verdict in verdicts]

    def _refresh(self) -> None:
        """Cache what the event loop reads; a child gone meanwhile leaves the last values."""
        with suppress(DetectorError):
            self._version, self._info = self._call("info")

    def close(self) -> None:
        """Stop the child (it exits once the request at hand is done) and reap it."""
        with self._lock:
            self._closed = True
            child, self._child = self._child, None
        if child is not None:
            child.stop()

    # -- the HubDetector protocol ----------------------------------------------------------------

    @property
    def model_version(self) -> str:
        """Version of the model that scores, as the child said last."""
        return self._version

    @property
    def model_info(self) -> dict[str, Any]:
        """Which scorer is active, model size, training state, as the child said last."""
        return self._info

    def observe_flows(self, items: Sequence[tuple[str, FlowRecord]]) -> list[HubVerdict]:
        """Score flows attributed to devices, updating their context."""
        return self._observe("observe_flows", items) if items else []

    def observe_events(self, items: Sequence[tuple[str, DeviceEvent]]) -> list[HubVerdict]:
        """Score device events, updating their context."""
        return self._observe("observe_events", items) if items else []

    def observe_batch(
        self,
        flows: Sequence[tuple[str, FlowRecord]],
        events: Sequence[tuple[str, DeviceEvent]],
        bars: tuple[float, float],
        away: bool,
    ) -> BatchResult:
        """Score a batch in the child, which sends back only what the coordinator applies.

        The records go over in chunks of ``CHUNK``; per-record verdicts never cross back.
        """
        requests: list[tuple[str, tuple[Any, ...]]] = [
            ("stage", (flows[i : i + CHUNK], [])) for i in range(0, len(flows), CHUNK)
        ]
        requests += [("stage", ([], events[i : i + CHUNK])) for i in range(0, len(events), CHUNK)]
        requests.append(("observe_batch", (bars, away)))
        result = self._chunked(requests)[-1]
        assert isinstance(result, BatchResult)
        return result

    def tick(self, now: float) -> list[HubVerdict]:
        """Absence at ``now``."""
        verdicts: list[HubVerdict] = self._call("tick", now)
        return verdicts

    def forget(self, key: str) -> None:
        """Drop everything learnt about a device."""
        self._call("forget", key)

    def drain_windows(self) -> WindowBatch:
        """Hand over the token windows produced since the last call."""
        windows: WindowBatch = self._call("drain_windows")
        return windows

    def describe(self, device: str) -> Description:
        """Describe what the device normally does."""
        description: Description = self._call("describe", device)
        return description

    def set_time_zone(self, time_zone: str | None) -> None:
        """Tell the child the home's time zone (and every child started after it)."""
        self._time_zone = time_zone
        self._call("set_time_zone", time_zone)

    def time_zone(self) -> str | None:
        """Ask the child which time zone its detector follows (tests: it arrived)."""
        zone: str | None = self._call("time_zone")
        return zone

    def mark_normal(self, device: str) -> np.ndarray:
        """Learn the device's recent alarming pattern as normal; return its windows."""
        windows: np.ndarray = self._call("mark_normal", device)
        return windows

    def train(self, windows: np.ndarray, seed: int) -> TrainResult:
        """Train in the child (scoring goes on); raise OSError when the model was not saved."""
        try:
            result: TrainResult = self._call("train", windows, seed)
        finally:
            self._refresh()  # a failed write changes the info too (disk full)
        return result

    def federated_train(
        self,
        config: Mapping[str, int | float | str | bool],
        arrays: Mapping[str, np.ndarray],
        windows: np.ndarray,
        seed: int,
    ) -> TaskAnswer:
        """Run a node's train task in the child (scoring goes on; the scoring model stays)."""
        answer: TaskAnswer = self._call(
            "federated_train", dict(config), dict(arrays), windows, seed
        )
        return answer

    def federated_evaluate(
        self,
        config: Mapping[str, int | float | str | bool],
        arrays: Mapping[str, np.ndarray],
        windows: np.ndarray,
    ) -> TaskAnswer:
        """Check and load the published global model in the child (scoring goes on meanwhile)."""
        try:
            answer: TaskAnswer = self._call(
                "federated_evaluate", dict(config), dict(arrays), windows
            )
        finally:
            self._refresh()  # the model that scores, or the write error, changed
        return answer

    def load_model(self) -> None:
        """Read the saved model in the child (and again in every child started later)."""
        self._call("load_model")
        self._model_loaded = True
        self._refresh()

    def save_state(self, path: Path) -> OSError | None:
        """Have the child write its state to ``path``; a later child starts from that file."""
        err: OSError | None = self._call("save_state", path)
        self._state_path = path
        self._refresh()
        return err

    def load_state_file(self, path: Path) -> StateFile:
        """Have the child restore the state saved at ``path`` (and every later child too)."""
        status: StateFile = self._call("load_state_file", path)
        self._state_path = path
        return status

    def state(self) -> dict[str, Any]:
        """Fetch the child's whole state (megabytes over the pipe: tests, not the coordinator)."""
        state: dict[str, Any] = self._call("state")
        return state

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore a whole state in the child (tests, not the coordinator)."""
        self._call("load_state", state)

    # -- introspection (tests) ----------------------------------------------------------------

    def model_params(self) -> dict[str, np.ndarray]:
        """Fetch the weights that score in the child now."""
        params: dict[str, np.ndarray] = self._call("model_params")
        return params

    def loaded_modules(self) -> list[str]:
        """Name the modules the child imported."""
        modules: list[str] = self._call("loaded_modules")
        return modules
