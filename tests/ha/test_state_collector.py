"""State changes on the real event bus become DeviceEvents; the watched set follows registries."""

from dataclasses import replace
from pathlib import Path

import pytest
from homeassistant.const import STATE_UNAVAILABLE
from homeassistant.core import Context, HomeAssistant
from homeassistant.helpers import area_registry as ar
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers import entity_registry as er
from homeassistant.helpers import label_registry as lr
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.giot.const import DOMAIN
from custom_components.giot.state_collector import (
    MonitoredSelection,
    StateCollector,
    allowed_attributes,
    async_resolve_monitored_entities,
)
from giot_engine.event_features import numeric_change
from giot_engine.home_events import load_ha_recording
from giot_engine.records import DeviceEvent, ParseStats
from giot_engine.tokenizer import TokenContext, event_tokens


class Registry:
    """A few devices and entities of another integration, as a home would have them."""

    def __init__(self, hass: HomeAssistant) -> None:
        self.entry = MockConfigEntry(domain="test")
        self.entry.add_to_hass(hass)
        self.dev_reg = dr.async_get(hass)
        self.ent_reg = er.async_get(hass)
        self.area = ar.async_get(hass).async_create("Kitchen")
        self.label = lr.async_get(hass).async_create("Watch")
        self.lamp = self.device("lamp", area_id=self.area.id)
        self.plug = self.device("plug", labels={self.label.label_id})
        self.thermostat = self.device("thermostat")

    def device(self, name: str, **update: object) -> dr.DeviceEntry:
        device = self.dev_reg.async_get_or_create(
            config_entry_id=self.entry.entry_id, identifiers={("test", name)}, name=name
        )
        if update:
            updated = self.dev_reg.async_update_device(device.id, **update)  # type: ignore[arg-type]
            assert isinstance(updated, dr.DeviceEntry)
            return updated
        return device

    def entity(
        self, domain: str, name: str, device: dr.DeviceEntry | None, **kwargs: object
    ) -> str:
        entry = self.ent_reg.async_get_or_create(
            domain,
            "test",
            name,
            suggested_object_id=name,
            config_entry=self.entry,
            device_id=device.id if device is not None else None,
            **kwargs,  # type: ignore[arg-type]
        )
        return entry.entity_id


@pytest.fixture
def registry(hass: HomeAssistant) -> Registry:
    """Devices: a lamp in the kitchen, a labelled plug, a thermostat."""
    return Registry(hass)


def test_attribute_allow_list() -> None:
    """Only behaviour attributes survive, as short strings."""
    attributes = {
        "brightness": 128,
        "color_mode": "hs",
        "friendly_name": "Kitchen lamp",
        "entity_picture": "/local/x.png",
        "rgb_color": [255, 0, 0],
        "effect": "x" * 100,
    }
    assert allowed_attributes("light", attributes) == {"brightness": "128", "color_mode": "hs"}
    assert allowed_attributes("sensor", {"battery_level": 80, "unit": "W"}) == {
        "battery_level": "80"
    }
    assert numeric_change("20", "25") == pytest.approx(0.25)
    assert numeric_change("-4", "-2") == pytest.approx(0.5)
    assert numeric_change("0", "3") is None
    assert numeric_change("on", "off") is None
    assert numeric_change(None, "3") is None


async def test_state_changes_become_device_events(hass: HomeAssistant, registry: Registry) -> None:
    """Source, domain, device, device class, numeric change and attributes are mapped."""
    lamp = registry.entity("light", "kitchen_lamp", registry.lamp)
    power = registry.entity("sensor", "plug_power", registry.plug, original_device_class="power")
    thermo = registry.entity("climate", "thermostat", registry.thermostat)
    hass.states.async_set(lamp, "off", {"friendly_name": "Lamp"})
    hass.states.async_set(power, "100")
    hass.states.async_set(thermo, "heat", {"hvac_action": "idle"})
    await hass.async_block_till_done()

    events: list[DeviceEvent] = []
    collector = StateCollector(hass, [lamp, power, thermo], events.append)
    await collector.async_start()
    assert collector.entity_ids == {lamp, power, thermo}

    user = Context(user_id="user-1")
    hass.states.async_set(
        lamp,
        "on",
        {"brightness": 200, "color_mode": "brightness", "friendly_name": "Lamp"},
        context=user,
    )
    automation = Context(parent_id=Context().id)
    hass.states.async_set(power, "150", context=automation)
    hass.states.async_set(thermo, "heat", {"hvac_action": "heating", "current_temperature": 19})
    hass.states.async_set("light.not_watched", "on")
    await hass.async_block_till_done()

    assert [e.entity_id for e in events] == [lamp, power, thermo]
    light, sensor, climate = events
    assert light.domain == "light"
    assert (light.old_state, light.new_state) == ("off", "on")
    assert light.source == "user"
    assert light.device_id == registry.lamp.id
    assert light.attributes == {"brightness": "200", "color_mode": "brightness"}
    assert light.numeric_change is None
    assert light.ts == hass.states.get(lamp).last_updated_timestamp  # type: ignore[union-attr]

    assert sensor.source == "automation"
    assert sensor.device_class == "power"  # from the registry: the state has none
    assert sensor.numeric_change == pytest.approx(0.5)
    assert sensor.device_id == registry.plug.id

    # same state, a behaviour attribute changed: an event from the device itself
    assert climate.source == "device"
    assert (climate.old_state, climate.new_state) == ("heat", "heat")
    assert climate.attributes == {"hvac_action": "heating"}
    await collector.async_stop()


# One home's state changes, as Home Assistant's event bus carries them and as a recording of them
# (the engine's home-log loader) reads them back: live scoring and training must see one event.
SAME_CHANGES = [
    ("sensor.plug_power", "100"),
    ("sensor.plug_power", "150"),
    ("sensor.outdoor_temperature", "-4"),
    ("binary_sensor.hall", "off"),
    ("sensor.plug_power", "0"),
    ("sensor.outdoor_temperature", "-2"),
    ("sensor.plug_power", "3"),
    ("binary_sensor.hall", "on"),
    ("sensor.plug_power", "unavailable"),
    ("sensor.outdoor_temperature", "1e400"),
    ("sensor.plug_power", "12.5"),
    ("sensor.outdoor_temperature", "nan"),
    ("sensor.outdoor_temperature", "2.25"),
    ("light.desk", "on"),
    ("light.desk", "off"),
]


async def test_live_and_recorded_changes_are_one_event(hass: HomeAssistant, tmp_path: Path) -> None:
    """The collector and the home-log loader give the same records, features and tokens."""
    entities = sorted({entity_id for entity_id, _ in SAME_CHANGES})
    live: list[DeviceEvent] = []
    collector = StateCollector(hass, entities, live.append)
    await collector.async_start()
    for entity_id, state in SAME_CHANGES:
        hass.states.async_set(entity_id, state)
        await hass.async_block_till_done()
    await collector.async_stop()

    (tmp_path / "device_map.csv").write_text(
        "".join(f"{i},{entity_id}\n" for i, entity_id in enumerate(entities))
    )
    rows = [
        f"01.03.2024 08:{minute:02d}:00,{entities.index(entity_id)},{state}\n"
        for minute, (entity_id, state) in enumerate(SAME_CHANGES)
    ]
    (tmp_path / "devices.csv").write_text("time,device,value\n" + "".join(rows))
    stats = ParseStats()
    recorded = load_ha_recording(tmp_path, stats)
    assert stats.total_rejected == 0

    assert len(live) == len(recorded) == len(SAME_CHANGES)
    assert any(e.numeric_change is not None for e in live)
    context = TokenContext()
    for seen, read in zip(live, recorded, strict=True):
        if seen.domain == "light":
            # who switched a light is in Home Assistant's context; a recording does not say
            assert (seen.source, read.source) == ("device", "unknown")
        same = replace(seen, ts=read.ts, source=read.source)
        assert same == read
        assert event_tokens(same, context) == event_tokens(read, context)
    assert [e.source for e in live if e.domain != "light"] == [
        e.source for e in recorded if e.domain != "light"
    ]


async def test_unavailable_kept_noise_dropped(hass: HomeAssistant, registry: Registry) -> None:
    """Unavailable/unknown transitions are events; attribute noise and removals are not."""
    plug = registry.entity("switch", "plug", registry.plug)
    hass.states.async_set(plug, "on")
    events: list[DeviceEvent] = []
    collector = StateCollector(hass, [plug], events.append)
    await collector.async_start()

    hass.states.async_set(plug, STATE_UNAVAILABLE)
    hass.states.async_set(plug, "on")
    hass.states.async_set(plug, "on", {"friendly_name": "renamed"})  # no behaviour
    hass.states.async_remove(plug)
    await hass.async_block_till_done()
    assert [(e.old_state, e.new_state) for e in events] == [
        ("on", STATE_UNAVAILABLE),
        (STATE_UNAVAILABLE, "on"),
    ]
    stats = collector.stats
    assert stats.accepted == 2
    assert stats.ignored == {"attributes_only": 1, "removed": 1}
    assert stats.monitored == 1

    await collector.async_stop()
    hass.states.async_set(plug, "off")
    await hass.async_block_till_done()
    assert len(events) == 2  # stopped: nothing more


async def test_resolve_selection(hass: HomeAssistant, registry: Registry) -> None:
    """Devices, areas (own or the device's) and labels (own or the device's) resolve."""
    lamp = registry.entity("light", "kitchen_lamp", registry.lamp)
    moved = registry.entity("sensor", "lamp_temperature", registry.lamp)
    hall = ar.async_get(hass).async_create("Hall")
    # an entity may sit in another area than its device only with a name of its own
    registry.ent_reg.async_update_entity(moved, area_id=hall.id, name="Lamp temperature")
    plug = registry.entity("switch", "plug", registry.plug)
    thermo = registry.entity("climate", "thermostat", registry.thermostat)
    thermo_battery = registry.entity("sensor", "thermostat_battery", registry.thermostat)
    registry.ent_reg.async_update_entity(thermo_battery, labels={registry.label.label_id})
    loose = registry.entity("sensor", "outdoor", None)
    registry.ent_reg.async_update_entity(loose, area_id=registry.area.id, name="Outdoor")
    disabled = registry.entity(
        "switch", "plug_led", registry.plug, disabled_by=er.RegistryEntryDisabler.USER
    )
    own = registry.ent_reg.async_get_or_create(
        "sensor", DOMAIN, "anomaly", config_entry=registry.entry, device_id=registry.plug.id
    ).entity_id

    def resolve(**kwargs: list[str]) -> set[str]:
        return async_resolve_monitored_entities(hass, MonitoredSelection.from_options(**kwargs))

    assert resolve(area_ids=[registry.area.id]) == {lamp, loose}  # moved one is in the hall
    assert resolve(label_ids=[registry.label.label_id]) == {plug, thermo_battery}
    assert resolve(device_ids=[registry.thermostat.id]) == {thermo, thermo_battery}
    assert resolve(device_ids=[registry.lamp.id]) == {lamp, moved}
    assert resolve(entity_ids=["sensor.not_in_registry", disabled, own]) == {
        "sensor.not_in_registry"
    }
    assert resolve() == set()


async def test_selection_follows_registry_changes(hass: HomeAssistant, registry: Registry) -> None:
    """A device added to a watched area is watched from then on, without a restart."""
    lamp = registry.entity("light", "kitchen_lamp", registry.lamp)
    thermo = registry.entity("climate", "thermostat", registry.thermostat)
    events: list[DeviceEvent] = []
    collector = StateCollector(
        hass, MonitoredSelection.from_options(area_ids=[registry.area.id]), events.append
    )
    await collector.async_start()
    assert collector.entity_ids == {lamp}

    registry.dev_reg.async_update_device(registry.thermostat.id, area_id=registry.area.id)
    await hass.async_block_till_done()
    assert collector.entity_ids == {lamp, thermo}
    hass.states.async_set(thermo, "cool")
    await hass.async_block_till_done()
    assert [e.entity_id for e in events] == [thermo]
    assert events[0].old_state is None  # first state seen: no previous state

    collector.async_set_selection(MonitoredSelection.from_options(device_ids=[registry.lamp.id]))
    assert collector.entity_ids == {lamp}
    await collector.async_stop()


async def test_registry_noise_is_not_logged(
    hass: HomeAssistant, registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    """Registry changes that leave the selection as it was say nothing; a real change says so."""
    caplog.set_level("DEBUG", logger="custom_components.giot")
    lamp = registry.entity("light", "kitchen_lamp", registry.lamp)
    collector = StateCollector(hass, MonitoredSelection.from_options(), lambda _event: None)
    await collector.async_start()
    for n in range(20):  # a busy home: other integrations' entities come and go
        registry.entity("sensor", f"other_{n}", registry.thermostat)
    await hass.async_block_till_done()
    assert [r.message for r in caplog.records if "watches" in r.message] == []
    collector.async_set_selection(MonitoredSelection.from_options(device_ids=[registry.lamp.id]))
    assert collector.entity_ids == {lamp}
    assert "GIoT now watches 1 entities (was 0)" in caplog.text
    await collector.async_stop()
