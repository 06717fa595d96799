"""Entity snapshots, one platform at a time, and how per-device entities are linked."""

import pytest
from homeassistant.const import Platform
from homeassistant.core import HomeAssistant
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers import entity_registry as er
from pytest_homeassistant_custom_component.common import MockConfigEntry, snapshot_platform
from syrupy.assertion import SnapshotAssertion

from custom_components.giot.const import DOMAIN


@pytest.mark.freeze_time("2026-11-23 10:00:00+00:00")
@pytest.mark.parametrize(
    "platforms",
    [
        [Platform.BINARY_SENSOR],
        [Platform.BUTTON],
        [Platform.EVENT],
        [Platform.SENSOR],
        [Platform.SWITCH],
    ],
)
async def test_entities(
    hass: HomeAssistant,
    entity_registry: er.EntityRegistry,
    snapshot: SnapshotAssertion,
    init_integration: MockConfigEntry,
) -> None:
    """Every entity's registry entry and state."""
    await snapshot_platform(hass, entity_registry, snapshot, init_integration.entry_id)


@pytest.mark.usefixtures("init_integration")
async def test_devices_are_linked_not_claimed(
    hass: HomeAssistant,
    device_registry: dr.DeviceRegistry,
    entity_registry: er.EntityRegistry,
    camera: dr.DeviceEntry,
    giot_entry: MockConfigEntry,
) -> None:
    """The camera's GIoT entities sit on the camera's device, which stays its owner's."""
    anomaly = entity_registry.async_get("binary_sensor.camera_anomaly")
    assert anomaly is not None
    assert anomaly.device_id == camera.id
    device = device_registry.async_get(camera.id)
    assert device is not None
    assert device.config_entry_id != giot_entry.entry_id
    assert (DOMAIN, giot_entry.entry_id) not in device.identifiers

    hub = device_registry.async_get_device_by_identifier(
        (DOMAIN, giot_entry.entry_id), giot_entry.entry_id
    )
    assert hub is not None
    assert hub.entry_type is dr.DeviceEntryType.SERVICE
    switch = entity_registry.async_get("switch.giot_away_mode")
    assert switch is not None
    assert switch.device_id == hub.id
