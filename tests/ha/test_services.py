"""GIoT actions in a real Home Assistant: response data, feedback, validation errors."""

import re
import time

import pytest
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import ServiceValidationError
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers.service import async_get_all_descriptions
from homeassistant.helpers.translation import async_get_translations
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.giot.const import DOMAIN
from custom_components.giot.coordinator import GIoTCoordinator

from .conftest import CAMERA_ENTITY, normal_flows, scan_flows


async def test_describe_device_returns_description(
    hass: HomeAssistant, coordinator: GIoTCoordinator, camera: dr.DeviceEntry
) -> None:
    """describe_device answers with what the device normally does and its last alarm."""
    start = time.time() - 3600
    coordinator.ingest.async_add_flows(normal_flows(start))
    coordinator.ingest.async_add_flows(scan_flows(start + 1210))
    await hass.async_block_till_done()
    response = await hass.services.async_call(
        DOMAIN,
        "describe_device",
        {"device_id": camera.id},
        blocking=True,
        return_response=True,
    )
    assert response is not None
    assert response["device"] == "Camera"
    assert str(response["summary"]).startswith("Mostly talks https (443/tcp)")
    assert "A typical connection moves" in str(response["description"])
    assert response["alarm"] is True
    assert re.search(r"\d connection attempts? in the last minute", str(response["explanation"]))
    # the learnt MUD-shaped profile: the camera's https to the internet, no addresses in it
    profile = response["profile"]
    assert isinstance(profile, dict)
    aces = profile["ietf-access-control-list:acls"]["acl"][0]["aces"]["ace"]
    assert aces[0]["matches"]["tcp"]["destination-port"]["port"] == 443
    assert aces[0]["matches"]["giot:scope"] == "remote"
    assert profile["giot:timing"]["median-gap-s"] == 30.0
    assert "93.184.216.34" not in str(profile)

    # Our own entity of the device names it too.
    by_entity = await hass.services.async_call(
        DOMAIN,
        "describe_device",
        {"entity_id": "sensor.camera_behaviour"},
        blocking=True,
        return_response=True,
    )
    assert by_entity == response


async def test_network_only_device_by_its_entity(
    hass: HomeAssistant, coordinator: GIoTCoordinator
) -> None:
    """A device seen only on the network is named through a GIoT entity on the hub."""
    coordinator.ingest.async_add_flows(scan_flows(time.time(), 3, src="192.168.1.77", mac=None))
    await hass.async_block_till_done()
    response = await hass.services.async_call(
        DOMAIN,
        "describe_device",
        {"entity_id": "binary_sensor.giot_192_168_1_77_anomaly"},
        blocking=True,
        return_response=True,
    )
    assert response is not None
    assert response["device"] == "192.168.1.77"
    assert response["alarm"] is False


@pytest.mark.usefixtures("init_integration")
@pytest.mark.parametrize(
    "target",
    [
        {"device_id": "not-a-device"},
        {"entity_id": "light.unknown"},
        {"entity_id": "switch.giot_away_mode"},
    ],
)
async def test_unwatched_device_is_refused(hass: HomeAssistant, target: dict[str, str]) -> None:
    """Naming something GIoT does not watch is a translated validation error."""
    with pytest.raises(ServiceValidationError) as err:
        await hass.services.async_call(DOMAIN, "mark_normal", target, blocking=True)
    assert err.value.translation_key == "device_not_watched"


@pytest.mark.usefixtures("init_integration")
async def test_snooze_too_long_is_refused(hass: HomeAssistant) -> None:
    """A snooze is capped so that a device cannot be silenced and forgotten."""
    with pytest.raises(ServiceValidationError) as err:
        await hass.services.async_call(
            DOMAIN,
            "snooze",
            {"entity_id": CAMERA_ENTITY, "duration": {"days": 8}},
            blocking=True,
        )
    assert err.value.translation_key == "snooze_too_long"
    assert err.value.translation_placeholders == {"max_days": "7"}
    assert str(err.value) == "A snooze lasts at most 7 days"  # HA drops the final period


async def test_train_now_records_training(
    hass: HomeAssistant, coordinator: GIoTCoordinator
) -> None:
    """train_now trains the local model on stored windows and stamps the hub's last training."""
    assert hass.states.get("sensor.giot_last_training").state == "unknown"
    await hass.services.async_call(DOMAIN, "train_now", {}, blocking=True)
    assert hass.states.get("sensor.giot_model_version").state == "giot-untrained"  # no data
    assert hass.states.get("sensor.giot_last_training").state == "unknown"
    coordinator.ingest.async_add_flows(normal_flows(time.time() - 3600))
    await hass.async_block_till_done()
    await hass.services.async_call(DOMAIN, "train_now", {}, blocking=True)
    assert hass.states.get("sensor.giot_last_training").state != "unknown"
    assert hass.states.get("sensor.giot_model_version").state == "giot-1"
    assert coordinator.hub.training is False


async def test_actions_need_a_loaded_entry(
    hass: HomeAssistant, mock_config_entry: MockConfigEntry
) -> None:
    """Actions exist as soon as GIoT is set up, and say so when no entry is loaded."""
    mock_config_entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(mock_config_entry.entry_id)
    await hass.async_block_till_done()
    assert await hass.config_entries.async_unload(mock_config_entry.entry_id)
    await hass.async_block_till_done()
    with pytest.raises(ServiceValidationError) as err:
        await hass.services.async_call(DOMAIN, "train_now", {}, blocking=True)
    assert err.value.translation_key == "not_loaded"


@pytest.mark.usefixtures("init_integration")
async def test_actions_are_described_and_translated(hass: HomeAssistant) -> None:
    """services.yaml and the translations describe every registered action and field."""
    descriptions = await async_get_all_descriptions(hass)
    ours = descriptions[DOMAIN]
    assert set(ours) == {"describe_device", "mark_normal", "snooze", "train_now"}
    assert set(ours["snooze"]["fields"]) == {"device_id", "entity_id", "duration"}
    assert ours["describe_device"]["response"] == {"optional": False}
    translations = await async_get_translations(hass, "en", "services", [DOMAIN])
    for action, description in ours.items():
        assert translations[f"component.{DOMAIN}.services.{action}.name"]
        for field in description.get("fields", {}):
            assert translations[f"component.{DOMAIN}.services.{action}.fields.{field}.name"]
