"""Tailing a real conn.log: appends, partial lines, rotation, truncation, missing files."""

import json
import os
from datetime import timedelta
from pathlib import Path

from homeassistant.core import HomeAssistant
from homeassistant.util import dt as dt_util
from pytest_homeassistant_custom_component.common import async_fire_time_changed

from custom_components.giot.zeek_tail import TailStatus, ZeekTail, async_check_readable
from giot_engine.records import FlowRecord
from giot_engine.zeek import CONN_FIELDS

HEADER = (
    "#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n#path\tconn\n"
    "#fields\t"
    + "\t".join(CONN_FIELDS)
    + "\n#types\t"
    + "\t".join(["string"] * len(CONN_FIELDS))
    + "\n"
)


def line(n: int, service: str = "dns") -> str:
    """One conn.log TSV line whose uid and originator port say which it is."""
    values = [
        f"{1_763_900_000 + n}.5", f"C{n:05d}", "192.168.1.20", str(40000 + n), "192.168.1.1",
        "53", "udp", service, "0.01", "40", "120", "SF", "T", "T", "0", "Dd", "1", "68", "1",
        "148", "-",
    ]  # fmt: skip
    return "\t".join(values) + "\n"


class Sink:
    """Collects what the tail delivers, as the coordinator's callback would."""

    def __init__(self) -> None:
        self.flows: list[FlowRecord] = []
        self.batches = 0
        self.statuses: list[tuple[TailStatus, str | None]] = []

    def __call__(self, flows: list[FlowRecord]) -> None:
        self.batches += 1
        self.flows.extend(flows)

    def on_status(self, status: TailStatus, error: str | None) -> None:
        self.statuses.append((status, error))

    def uids(self) -> list[str]:
        return [flow.uid for flow in self.flows]


def append(path: Path, text: str) -> None:
    with path.open("a") as handle:
        handle.write(text)


async def test_appends_and_partial_lines(hass: HomeAssistant, tmp_path: Path) -> None:
    """Only complete lines are parsed; a half-written line waits until its newline."""
    log = tmp_path / "conn.log"
    full = line(3)
    log.write_text(HEADER + line(1) + line(2) + full[:25])
    sink = Sink()
    tail = ZeekTail(hass, str(log), sink, from_start=True)
    await tail.async_poll()
    assert sink.uids() == ["C00001", "C00002"]
    assert sink.flows[0].service == "dns"
    assert sink.flows[0].orig_p == 40001
    assert tail.status is TailStatus.OK

    await tail.async_poll()  # nothing new: no empty delivery
    assert sink.batches == 1

    append(log, full[25:-1])  # still no newline
    await tail.async_poll()
    assert sink.uids() == ["C00001", "C00002"]
    append(log, "\n" + "garbage that is no flow\n" + line(4))
    await tail.async_poll()
    assert sink.uids() == ["C00001", "C00002", "C00003", "C00004"]
    assert tail.stats.parse.accepted == 4
    assert tail.stats.parse.total_rejected == 1
    assert tail.stats.bytes_read == log.stat().st_size
    await tail.async_stop()


async def test_starts_at_the_end_but_keeps_the_header(hass: HomeAssistant, tmp_path: Path) -> None:
    """History is not replayed at start, yet the header read from the top names the columns."""
    log = tmp_path / "conn.log"
    full = line(3, service="http")
    log.write_text(HEADER + line(1) + line(2) + full[:30])
    sink = Sink()
    tail = ZeekTail(hass, str(log), sink)
    await tail.async_poll()
    assert sink.flows == []
    append(log, full[30:] + line(4, service="ssl"))
    await tail.async_poll()
    # the line that was half written at start is completed, not lost
    assert sink.uids() == ["C00003", "C00004"]
    assert [f.service for f in sink.flows] == ["http", "ssl"]
    await tail.async_stop()


async def test_rotation_finishes_old_file_then_reads_new(
    hass: HomeAssistant, tmp_path: Path
) -> None:
    """Zeek renames the log and starts a new one: nothing is lost and nothing read twice."""
    log = tmp_path / "conn.log"
    log.write_text(HEADER + line(1))
    sink = Sink()
    tail = ZeekTail(hass, str(log), sink, from_start=True)
    await tail.async_poll()
    assert sink.uids() == ["C00001"]

    append(log, line(2) + line(3)[:-1])  # the old file's last line never gets its newline
    log.rename(tmp_path / "conn.2026-11-23.log")
    log.write_text(HEADER + line(4))
    await tail.async_poll()
    assert sink.uids() == ["C00001", "C00002", "C00003", "C00004"]
    assert tail.stats.rotations == 1

    append(log, line(5))
    await tail.async_poll()
    assert sink.uids()[-1] == "C00005"
    assert len(sink.flows) == 5
    await tail.async_stop()


async def test_rotation_with_gap_reports_missing(hass: HomeAssistant, tmp_path: Path) -> None:
    """Between the rename and the new file the path is missing; the old rest still arrives."""
    log = tmp_path / "conn.log"
    log.write_text(HEADER + line(1))
    sink = Sink()
    tail = ZeekTail(hass, str(log), sink, from_start=True, on_status=sink.on_status)
    await tail.async_poll()
    append(log, line(2))
    log.rename(tmp_path / "conn.old")
    await tail.async_poll()
    assert sink.uids() == ["C00001", "C00002"]
    assert tail.status is TailStatus.MISSING
    assert tail.last_error is not None

    # the new file starts without a header block: a headerless 21-column line is still read
    log.write_text(line(3))
    await tail.async_poll()
    assert sink.uids() == ["C00001", "C00002", "C00003"]
    assert tail.status is TailStatus.OK
    assert [s for s, _ in sink.statuses] == [TailStatus.OK, TailStatus.MISSING, TailStatus.OK]
    await tail.async_stop()


async def test_truncation_restarts_from_zero(hass: HomeAssistant, tmp_path: Path) -> None:
    """A log truncated in place (copytruncate) is read again from its first byte."""
    log = tmp_path / "conn.log"
    log.write_text(HEADER + line(1) + line(2) + line(3)[:20])
    sink = Sink()
    tail = ZeekTail(hass, str(log), sink, from_start=True)
    await tail.async_poll()
    assert sink.uids() == ["C00001", "C00002"]

    with log.open("r+") as handle:
        handle.truncate(0)
    append(log, HEADER + line(7))
    assert log.stat().st_size < len(HEADER) + 3 * len(line(1))
    await tail.async_poll()
    # the partial line from before the cut is dropped, not glued onto the new content
    assert sink.uids() == ["C00001", "C00002", "C00007"]
    assert tail.stats.truncations == 1
    assert tail.stats.parse.total_rejected == 0
    await tail.async_stop()


async def test_json_log(hass: HomeAssistant, tmp_path: Path) -> None:
    """Zeek's JSON writer (one object per line) is read too."""
    log = tmp_path / "conn.json"
    record = {
        "ts": 1_763_900_000.25,
        "uid": "CJ1",
        "id.orig_h": "192.168.1.30",
        "id.orig_p": 5353,
        "id.resp_h": "224.0.0.251",
        "id.resp_p": 5353,
        "proto": "udp",
        "service": "dns",
        "conn_state": "S0",
    }
    log.write_text(json.dumps(record) + "\n")
    sink = Sink()
    tail = ZeekTail(hass, str(log), sink, from_start=True)
    await tail.async_poll()
    append(log, json.dumps({**record, "uid": "CJ2"}) + "\n")
    await tail.async_poll()
    assert sink.uids() == ["CJ1", "CJ2"]
    assert sink.flows[0].resp_h == "224.0.0.251"
    await tail.async_stop()


async def test_missing_file_then_created_and_timer(hass: HomeAssistant, tmp_path: Path) -> None:
    """A missing path is a status, not an error; the interval timer picks the file up later."""
    log = tmp_path / "conn.log"
    sink = Sink()
    tail = ZeekTail(hass, str(log), sink, interval=timedelta(seconds=10), on_status=sink.on_status)
    await tail.async_start()
    assert tail.status is TailStatus.MISSING
    assert sink.statuses == [(TailStatus.MISSING, f"{log} does not exist")]

    log.write_text(HEADER + line(1))  # appeared after start: all of it is new
    async_fire_time_changed(hass, dt_util.utcnow() + timedelta(seconds=11))
    await hass.async_block_till_done(wait_background_tasks=True)  # ticks are background
    assert sink.uids() == ["C00001"]
    assert tail.status is TailStatus.OK

    append(log, line(2))
    async_fire_time_changed(hass, dt_util.utcnow() + timedelta(seconds=22))
    await hass.async_block_till_done(wait_background_tasks=True)
    assert sink.uids() == ["C00001", "C00002"]

    await tail.async_stop()
    append(log, line(3))
    async_fire_time_changed(hass, dt_util.utcnow() + timedelta(seconds=33))
    await hass.async_block_till_done(wait_background_tasks=True)
    assert sink.uids() == ["C00001", "C00002"]  # stopped: no more polls


async def test_directory_is_not_a_log(hass: HomeAssistant, tmp_path: Path) -> None:
    """A directory at the path is reported as such."""
    sink = Sink()
    tail = ZeekTail(hass, str(tmp_path), sink)
    await tail.async_poll()
    assert tail.status is TailStatus.NOT_A_FILE


async def test_backlog_is_read_in_slices(hass: HomeAssistant, tmp_path: Path) -> None:
    """A byte budget per executor job bounds each job; one poll still catches up."""
    log = tmp_path / "conn.log"
    log.write_text(HEADER + "".join(line(n) for n in range(200)))
    sink = Sink()
    tail = ZeekTail(hass, str(log), sink, from_start=True, max_bytes_per_poll=4096)
    await tail.async_poll()
    assert len(sink.flows) == 200
    size = log.stat().st_size
    assert size > 4 * 4096
    assert tail.stats.polls == size // 4096 + 1  # full slices, then the one that found the end
    assert sink.batches >= size // 4096
    await tail.async_stop()


async def test_check_readable(hass: HomeAssistant, tmp_path: Path) -> None:
    """The options flow's validation gives form error keys."""
    log = tmp_path / "conn.log"
    assert await async_check_readable(hass, str(log)) == "not_found"
    assert await async_check_readable(hass, str(tmp_path)) == "not_a_file"
    log.write_text(HEADER)
    assert await async_check_readable(hass, str(log)) is None
    if os.geteuid() != 0:  # root reads anything: the permission case only exists for others
        log.chmod(0)
        assert await async_check_readable(hass, str(log)) == "not_readable"
