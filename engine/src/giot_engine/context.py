"""Score records in their device's recent context, many devices per model call.

A hub sees a few records per second from each of tens of devices. Scored one at a time, a small
transformer spends its time in Python and in tiny matrix products (about 300 µs per record);
batched across devices, the same arithmetic runs at about half of the core's matmul peak
(docs/results/cost.md). Two ways, the same contract:

- a ``CachedScorer`` (``GIoTModel``, or a host's blend of it) keeps a KV cache per device (rows
  of one pool): a record costs only its own tokens. The context is a window that starts with
  ``[BOS]`` and the device's last ``carry_tokens`` tokens and grows by each record until the next
  one would not fit in the model's positions; then it starts again (those carried tokens are
  recomputed at their new positions). So a record sees between ``carry_tokens`` and
  ``context_tokens - 1`` tokens of its device's past; ``carry_tokens = keep`` gives the sliding
  window exactly, at the cost of a whole window per record.
- any other ``TokenScorer`` (the bigram fallback) gets the sliding window: the device's last
  ``keep`` tokens, sequences of equal length batched into one call.

Cached keys/values belong to the weights that computed them, so setting ``model`` drops every
cache; the next record of each device starts a window from the history it brings along.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .model import GIoTConfig, KVCache
from .tokenizer import BOS_ID, PAD_ID

# widths new tokens are padded to: a round needs few shapes (padding costs < 1/3 of the work)
_WIDTHS = (4, 8, 12, 16, 24, 32, 40, 48, 56, 64)
_ROWS_PER_CALL = 256  # windows per token_nll call on the sliding path (a few ms of numpy at most)


class TokenScorer(Protocol):
    """What the detector needs from a model: NLL of each next token in a batch of windows."""

    def token_nll(self, ids: np.ndarray) -> np.ndarray:
        """(B, T) int ids -> (B, T-1) NLL of ids[:, 1:] given the tokens before each."""
        ...


# (pool rows, their context lengths, new token ids (b, t), real tokens per row or None: all)
Group = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]


@runtime_checkable
class CachedScorer(TokenScorer, Protocol):
    """A transformer: records scored against per-device KV caches, attention to show.

    ``ContextScorer`` and the detector's explanations take this path by type; any other
    ``TokenScorer`` (bigram counts) gets whole sliding windows and no attention.
    """

    @property
    def config(self) -> GIoTConfig:
        """The model's shape (positions bound a window)."""
        ...

    def new_cache(self, batch: int) -> KVCache:
        """Return an empty cache of ``batch`` rows (a pool of devices' contexts)."""
        ...

    def score_groups(self, cache: KVCache, groups: Sequence[Group]) -> list[np.ndarray]:
        """NLL of each group's new tokens, appended to their rows (``GIoTModel.score_groups``)."""
        ...

    def attention(self, ids: np.ndarray) -> np.ndarray:
        """Attention probabilities (n_layer, n_head, T, T) of one window (T,)."""
        ...


# a request: (device, the device's tokens before this batch (newest last), the record's token ids)
Request = tuple[str, Sequence[int], list[int]]


@dataclass(slots=True)
class _Window:
    """A device's KV-cached window: ``tokens`` from position 0, the first ``cached`` in the pool."""

    slot: int
    tokens: list[int] = field(default_factory=list)
    cached: int = 0


@dataclass(slots=True)
class _Segment:
    """Tokens a device appends to its pool row in one call, and which requests they answer."""

    window: _Window
    past: int
    ids: list[int]
    answers: list[tuple[int, int, int]] = field(default_factory=list)  # (request, start, length)


class ContextScorer:
    """NLL of each record's tokens given its device's recent tokens, batched across devices."""

    def __init__(
        self,
        model: TokenScorer,
        context_tokens: int,
        keep: int,
        carry_tokens: int,
        max_devices: int = 128,
    ) -> None:
        """Windows of ``context_tokens`` positions ([BOS] included).

        ``keep``: most history tokens a record may see; ``carry_tokens``: history a new KV-cached
        window starts with; ``max_devices``: windows kept cached (least recently used go first).
        """
        self.context_tokens = context_tokens
        self.keep = keep
        self.carry = max(0, min(carry_tokens, keep))
        self.max_devices = max_devices
        self._windows: OrderedDict[str, _Window] = OrderedDict()  # least recently used first
        self._full: set[str] = set()  # devices whose next window starts with ``keep`` tokens
        self._pool: KVCache | None = None  # the current model's, rows = slots
        self._free: list[int] = []
        self._between: Callable[[], object] = _nothing
        self._model = model
        self._cached = _as_cached(model)
        self._next: TokenScorer | None = None  # set by another thread, taken by the next score
        self._swap = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        """Leave the lock out: a copy (a detector replayed twice from one history) gets its own."""
        state = dict(self.__dict__)
        del state["_swap"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._swap = threading.Lock()

    @property
    def model(self) -> TokenScorer:
        """The scorer; a new one drops every cached window (they hold the old weights' keys).

        A host may set it from another thread (training finishes while a batch is scored): the
        batch in flight ends with the weights it began with, the next one starts with the new.
        """
        return self._next or self._model

    @model.setter
    def model(self, model: TokenScorer) -> None:
        with self._swap:
            self._next = model

    def _take_new_model(self) -> None:
        with self._swap:
            model, self._next = self._next, None
        if model is not None:
            self._model, self._cached = model, _as_cached(model)
            self.clear()

    def clear(self) -> None:
        """Forget every cached window (e.g. after the detector's state was replaced)."""
        self._windows.clear()
        self._full.clear()
        self._pool, self._free = None, []

    def forget(self, device: str, *, full: bool = False) -> None:
        """Drop one device's window (it starts afresh from the history it brings).

        ``full``: the next window starts with as much history as a record may see (``keep``)
        instead of ``carry_tokens``: where a window was dropped to take a record out of it, the
        records after it see as much context as a live window gives them, not a short restart.
        """
        if full:
            self._full.add(device)
        else:
            self._full.discard(device)
        window = self._windows.pop(device, None)
        if window is not None:
            self._free.append(window.slot)

    @property
    def cached_devices(self) -> int:
        """Devices that hold a KV-cached window now."""
        return len(self._windows)

    def score(
        self, requests: Sequence[Request], between: Callable[[], object] | None = None
    ) -> list[np.ndarray]:
        """NLL (float64, one per token) of each request's ids, in request order.

        Requests of one device must come in stream order; each sees the ones before it. The
        history of a device is read only when the scorer holds no window for it. ``between`` is
        called now and then (see ``Detector.process_many``).
        """
        self._between = between or _nothing
        self._take_new_model()
        model = self._cached
        if model is None:
            return self._score_windows(requests)
        # at most max_devices windows per model call; a device's window evicted between calls
        # restarts from its history plus what it appended in the earlier calls
        out: list[np.ndarray] = []
        chunk: list[Request] = []
        in_chunk: set[str] = set()
        appended: dict[str, list[int]] = {}
        for device, history, ids in requests:
            seen: Sequence[int] = history
            if device not in in_chunk:
                if len(in_chunk) == self.max_devices:
                    out += self._score_cached(model, chunk)
                    chunk, in_chunk = [], set()
                in_chunk.add(device)
                if before := appended.get(device):
                    seen = [*history, *before]
            chunk.append((device, seen, ids))
            tail = appended.setdefault(device, [])
            tail.extend(ids)
            del tail[: max(0, len(tail) - self.keep)]
        return out + self._score_cached(model, chunk)

    # -- any token_nll scorer: sliding windows, equal lengths batched --------------------------
    def _score_windows(self, requests: Sequence[Request]) -> list[np.ndarray]:
        streams: dict[str, list[int]] = {}
        groups: dict[int, list[tuple[int, list[int]]]] = {}
        for i, (device, history, ids) in enumerate(requests):
            self._between()
            stream = streams.get(device)
            if stream is None:
                stream = streams[device] = _last(history, self.keep)
            room = min(self.keep, self.context_tokens - 1 - len(ids))
            seq = [BOS_ID, *_last(stream, room), *ids]
            groups.setdefault(len(seq), []).append((i, seq))
            stream.extend(ids)
            del stream[: max(0, len(stream) - self.keep)]
        out: list[np.ndarray] = [np.empty(0)] * len(requests)
        for members in groups.values():
            for lo in range(0, len(members), _ROWS_PER_CALL):  # the host gets a turn in between
                part = members[lo : lo + _ROWS_PER_CALL]
                batch = np.asarray([seq for _, seq in part], dtype=np.int64)
                nll = np.asarray(self._model.token_nll(batch), dtype=np.float64)
                for row, (i, _) in enumerate(part):
                    out[i] = nll[row, nll.shape[1] - len(requests[i][2]) :]
                self._between()
        return out

    # -- CachedScorer: one KV-cached window per device, rows of one pool ----------------------
    def _score_cached(self, model: CachedScorer, requests: Sequence[Request]) -> list[np.ndarray]:
        if not requests:
            return []
        plans = self._plan(model.config.n_positions, requests)
        pool = self._ensure_pool(model)
        out: list[np.ndarray] = [np.empty(0)] * len(requests)
        for k in range(max(len(s) for s in plans.values())):
            self._run(model, pool, [s[k] for s in plans.values() if k < len(s)], out)
            self._between()
        return out

    def _plan(self, positions: int, requests: Sequence[Request]) -> dict[str, list[_Segment]]:
        """Per device, the runs of tokens to append: a new run wherever its window restarts."""
        capacity = min(self.context_tokens, positions)
        plans: dict[str, list[_Segment]] = {}
        for i, (device, history, ids) in enumerate(requests):
            self._between()
            segments = plans.get(device)
            if segments is None:
                segments = plans[device] = []
                window = self._window(device, history)
            else:
                window = segments[-1].window
            if len(window.tokens) + len(ids) > capacity:  # full: start again, carrying the tail
                tail = _last(window.tokens[1:], self.carry)
                window.tokens, window.cached = [BOS_ID, *tail], 0
            if not segments or segments[-1].past + len(segments[-1].ids) != window.cached:
                segments.append(_Segment(window, window.cached, window.tokens[window.cached :]))
            seg = segments[-1]
            seg.answers.append((i, len(seg.ids), len(ids)))
            seg.ids.extend(ids)
            window.tokens.extend(ids)
            window.cached = len(window.tokens)
        return plans

    def _run(
        self, model: CachedScorer, pool: KVCache, segments: list[_Segment], out: list[np.ndarray]
    ) -> None:
        """Score one segment per device in one model call (grouped by padded width)."""
        by_width: dict[int, list[_Segment]] = {}
        for seg in segments:
            width = next(w for w in _WIDTHS if w >= len(seg.ids))
            by_width.setdefault(width, []).append(seg)
        groups: list[Group] = []
        members = []
        for width, group in sorted(by_width.items()):
            lengths = np.fromiter((len(s.ids) for s in group), np.intp, len(group))
            ids = np.full((len(group), width), PAD_ID, np.int64)
            for row, seg in enumerate(group):
                ids[row, : len(seg.ids)] = seg.ids
            rows = np.fromiter((s.window.slot for s in group), np.intp, len(group))
            past = np.fromiter((s.past for s in group), np.intp, len(group))
            groups.append((rows, past, ids, lengths))
            members.append(group)
        for group, nll in zip(members, model.score_groups(pool, groups), strict=True):
            for row, seg in enumerate(group):
                for i, start, length in seg.answers:
                    out[i] = np.asarray(nll[row, start : start + length], np.float64)

    def _window(self, device: str, history: Sequence[int]) -> _Window:
        window = self._windows.get(device)
        if window is not None:
            self._windows.move_to_end(device)
            return window
        while len(self._windows) >= self.max_devices:  # not one of this call's: they are newer
            self.forget(next(iter(self._windows)))
        slot = self._free.pop() if self._free else len(self._windows)
        carry = self.keep if device in self._full else self.carry
        self._full.discard(device)
        window = self._windows[device] = _Window(slot, [BOS_ID, *_last(history, carry)], 0)
        return window

    def _ensure_pool(self, model: CachedScorer) -> KVCache:
        need = max(w.slot for w in self._windows.values()) + 1
        have = 0 if self._pool is None else int(self._pool.last.shape[0])
        if self._pool is not None and need <= have:
            return self._pool
        size = max(need, min(max(2 * have, 16), self.max_devices))
        pool = model.new_cache(size)
        if self._pool is not None:  # keep what the old rows hold
            for new, old in zip(
                pool.keys + pool.values, self._pool.keys + self._pool.values, strict=True
            ):
                new[:have] = old
            pool.last[:have] = self._pool.last
            pool.last_token[:have] = self._pool.last_token
            pool.scratch = self._pool.scratch
        self._pool = pool
        return pool


def _last(tokens: Sequence[int], n: int) -> list[int]:
    """Return the last ``n`` tokens (none for n <= 0)."""
    return list(tokens)[max(0, len(tokens) - n) :] if n > 0 else []


def _as_cached(model: TokenScorer) -> CachedScorer | None:
    """Return the model if it is a ``CachedScorer``, else None.

    Asked once per model: Python 3.11 takes ~12 µs to check a runtime protocol.
    """
    return model if isinstance(model, CachedScorer) else None


def _nothing() -> None:
    """Default ``between``: no host to yield to."""
