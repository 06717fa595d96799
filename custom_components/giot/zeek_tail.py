"""Tail a Zeek ``conn.log`` (TSV or JSON) into FlowRecords without blocking the event loop.

Zeek rotates its logs (rename, then a new file) and some setups truncate them in place
(``copytruncate``), so the tail follows the file by identity: a new inode means the old file is
read to its end and the new one from its beginning; a file shorter than what was read means it
was truncated and is read again from 0. Every file operation and all parsing run in the executor,
one poll at a time; a half-written last line waits in the engine parser until it is complete.
A missing or unreadable file is a status (not an exception) that the coordinator turns into a
repair issue.
"""

import asyncio
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import IO, Any

from homeassistant.core import CALLBACK_TYPE, HomeAssistant, callback
from homeassistant.helpers.event import async_track_time_interval

from giot_engine.records import FlowRecord, ParseStats
from giot_engine.zeek import ZeekLogParser

from .const import LOGGER

DEFAULT_INTERVAL = timedelta(seconds=5)
CHUNK = 1 << 20
MAX_BYTES_PER_POLL = 8 << 20  # a backlog is worked off over several polls, not one long job
HEADER_SCAN = 1 << 16  # where a file's header block is looked for when tailing from its end


class TailStatus(StrEnum):
    """Health of the tailed file, as the coordinator shows it (and raises repairs for)."""

    STARTING = "starting"
    OK = "ok"
    MISSING = "missing"
    UNREADABLE = "unreadable"
    NOT_A_FILE = "not_a_file"


@dataclass(slots=True)
class TailStats:
    """What the tail read; ``parse`` is the engine parser's accepted/rejected-by-reason count."""

    parse: ParseStats = field(default_factory=ParseStats)
    bytes_read: int = 0
    polls: int = 0
    rotations: int = 0
    truncations: int = 0
    callback_errors: int = 0


@dataclass(slots=True)
class _PollResult:
    flows: list[FlowRecord]
    status: TailStatus
    error: str | None
    more: bool  # the byte budget ran out before the end of the file


class _FileFollower:
    """Executor-side state: the open file, where we are in it, and the incremental parser.

    Only one poll runs at a time (the tail holds a lock), so no locking is needed here.
    """

    def __init__(self, path: str, stats: TailStats, from_start: bool) -> None:
        self.path = path
        self.stats = stats
        self.from_start = from_start
        self.parser = ZeekLogParser(stats.parse)
        self.handle: IO[bytes] | None = None
        self.ident: tuple[int, int] | None = None  # (st_dev, st_ino) of the open file
        self.pos = 0

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
        self.handle = None
        self.ident = None

    def poll(self, max_bytes: int) -> _PollResult:
        flows: list[FlowRecord] = []
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            # Rotated away and not yet recreated: what was left in the old file is still ours.
            # Whatever appears at the path from now on is new, so it is read from its start.
            self._finish_old(flows)
            self.from_start = True
            return _PollResult(flows, TailStatus.MISSING, f"{self.path} does not exist", False)
        except OSError as err:
            return _PollResult(flows, TailStatus.UNREADABLE, str(err), False)
        if not stat.S_ISREG(st.st_mode):
            return _PollResult(flows, TailStatus.NOT_A_FILE, f"{self.path} is not a file", False)
        ident = (st.st_dev, st.st_ino)
        if self.handle is not None and ident != self.ident:
            self.stats.rotations += 1
            self._finish_old(flows)
        if self.handle is None:
            try:
                self._open(ident)
            except OSError as err:
                return _PollResult(flows, TailStatus.UNREADABLE, str(err), False)
        assert self.handle is not None
        try:
            size = os.fstat(self.handle.fileno()).st_size
            # Truncated in place: the lines after the cut are new. (A file truncated and refilled
            # past our position between two polls cannot be told from an append; the first
            # line read may then be cut, which the parser rejects and counts.)
            if size < self.pos:
                self.stats.truncations += 1
                self.parser.reset()
                self.pos = 0
            more = self._read(flows, max_bytes)
        except OSError as err:
            self.close()
            return _PollResult(flows, TailStatus.UNREADABLE, str(err), False)
        return _PollResult(flows, TailStatus.OK, None, more)

    def _open(self, ident: tuple[int, int]) -> None:
        handle = open(self.path, "rb")  # noqa: SIM115  (kept open across polls to follow renames)
        self.handle, self.ident, self.pos = handle, ident, 0
        self.parser.reset()
        if not self.from_start:
            self._skip_history(handle)
        self.from_start = True  # every later file (after a rotation) is new from its first byte

    def _skip_history(self, handle: IO[bytes]) -> None:
        """Start after the last complete line, but learn the header block first.

        Replaying a big history at every Home Assistant start would alarm on old flows; the
        ``#fields`` header is still needed to read the lines that follow.
        """
        head = handle.read(HEADER_SCAN)
        lines = head.split(b"\n")[:-1]  # only complete lines
        for line in lines:
            if not line.startswith(b"#"):
                break
            self.parser.feed_line(line.decode("utf-8", "replace"))
        end = handle.seek(0, os.SEEK_END)
        start = max(0, end - CHUNK)
        handle.seek(start)
        cut = handle.read(end - start).rfind(b"\n")
        if cut >= 0:
            self.pos = start + cut + 1  # after the last complete line
        elif start == 0:
            self.pos = 0  # nothing but a half-written first line: read it once it completes
        else:
            self.pos = end  # a megabyte without a newline is no log line
        handle.seek(self.pos)

    def _read(self, flows: list[FlowRecord], max_bytes: int) -> bool:
        assert self.handle is not None
        self.handle.seek(self.pos)
        budget = max_bytes
        while budget > 0:
            chunk = self.handle.read(min(CHUNK, budget))
            if not chunk:
                return False
            self.pos += len(chunk)
            budget -= len(chunk)
            self.stats.bytes_read += len(chunk)
            flows.extend(row.record for row in self.parser.feed(chunk) if row.record is not None)
        return True

    def _finish_old(self, flows: list[FlowRecord]) -> None:
        """Read a rotated file to its end; its last line is complete now, even without newline."""
        if self.handle is None:
            return
        try:
            while self._read(flows, MAX_BYTES_PER_POLL):
                pass
            flows.extend(row.record for row in self.parser.flush() if row.record is not None)
        except OSError as err:
            LOGGER.debug("Could not finish the rotated Zeek log: %s", err)
        self.close()
        self.parser.reset()


class ZeekTail:
    """Follow one conn.log path; parsed flows go to ``on_flows`` in the event loop."""

    def __init__(
        self,
        hass: HomeAssistant,
        path: str,
        on_flows: Callable[[list[FlowRecord]], None],
        *,
        interval: timedelta = DEFAULT_INTERVAL,
        from_start: bool = False,
        max_bytes_per_poll: int = MAX_BYTES_PER_POLL,
        on_status: Callable[[TailStatus, str | None], None] | None = None,
    ) -> None:
        """Prepare to follow ``path``; ``from_start`` replays what the file already holds."""
        self.hass = hass
        self.path = path
        self.interval = interval
        self.max_bytes_per_poll = max_bytes_per_poll
        self._on_flows = on_flows
        self._on_status = on_status
        self._stats = TailStats()
        self._follower = _FileFollower(path, self._stats, from_start)
        self._lock = asyncio.Lock()
        self._unsub: CALLBACK_TYPE | None = None
        self._status = TailStatus.STARTING
        self._error: str | None = None
        self._stopped = False

    @property
    def stats(self) -> TailStats:
        """Counters for diagnostics."""
        return self._stats

    @property
    def status(self) -> TailStatus:
        """Whether the file is being read (``ok``) or why not."""
        return self._status

    @property
    def last_error(self) -> str | None:
        """The reason behind a non-ok status, for the repair issue's text."""
        return self._error

    async def async_start(self) -> None:
        """Read what is new right away, then poll at the interval."""
        self._stopped = False
        await self.async_poll()
        if not self._stopped:
            self._unsub = async_track_time_interval(
                self.hass, self._async_tick, self.interval, name="GIoT Zeek tail"
            )

    async def async_stop(self) -> None:
        """Stop polling and close the file (a poll under way finishes first)."""
        self._stopped = True
        if self._unsub is not None:
            self._unsub()
            self._unsub = None
        async with self._lock:
            await self.hass.async_add_executor_job(self._follower.close)

    async def _async_tick(self, _now: Any) -> None:
        if self._lock.locked():
            return  # the previous poll is still working off a backlog
        await self.async_poll()

    async def async_poll(self) -> None:
        """Read and parse what was appended since the last poll (also: rotation, truncation)."""
        async with self._lock:
            while not self._stopped:
                result = await self.hass.async_add_executor_job(
                    self._follower.poll, self.max_bytes_per_poll
                )
                self._stats.polls += 1
                self._set_status(result.status, result.error)
                self._deliver(result.flows)
                if not result.more:
                    break
                await asyncio.sleep(0)  # let the loop breathe between backlog slices

    @callback
    def _deliver(self, flows: list[FlowRecord]) -> None:
        if not flows:
            return
        try:
            self._on_flows(flows)
        except Exception:
            self._stats.callback_errors += 1
            LOGGER.exception("GIoT flow consumer failed on Zeek flows")

    @callback
    def _set_status(self, status: TailStatus, error: str | None) -> None:
        changed = status != self._status
        self._status, self._error = status, error
        if not changed:
            return
        if status is TailStatus.OK:
            LOGGER.info("Reading Zeek log %s", self.path)
        else:
            LOGGER.warning("Cannot read Zeek log %s: %s", self.path, error)
        if self._on_status is not None:
            self._on_status(status, error)


def _check_readable(path: str) -> str | None:
    if not os.path.exists(path):
        return "not_found"
    if not os.path.isfile(path):
        return "not_a_file"
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError:
        return "not_readable"
    return None


async def async_check_readable(hass: HomeAssistant, path: str) -> str | None:
    """Validate a conn.log path for the options flow: None if readable, else an error key.

    The keys are ``not_found``, ``not_a_file`` and ``not_readable`` (for translated form errors).
    """
    return await hass.async_add_executor_job(_check_readable, path)
