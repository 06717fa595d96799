"""Hand the GIL to Home Assistant's event loop while long Python work runs in another thread.

A thread that computes keeps the GIL until CPython's switch interval (5 ms) makes it let go, so
the event loop, waking during such work, would stall that long. A sleep of 0.1 ms releases the
GIL at once. Work in Home Assistant's executor (decoding datagrams, serialising state, scoring,
training) therefore calls ``GilYielder.maybe_yield`` in its inner loops, or ``yield_gil`` between
steps that are each short; the cost is a few percent of throughput.
"""

from __future__ import annotations

import time

SLEEP_S = 0.0001


def yield_gil() -> None:
    """Let any thread waiting for the GIL (the event loop's) run now."""
    time.sleep(SLEEP_S)


class GilYielder:
    """Yields the GIL at most every ``every_s`` seconds of work (``math.inf``: never)."""

    __slots__ = ("_last", "every_s")

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self._last = time.perf_counter()

    def maybe_yield(self) -> None:
        """Yield if ``every_s`` has passed since the last time; cheap enough for inner loops."""
        if time.perf_counter() - self._last >= self.every_s:
            yield_gil()
            self._last = time.perf_counter()
