"""Loaders mapping public smart-home logs onto ``DeviceEvent``s, as if Home Assistant saw them.

The federation needs benign device behaviour from many homes; these logs (CASAS, Ordóñez, van
Kasteren, MIT Tapia, a real HA recording) supply it. Each sensor becomes a plausible HA entity
(``binary_sensor`` with a device class, ``light``, ``switch``, ``sensor``) so that their tokens
share one vocabulary with live HA events. Interval logs become an "on" event at the start and an
"off" event at the end. Timestamps are the homes' local wall clock read as if it were UTC, which
keeps hour-of-day and weekday as the residents lived them. Bad lines are counted and skipped.

``ParseStats.accepted`` counts accepted input records (lines, intervals, activations), not events.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

from .event_features import device_event, event_source, number
from .records import DeviceEvent, ParseStats

Rule = tuple[frozenset[str], str, str | None]


def _rule(words: str, domain: str, device_class: str | None) -> Rule:
    return frozenset(words.split()), domain, device_class


# First rule with a word among the sensor name's words wins; order settles names such as
# "occupancy_bath_cabinet" (a presence sensor), "kitchen_cabinet_sink" (a cabinet) or
# "shower_curtain" (not a tap).
_RULES: tuple[Rule, ...] = (
    _rule("window", "binary_sensor", "window"),
    _rule("occupancy bed seat chair couch sofa", "binary_sensor", "occupancy"),
    _rule("door frontdoor maindoor backdoor", "binary_sensor", "door"),
    _rule(
        "cabinet cupboard drawer closet wardrobe jewelry box container containers cereal can "
        "curtain paper",
        "binary_sensor",
        "opening",
    ),
    _rule("fridge freezer refrigerator", "binary_sensor", "door"),
    _rule("pir motion iaszone", "binary_sensor", "motion"),
    _rule("flush toiletflush faucet tap basin shower", "binary_sensor", "moisture"),
    _rule("light lights lamp", "light", None),
    _rule(
        "microwave toaster oven burner stove cooktop coffee kettle dishwasher washingmachine "
        "washing dryer disposal fan hood dvd tv mixer mixxer razor oralb",
        "switch",
        "outlet",
    ),
    _rule("use", "binary_sensor", "running"),
)
_WORD_RE = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|[0-9]+")
_BINARY_STATES: dict[str, str] = {
    "on": "on",
    "off": "off",
    "open": "on",
    "close": "off",
    "closed": "off",
}
_BOOL_STATES: dict[str, str] = {
    "true": "on",
    "false": "off",
    "1": "on",
    "0": "off",
    **_BINARY_STATES,
}
_ENTITY_RE = re.compile(r"[a-z_]+\.[a-z0-9_]+")
_ISO_RE = re.compile(
    r"(\d{4})-(\d{1,2})-(\d{1,2})[ T](\d{1,2}):(\d{1,2}):(\d{1,2})(?:\.(\d{1,6}))?"
)
_MONTHS = {
    m: i + 1
    for i, m in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
    )
}


def words(name: str) -> list[str]:
    """Split a sensor name into lower-case words ("Hall-Toilet door", "KitchenLight", "a_b")."""
    return [w.lower() for w in _WORD_RE.findall(name)]


def slug(name: str) -> str:
    """Turn a name into an HA object id ("Hall-Toilet door" -> "hall_toilet_door")."""
    return "_".join(words(name)) or "sensor"


def classify(name: str, default: tuple[str, str | None]) -> tuple[str, str | None]:
    """Guess an HA domain and device class from a sensor's name; ``default`` when nothing fits."""
    found = set(words(name))
    for keywords, domain, device_class in _RULES:
        if keywords & found:
            return domain, device_class
    return default


def _dt(parts: Sequence[int]) -> float:
    """Read (year, month, day, h, m, s[, µs]) local wall time as UTC; ValueError if impossible."""
    if len(parts) not in (6, 7):
        raise ValueError(parts)
    year, month, day, hh, mm, ss, *micro = parts
    return datetime(year, month, day, hh, mm, ss, sum(micro), tzinfo=UTC).timestamp()


def _iso_ts(text: str) -> float:
    match = _ISO_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(text)
    *parts, frac = match.groups()
    return _dt([*map(int, parts), int((frac or "0").ljust(6, "0"))])


def _hms(text: str) -> tuple[int, int, int]:
    parts = text.strip().split(":")
    if len(parts) != 3 or not all(p.isascii() and p.isdigit() for p in parts):
        raise ValueError(text)
    hh, mm, ss = map(int, parts)
    return hh, mm, ss


class _Home:
    """Collects point events and intervals of one home, then emits sorted HA-style events."""

    def __init__(self) -> None:
        self.points: list[tuple[float, str, str]] = []
        self.intervals: dict[str, list[tuple[float, float]]] = {}
        self.meta: dict[str, tuple[str, str | None, str | None]] = {}

    def entity(
        self, object_id: str, domain: str, device_class: str | None, device: str | None
    ) -> str:
        entity_id = f"{domain}.{object_id}"
        self.meta.setdefault(entity_id, (domain, device_class, device))
        return entity_id

    def point(self, ts: float, entity_id: str, state: str) -> None:
        self.points.append((ts, entity_id, state))

    def interval(self, start: float, end: float, entity_id: str) -> None:
        self.intervals.setdefault(entity_id, []).append((start, end))

    def events(self) -> list[DeviceEvent]:
        raw = list(self.points)
        for entity_id, spans in self.intervals.items():
            merged: list[list[float]] = []
            for start, end in sorted(spans):  # overlapping firings of one sensor are one "on"
                if merged and start <= merged[-1][1]:
                    merged[-1][1] = max(merged[-1][1], end)
                else:
                    merged.append([start, end])
            for start, end in merged:
                raw += [(start, entity_id, "on"), (end, entity_id, "off")]
        raw.sort(key=lambda item: item[0])  # stable: an instant "on" stays before its "off"
        last: dict[str, str] = {}
        out = []
        for ts, entity_id, state in raw:
            domain, device_class, device = self.meta[entity_id]
            old = last.get(entity_id)
            last[entity_id] = state
            source = event_source(domain, context_known=False)
            out.append(
                device_event(
                    ts,
                    entity_id,
                    domain,
                    state,
                    old,
                    source=source,
                    device_class=device_class,
                    device_id=device,
                )
            )
        return out


def _lines(path: Path, encoding: str = "utf-8") -> Iterator[str]:
    with open(path, encoding=encoding, errors="replace", newline="") as handle:
        for line in handle:
            yield line.rstrip("\r\n")


def load_casas(directory: str | os.PathLike[str], stats: ParseStats) -> list[DeviceEvent]:
    """CASAS ``data.txt``: ``date time [area] sensor message [activity...]`` per line.

    The "al" homes write area and sensor ("Kitchen KitchenLight ON"); the classic homes write a
    sensor id only ("M001 ON", "T001 21.5"). Numeric messages become ``sensor`` states.
    """
    home = _Home()
    base = Path(directory)
    path = base / "data.txt" if (base / "data.txt").exists() else base / "data"
    for line in _lines(path):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) < 4:
            stats.reject("column_count")
            continue
        try:
            ts = _iso_ts(f"{tokens[0]} {tokens[1]}")
        except ValueError:
            stats.reject("bad_time")
            continue
        if len(tokens) >= 5 and _casas_message(tokens[4]):
            sensor, message = (
                f"{tokens[2]} {tokens[3]}" if tokens[2] != tokens[3] else tokens[2],
                tokens[4],
            )
        elif _casas_message(tokens[3]):
            sensor, message = tokens[2], tokens[3]
        else:
            stats.reject("bad_state")
            continue
        upper = message.upper()
        device_class: str | None
        if upper in ("OPEN", "CLOSE"):
            domain, device_class = "binary_sensor", "door"
        elif upper in ("ON", "OFF"):
            domain, device_class = classify(sensor.split()[-1], ("binary_sensor", "motion"))
            if domain == "binary_sensor":  # CASAS ON/OFF sensors other than lights are motion
                device_class = "motion"
        else:
            domain, device_class = "sensor", None
        state = _BINARY_STATES.get(message.lower(), message)
        entity_id = home.entity(slug(sensor), domain, device_class, None)
        home.point(ts, entity_id, state)
        stats.accepted += 1
    return home.events()


def _casas_message(token: str) -> bool:
    return token.upper() in ("ON", "OFF", "OPEN", "CLOSE") or number(token) is not None


def load_ordonez(directory: str | os.PathLike[str], stats: ParseStats) -> list[DeviceEvent]:
    """Ordóñez ADL ``*_Sensors.txt``: tab-separated ``start end location type place`` intervals.

    Columns are padded with a varying number of tabs, so empty cells are dropped. The sensor
    type column decides the device class (PIR, Magnetic, Flush, Pressure, Electric).
    """
    by_type: dict[str, tuple[str, str | None]] = {
        "pir": ("binary_sensor", "motion"),
        "flush": ("binary_sensor", "moisture"),
        "pressure": ("binary_sensor", "occupancy"),
        "electric": ("switch", "outlet"),
    }
    home = _Home()
    for path in sorted(Path(directory).glob("*_Sensors.txt")):
        for line in _lines(path, "latin-1"):
            cells = [cell.strip() for cell in line.split("\t") if cell.strip()]
            if not cells or cells[0].startswith(("Start", "-")):
                continue  # header and its underline
            if len(cells) != 5:
                stats.reject("column_count")
                continue
            start, end, name, kind, place = cells
            if (span := _interval(start, end, _iso_ts, stats)) is None:
                continue
            begin, finish = span
            if kind.lower() == "magnetic":
                domain, device_class = classify(name, ("binary_sensor", "opening"))
            else:
                domain, device_class = by_type.get(
                    kind.lower(), classify(name, ("binary_sensor", None))
                )
            entity_id = home.entity(slug(f"{place} {name}"), domain, device_class, None)
            home.interval(begin, finish, entity_id)
            stats.accepted += 1
    return home.events()


_KASTEREN_MAP_RE = re.compile(r"\[\s*(\d+)\]\s+'([^']*)'")
_KASTEREN_TIME_RE = re.compile(r"(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d{1,2}):(\d{1,2}):(\d{1,2})")


def _interval(
    start: str, end: str, parse: Callable[[str], float], stats: ParseStats
) -> tuple[float, float] | None:
    """Parse an activity's (begin, end) in epoch seconds; count a bad or backwards one, None."""
    try:
        begin, finish = parse(start), parse(end)
    except ValueError:
        stats.reject("bad_time")
        return None
    if finish < begin:
        stats.reject("bad_interval")
        return None
    return begin, finish


def _kasteren_ts(text: str) -> float:
    match = _KASTEREN_TIME_RE.fullmatch(text.strip())
    month = _MONTHS.get(match.group(2).lower()) if match else None
    if match is None or month is None:
        raise ValueError(text)
    day, _, year, hh, mm, ss = match.groups()
    return _dt([int(year), month, int(day), int(hh), int(mm), int(ss)])


def load_kasteren(directory: str | os.PathLike[str], stats: ParseStats) -> list[DeviceEvent]:
    """Van Kasteren ``*SenseData.txt``: ``start end id val`` rows after a free-text header.

    The header lists ``[ id] 'name'`` pairs; the names give the entities their device classes.
    """
    home = _Home()
    for path in sorted(Path(directory).glob("*SenseData.txt")):
        names: dict[str, str] = {}
        for line in _lines(path, "latin-1"):
            mapping = _KASTEREN_MAP_RE.search(line)
            if mapping is not None:
                names[mapping.group(1)] = mapping.group(2).strip()
                continue
            if not line[:1].isdigit():
                continue  # free text, column titles, underline
            cells = [cell for cell in re.split(r"\t|\s{2,}", line.strip()) if cell]
            if len(cells) != 4 or not (cells[2].isascii() and cells[2].isdigit()):
                stats.reject("column_count")
                continue
            if (span := _interval(cells[0], cells[1], _kasteren_ts, stats)) is None:
                continue
            begin, finish = span
            sensor = str(int(cells[2]))
            name = names.get(sensor, f"sensor {sensor}")
            domain, device_class = classify(name, ("binary_sensor", "opening"))
            entity_id = home.entity(slug(name), domain, device_class, sensor)
            home.interval(begin, finish, entity_id)
            stats.accepted += 1
    return home.events()


_TAPIA_HEAD_RE = re.compile(r"[^,]+,(\d{1,2})/(\d{1,2})/(\d{4}),[\d:]+,[\d:]+")


def load_tapia(directory: str | os.PathLike[str], stats: ParseStats) -> list[DeviceEvent]:
    """MIT Tapia ``*_activities_data.csv``: five-line records per annotated activity.

    A record is ``activity,date,start,end`` then lines of sensor ids, sensor names, activation
    starts and activation ends. Activities overlap, so one activation can appear in several
    records; the merge of intervals keeps it once. Sensors come from ``*_sensors.csv``.
    """
    home = _Home()
    base = Path(directory)
    sensors: dict[str, tuple[str, str]] = {}
    for path in sorted(base.glob("*_sensors.csv")):
        for line in _lines(path):
            cells = [cell.strip() for cell in line.split(",")]
            if len(cells) == 3 and cells[0].isdigit():
                sensors[cells[0]] = (cells[1], cells[2])
    for path in sorted(base.glob("*_activities_data.csv")):
        lines = list(_lines(path))
        i = 0
        while i < len(lines):
            head = _TAPIA_HEAD_RE.fullmatch(lines[i].strip())
            if head is None:
                if lines[i].strip():
                    stats.reject("bad_record")
                i += 1
                continue
            record = [line.split(",") for line in lines[i + 1 : i + 5]]
            i += 5
            if len(record) != 4 or len({len(cells) for cells in record}) != 1:
                stats.reject("bad_record")
                continue
            month, day, year = (int(g) for g in head.groups())
            try:
                midnight = _dt([year, month, day, 0, 0, 0])
            except ValueError:
                stats.reject("bad_time")
                continue
            for sensor, name, start, end in zip(*record, strict=True):
                try:
                    begin, finish = midnight + _seconds(start), midnight + _seconds(end)
                except ValueError:
                    stats.reject("bad_time")
                    continue
                if finish < begin:
                    finish += 86400.0  # an activation running past midnight
                sensor_id = sensor.strip()
                area, obj = sensors.get(sensor_id, ("", name.strip()))
                domain, device_class = classify(obj, ("binary_sensor", "opening"))
                object_id = slug(f"{area} {obj} {sensor_id}")
                entity_id = home.entity(object_id, domain, device_class, sensor_id)
                home.interval(begin, finish, entity_id)
                stats.accepted += 1
    return home.events()


def _seconds(text: str) -> float:
    hh, mm, ss = _hms(text)
    if hh > 23 or mm > 59 or ss > 59:
        raise ValueError(text)
    return float(hh * 3600 + mm * 60 + ss)


_HA_TIME_RE = re.compile(r"(\d{1,2})\.(\d{1,2})\.(\d{4}) (\d{1,2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?")


def _ha_ts(text: str) -> float:
    match = _HA_TIME_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(text)
    day, month, year, hh, mm, ss, frac = match.groups()
    micro = int((frac or "0").ljust(6, "0"))
    return _dt([int(year), int(month), int(day), int(hh), int(mm), int(ss), micro])


def load_ha_recording(directory: str | os.PathLike[str], stats: ParseStats) -> list[DeviceEvent]:
    """Load a Home Assistant recording: ``devices.csv`` (time,device,value), ``device_map.csv``.

    Entity ids are real, so the domain is taken from them; booleans become "on"/"off".
    """
    home = _Home()
    base = Path(directory)
    entities: dict[str, str] = {}
    for line in _lines(base / "device_map.csv"):
        index, _, name = line.partition(",")
        if index.strip().isdigit() and _ENTITY_RE.fullmatch(name.strip()):
            entities[index.strip()] = name.strip()
    for line in _lines(base / "devices.csv"):
        cells = line.split(",")
        if not line.strip() or cells[0] == "time":
            continue
        if len(cells) != 3:
            stats.reject("column_count")
            continue
        entity_id = entities.get(cells[1].strip())
        if entity_id is None:
            stats.reject("unknown_device")
            continue
        try:
            ts = _ha_ts(cells[0])
        except ValueError:
            stats.reject("bad_time")
            continue
        value = cells[2].strip()
        if not value or not value.isprintable() or len(value) > 255:
            stats.reject("bad_state")
            continue
        domain, object_id = entity_id.split(".", 1)
        if domain in ("binary_sensor", "light", "switch", "input_boolean"):
            value = _BOOL_STATES.get(value.lower(), value)
        guess, device_class = classify(object_id, (domain, None))
        home.entity(object_id, domain, device_class if guess == domain else None, None)
        home.point(ts, entity_id, value)
        stats.accepted += 1
    return home.events()


LOADERS: dict[str, Callable[[str | os.PathLike[str], ParseStats], list[DeviceEvent]]] = {
    "casas": load_casas,
    "ordonez": load_ordonez,
    "kasteren": load_kasteren,
    "tapia": load_tapia,
    "ha_recording": load_ha_recording,
}


def detect_format(directory: str | os.PathLike[str]) -> str | None:
    """Name the loader for a folder from the files in it (folder names vary between copies)."""
    base = Path(directory)
    if (base / "devices.csv").is_file() and (base / "device_map.csv").is_file():
        return "ha_recording"
    for name, pattern in (
        ("tapia", "*_activities_data.csv"),
        ("kasteren", "*SenseData.txt"),
        ("ordonez", "*_Sensors.txt"),
    ):
        if any(base.glob(pattern)):
            return name
    if (base / "data.txt").is_file() or (base / "data").is_file():
        return "casas"
    return None


def load_home(
    name_or_dir: str | os.PathLike[str],
    stats: ParseStats,
    root: str | os.PathLike[str] | None = None,
) -> list[DeviceEvent]:
    """Load one home's log folder, sorted by time; a bare folder name is looked up under ``root``.

    Raises FileNotFoundError / ValueError for a missing folder or an unknown layout (caller
    errors); bad lines inside the files only count as rejects.
    """
    directory = Path(name_or_dir)
    if not directory.is_dir() and root is not None:
        directory = Path(root) / name_or_dir
    if not directory.is_dir():
        raise FileNotFoundError(f"no home log folder at {directory}")
    kind = detect_format(directory)
    if kind is None:
        raise ValueError(f"unknown home log layout in {directory}")
    return LOADERS[kind](directory, stats)
