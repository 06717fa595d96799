"""Public smart-home logs mapped onto HA-style DeviceEvents: formats, mapping, junk, real data."""

from __future__ import annotations

import itertools
import os
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from giot_engine.home_events import (
    classify,
    detect_format,
    load_casas,
    load_ha_recording,
    load_home,
    load_kasteren,
    load_ordonez,
    load_tapia,
    slug,
)
from giot_engine.records import DeviceEvent, ParseStats

DATA = Path(os.environ.get("GIOT_DATA", Path(__file__).parents[2] / ".." / "shared" / "data"))
HOMES = DATA / "home_events"


def _ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def _brief(events: list[DeviceEvent]) -> list[tuple[float, str, str | None, str]]:
    return [(e.ts, e.entity_id, e.old_state, e.new_state) for e in events]


# --- fixtures written by the tests ---------------------------------------------------------

CASAS = """2011-06-15 01:03:39.14962 Bedroom Bedroom ON Sleep
2011-06-15 01:03:40.284526 Bedroom Bedroom OFF Sleep
2011-06-15 01:03:41 OutsideDoor FrontDoor OPEN Leave_Home
2011-06-15 01:03:42.5 OutsideDoor FrontDoor CLOSE Leave_Home
2011-06-15 01:03:38 Kitchen KitchenLight ON Other_Activity
2011-06-15 01:04:00 T001 21.5
2011-06-15 01:05:00 T001 22.0
2011-06-15 01:06:00 M002 ON R1_Sleep begin
2011-13-15 01:06:00 M002 ON
2011-06-15 01:06:00 M002 MAYBE
garbage
"""


def test_casas_both_layouts_and_rejects(tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text(CASAS)
    stats = ParseStats()
    events = load_casas(tmp_path, stats)
    assert stats.accepted == 8
    assert stats.rejected == Counter({"bad_time": 1, "bad_state": 1, "column_count": 1})
    assert _brief(events) == [
        (_ts("2011-06-15 01:03:38"), "light.kitchen_kitchen_light", None, "on"),
        (_ts("2011-06-15 01:03:39.149620"), "binary_sensor.bedroom", None, "on"),
        (_ts("2011-06-15 01:03:40.284526"), "binary_sensor.bedroom", "on", "off"),
        (_ts("2011-06-15 01:03:41"), "binary_sensor.outside_door_front_door", None, "on"),
        (_ts("2011-06-15 01:03:42.5"), "binary_sensor.outside_door_front_door", "on", "off"),
        (_ts("2011-06-15 01:04:00"), "sensor.t_001", None, "21.5"),
        (_ts("2011-06-15 01:05:00"), "sensor.t_001", "21.5", "22.0"),
        (_ts("2011-06-15 01:06:00"), "binary_sensor.m_002", None, "on"),
    ]
    classes = {e.entity_id: (e.domain, e.device_class, e.source) for e in events}
    assert classes["binary_sensor.bedroom"] == ("binary_sensor", "motion", "device")
    assert classes["binary_sensor.outside_door_front_door"] == ("binary_sensor", "door", "device")
    assert classes["light.kitchen_kitchen_light"] == ("light", None, "unknown")
    temperature = [e for e in events if e.entity_id == "sensor.t_001"]
    assert temperature[0].numeric_change is None
    assert temperature[1].numeric_change == pytest.approx(0.5 / 21.5)


ORDONEZ = (
    "Start time          \tEnd time            \tLocation\tType\t\tPlace\r\n"
    "--------------------\t--------------------\t--------\t--------\t-----\r\n"
    "2011-11-28 02:27:59\t2011-11-28 10:18:11\t\tBed\t\tPressure\tBedroom\r\n"
    "2011-11-28 10:21:24\t2011-11-28 10:21:31\t\tCabinet\t\tMagnetic\tBathroom\r\n"
    "2011-11-28 10:21:44\t\t2011-11-28 10:23:31\t\tBasin\t\tPIR\t\tBathroom\r\n"
    "2011-11-28 10:34:23\t2011-11-28 10:34:41\t\tMaindoor\tMagnetic\tEntrance\r\n"
    "2011-11-28 10:38:00\t2011-11-28 10:42:41\t\tToaster\t\tElectric\tCocina\xf1\r\n"
    "2011-11-28 10:50:00\t2011-11-28 10:40:00\t\tToilet\t\tFlush\t\tBathroom\r\n"
    "2011-11-28 10:50:00\t\tToilet\t\tFlush\r\n"
    "2011-11-2x 10:50:00\t2011-11-28 10:51:00\t\tToilet\t\tFlush\t\tBathroom"
)


def test_ordonez_intervals_latin1(tmp_path: Path) -> None:
    (tmp_path / "OrdonezA_Sensors.txt").write_bytes(ORDONEZ.encode("latin-1"))
    stats = ParseStats()
    events = load_ordonez(tmp_path, stats)
    assert stats.accepted == 5
    assert stats.rejected == Counter({"bad_interval": 1, "column_count": 1, "bad_time": 1})
    assert len(events) == 10
    first, last = events[0], events[-1]
    assert (first.ts, first.entity_id, first.new_state) == (
        _ts("2011-11-28 02:27:59"),
        "binary_sensor.bedroom_bed",
        "on",
    )
    assert (last.ts, last.entity_id, last.new_state, last.old_state) == (
        _ts("2011-11-28 10:42:41"),
        "switch.cocina_toaster",  # "ñ" is no word character of an HA object id
        "off",
        "on",
    )
    classes = {e.entity_id: e.device_class for e in events}
    assert classes == {
        "binary_sensor.bedroom_bed": "occupancy",
        "binary_sensor.bathroom_cabinet": "opening",
        "binary_sensor.bathroom_basin": "motion",
        "binary_sensor.entrance_maindoor": "door",
        "switch.cocina_toaster": "outlet",
    }


KASTEREN = """Start time: Time sensor started firing\r
ID: sensor id (see list below)\r
\r
Sensor IDs are: \r
    [ 1]    'Microwave'         \r
    [ 5]    'Hall-Toilet door'  \r
    [14]    'ToiletFlush'       \r
\r
Start time          \tEnd time            \tID\tVal\r
--------------------\t--------------------\t--\t---\r
25-Feb-2008 00:20:14\t25-Feb-2008 00:22:57\t5\t1\r
25-Feb-2008 00:21:00\t25-Feb-2008 00:23:30\t5\t1\r
25-Feb-2008 09:33:41\t25-Feb-2008 09:33:41\t14\t1\r
25-Feb-2008 10:00:00\t25-Feb-2008 10:00:05\t99\t1\r
25-Foo-2008 10:00:00\t25-Feb-2008 10:00:05\t1\t1\r
25-Feb-2008 10:00:00\t25-Feb-2008 10:00:05\tx\t1\r
"""


def test_kasteren_id_map_and_merged_overlaps(tmp_path: Path) -> None:
    (tmp_path / "kasterenSenseData.txt").write_text(KASTEREN)
    stats = ParseStats()
    events = load_kasteren(tmp_path, stats)
    assert stats.accepted == 4
    assert stats.rejected == Counter({"bad_time": 1, "column_count": 1})
    assert _brief(events) == [
        # two overlapping firings of one door are one "on" period
        (_ts("2008-02-25 00:20:14"), "binary_sensor.hall_toilet_door", None, "on"),
        (_ts("2008-02-25 00:23:30"), "binary_sensor.hall_toilet_door", "on", "off"),
        (_ts("2008-02-25 09:33:41"), "binary_sensor.toilet_flush", None, "on"),
        (_ts("2008-02-25 09:33:41"), "binary_sensor.toilet_flush", "on", "off"),
        (_ts("2008-02-25 10:00:00"), "binary_sensor.sensor_99", None, "on"),
        (_ts("2008-02-25 10:00:05"), "binary_sensor.sensor_99", "on", "off"),
    ]
    assert {e.entity_id: (e.device_class, e.device_id) for e in events} == {
        "binary_sensor.hall_toilet_door": ("door", "5"),
        "binary_sensor.toilet_flush": ("moisture", "14"),
        "binary_sensor.sensor_99": ("opening", "99"),
    }


TAPIA_SENSORS = "100,Bathroom,Toilet Flush \n101,Bathroom,Light switch\n137,Kitchen,Freezer\n"
TAPIA_DATA = """Toileting,4/1/2003,17:30:36,17:46:41\r
100,101\r
Toilet Flush,Light switch\r
17:39:37,17:40:0\r
17:39:46,17:45:2\r
Bathing,4/1/2003,17:35:00,18:00:00\r
101,137\r
Light switch,Freezer\r
17:40:0,23:59:50\r
17:45:2,0:0:10\r
Broken,4/1/2003,18:00:00,18:10:00\r
100,101\r
Toilet Flush\r
18:01:00,18:02:00\r
18:01:30,18:02:30\r
orphan line\r
"""


def test_tapia_records_duplicates_and_midnight(tmp_path: Path) -> None:
    (tmp_path / "1_sensors.csv").write_text(TAPIA_SENSORS)
    (tmp_path / "1_activities_data.csv").write_text(TAPIA_DATA)
    stats = ParseStats()
    events = load_tapia(tmp_path, stats)
    assert stats.accepted == 4
    assert stats.rejected == Counter({"bad_record": 2})
    assert _brief(events) == [
        (_ts("2003-04-01 17:39:37"), "binary_sensor.bathroom_toilet_flush_100", None, "on"),
        (_ts("2003-04-01 17:39:46"), "binary_sensor.bathroom_toilet_flush_100", "on", "off"),
        # listed under both activities: one activation
        (_ts("2003-04-01 17:40:00"), "light.bathroom_light_switch_101", None, "on"),
        (_ts("2003-04-01 17:45:02"), "light.bathroom_light_switch_101", "on", "off"),
        (_ts("2003-04-01 23:59:50"), "binary_sensor.kitchen_freezer_137", None, "on"),
        (_ts("2003-04-02 00:00:10"), "binary_sensor.kitchen_freezer_137", "on", "off"),
    ]
    assert events[-1].device_class == "door"
    assert events[0].device_class == "moisture"


DEVICE_MAP = """id,device
0,binary_sensor.esp_kitchen_pir
1,light.ikea_bulb_level_on_off
2,sensor.occupancy_room
3,binary_sensor.kitchen_cabinet_sink
4,Not An Entity
"""
DEVICES = """time,device,value
26.01.2023 21:51:23.733535,1,True
26.01.2023 21:01:30.296234,0,True
26.01.2023 21:01:31,0,False
26.01.2023 23:04:56.486525,2,hallway
26.01.2023 23:05:08.309778,2,kitchen
26.01.2023 23:06:00.000000,3,False
26.01.2023 23:06:00.000000,4,True
26.01.2023 23:06:00.000000,9,True
32.01.2023 23:06:00.000000,0,True
26.01.2023 23:06:00.000000,0
"""


def test_ha_recording_map_and_bools(tmp_path: Path) -> None:
    (tmp_path / "device_map.csv").write_text(DEVICE_MAP)
    (tmp_path / "devices.csv").write_text(DEVICES)
    stats = ParseStats()
    events = load_ha_recording(tmp_path, stats)
    assert stats.accepted == 6
    assert stats.rejected == Counter({"unknown_device": 2, "bad_time": 1, "column_count": 1})
    assert _brief(events) == [
        (_ts("2023-01-26 21:01:30.296234"), "binary_sensor.esp_kitchen_pir", None, "on"),
        (_ts("2023-01-26 21:01:31"), "binary_sensor.esp_kitchen_pir", "on", "off"),
        (_ts("2023-01-26 21:51:23.733535"), "light.ikea_bulb_level_on_off", None, "on"),
        (_ts("2023-01-26 23:04:56.486525"), "sensor.occupancy_room", None, "hallway"),
        (_ts("2023-01-26 23:05:08.309778"), "sensor.occupancy_room", "hallway", "kitchen"),
        (_ts("2023-01-26 23:06:00"), "binary_sensor.kitchen_cabinet_sink", None, "off"),
    ]
    assert {e.entity_id: (e.domain, e.device_class) for e in events} == {
        "binary_sensor.esp_kitchen_pir": ("binary_sensor", "motion"),
        "light.ikea_bulb_level_on_off": ("light", None),
        "sensor.occupancy_room": ("sensor", None),
        "binary_sensor.kitchen_cabinet_sink": ("binary_sensor", "opening"),
    }


def test_load_home_detects_layout_by_files(tmp_path: Path) -> None:
    layouts = {
        "a": ("data.txt", CASAS, "casas"),
        "b": ("OrdonezB_Sensors.txt", ORDONEZ, "ordonez"),
        "c": ("kasterenSenseData.txt", KASTEREN, "kasteren"),
        "d": ("2_activities_data.csv", TAPIA_DATA, "tapia"),
    }
    for folder, (name, text, kind) in layouts.items():
        (tmp_path / folder).mkdir()
        (tmp_path / folder / name).write_text(text)
        assert detect_format(tmp_path / folder) == kind
        assert load_home(tmp_path / folder, ParseStats()) != []
    assert len(load_home("a", ParseStats(), root=tmp_path)) == 8  # bare name under a root
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="unknown home log layout"):
        load_home(tmp_path / "empty", ParseStats())
    with pytest.raises(FileNotFoundError):
        load_home(tmp_path / "missing", ParseStats())


@pytest.mark.parametrize(
    ("name", "default", "expected"),
    [
        ("Hall-Bedroom door", ("binary_sensor", None), ("binary_sensor", "door")),
        ("Bedroom", ("binary_sensor", "motion"), ("binary_sensor", "motion")),  # not "bed"
        ("occupancy_bath_cabinet", ("binary_sensor", None), ("binary_sensor", "occupancy")),
        ("shower_curtain", ("binary_sensor", None), ("binary_sensor", "opening")),
        ("Sink faucet - hot", ("binary_sensor", None), ("binary_sensor", "moisture")),
        ("KitchenLight", ("binary_sensor", None), ("light", None)),
        ("Washingmachine", ("binary_sensor", None), ("switch", "outlet")),
        ("ikea_tradfri_motion_sensor_1", ("binary_sensor", None), ("binary_sensor", "motion")),
        ("kindle", ("binary_sensor", None), ("binary_sensor", None)),
    ],
)
def test_classify(
    name: str, default: tuple[str, str | None], expected: tuple[str, str | None]
) -> None:
    assert classify(name, default) == expected


def test_slug() -> None:
    assert slug("Hall-Toilet door") == "hall_toilet_door"
    assert slug("KitchenLight") == "kitchen_light"
    assert slug("Office/study Drawer 82") == "office_study_drawer_82"
    assert slug("???") == "sensor"


# --- fuzzing: appended junk never raises and output stays sorted ----------------------------

LAYOUTS = {
    "casas": ({"data.txt": CASAS}, "data.txt"),
    "ordonez": ({"OrdonezA_Sensors.txt": ORDONEZ}, "OrdonezA_Sensors.txt"),
    "kasteren": ({"kasterenSenseData.txt": KASTEREN}, "kasterenSenseData.txt"),
    "tapia": (
        {"1_sensors.csv": TAPIA_SENSORS, "1_activities_data.csv": TAPIA_DATA},
        "1_activities_data.csv",
    ),
    "ha": ({"device_map.csv": DEVICE_MAP, "devices.csv": DEVICES}, "devices.csv"),
}
_FOLDERS = itertools.count()
junk_line = st.one_of(
    st.text(max_size=60),
    st.binary(max_size=60).map(lambda b: b.decode("latin-1")),
    st.sampled_from(
        [
            "2011-06-15 99:99:99 A B ON",
            "25-Feb-2008 00:20:14\t24-Feb-2008 00:22:57\t5\t1",
            "X,4/31/2003,1:2:3,4:5:6",
            "31.02.2023 10:00:00,0,True",
            "2011-11-28 02:27:59\t2011-11-28 10:18:11\tBed\tPressure",
            "9" * 400,
        ]
    ),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    layout=st.sampled_from(sorted(LAYOUTS)), extra=st.lists(junk_line, max_size=8), data=st.data()
)
def test_fuzz_junk_lines_never_raise(
    tmp_path: Path, layout: str, extra: list[str], data: st.DataObject
) -> None:
    files, target = LAYOUTS[layout]
    folder = tmp_path / f"{layout}_{next(_FOLDERS)}"
    folder.mkdir()
    for name, text in files.items():
        lines = text.splitlines()
        if name == target:
            at = data.draw(st.integers(0, len(lines)))
            lines[at:at] = extra
        (folder / name).write_bytes("\n".join(lines).encode("utf-8", "surrogatepass"))
    stats = ParseStats()
    events = load_home(folder, stats)
    assert [e.ts for e in events] == sorted(e.ts for e in events)
    assert all(isinstance(e.new_state, str) and e.new_state for e in events)


# --- real data --------------------------------------------------------------------------------

# folder: (accepted input records, distinct entities, events) as measured; README: CASAS 61,578
# events / 7 room sensors, Ordonez 409 intervals / 12 sensors, Kasteren 1,319 / 14, Tapia 2,772
# activations / 76 sensors listed, HA 228 state changes / 78 entities mapped.
REAL = {
    "casas_al_smarthome": (61578, 12, 61578),
    "ordonez_A": (409, 12, 818),
    "kasteren_houseA": (1319, 14, 2620),
    "mit_tapia_1": (2772, 72, 5196),
    "ha_recording_sample": (228, 36, 228),
}


@pytest.mark.parametrize("folder", sorted(REAL))
def test_real_home_logs(folder: str) -> None:
    path = HOMES / folder
    if not path.is_dir():
        pytest.skip(f"../shared/data/home_events/{folder} absent (set GIOT_DATA)")
    stats = ParseStats()
    events = load_home(path, stats)
    accepted, entities, count = REAL[folder]
    assert stats.total_rejected == 0
    assert stats.accepted == accepted
    assert len({e.entity_id for e in events}) == entities
    assert len(events) == count
    assert [e.ts for e in events] == sorted(e.ts for e in events)
    span_days = (events[-1].ts - events[0].ts) / 86400
    assert 0.1 < span_days < 40
    last: dict[str, str] = {}
    for event in events:
        assert event.old_state == last.get(event.entity_id)
        last[event.entity_id] = event.new_state
        assert event.domain == event.entity_id.split(".")[0]
    if folder in ("ordonez_A", "kasteren_houseA", "mit_tapia_1"):  # merged intervals alternate
        for entity in {e.entity_id for e in events}:
            states = [e.new_state for e in events if e.entity_id == entity]
            assert all(a != b for a, b in itertools.pairwise(states)), entity
