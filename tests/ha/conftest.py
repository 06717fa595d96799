"""Fixtures for the Home Assistant tests.

The integration package is imported here, at collection time, on purpose: if it were first
imported after the ``hass`` fixture starts, Home Assistant would mount the test plugin's own
``testing_config/custom_components`` first and report "Integration not found".
"""

import shutil
from collections.abc import AsyncGenerator, Callable, Coroutine, Generator, Iterator
from typing import Any
from unittest.mock import patch

import pytest
from homeassistant.const import Platform
from homeassistant.core import HomeAssistant
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers import entity_registry as er
from pytest_homeassistant_custom_component.common import MockConfigEntry, get_test_config_dir
from pytest_homeassistant_custom_component.syrupy import HomeAssistantSnapshotExtension
from syrupy.assertion import SnapshotAssertion

import custom_components.giot
from custom_components.giot.const import CONF_DEVICES, DOMAIN
from custom_components.giot.coordinator import GIoTCoordinator
from giot_engine.records import FlowRecord

from .fake_node import FakeNode
from .real_hass import RealHass, run_real_hass

CAMERA_MAC = "aa:bb:cc:dd:ee:01"
CAMERA_IP = "192.168.1.50"
CAMERA_ENTITY = "binary_sensor.camera_motion"
CAMERA_DEVICE_ID = "0123456789abcdef0123456789abcdef"
ENTRY_ID = "01KGIOTENTRY00000000000000"


@pytest.fixture(autouse=True)
def auto_enable_custom_integrations(enable_custom_integrations: None) -> None:
    """Let Home Assistant load integrations from custom_components/."""


@pytest.fixture(autouse=True)
def untrained_first_start(request: pytest.FixtureRequest) -> Generator[None]:
    """Start hubs without the shipped base model, unless a test asks for ``shipped_base_model``.

    The tests pin down what a hub does from an untrained model (scores, versions, snapshots);
    tests/ha/test_signed_models.py checks the first start from the base model.
    """
    if "shipped_base_model" in request.fixturenames:
        yield
        return
    with (
        patch("custom_components.giot.coordinator.BASE_MODEL_DIR", None),
        patch("custom_components.giot.detector_runner.BASE_MODEL_DIR", None),
    ):
        yield


@pytest.fixture
def shipped_base_model() -> None:
    """Let the hub start from the base model shipped in the integration (as it does)."""


@pytest.fixture
def snapshot(snapshot: SnapshotAssertion) -> SnapshotAssertion:
    """Home Assistant's snapshot extension (tests/ha/snapshots/*.ambr, HA-aware serialisers).

    The plugin defines the same fixture, but syrupy's own wins the plugin ordering here.
    """
    return snapshot.use_extension(HomeAssistantSnapshotExtension)


@pytest.fixture
def hass_config_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Give every test its own config directory (not its ``tmp_path``, which tests use).

    GIoT's window store writes real files under ``.storage/giot``; in the plugin's shared
    testing_config they would leak from one test (and one run) into the next.
    """
    config_dir = tmp_path_factory.mktemp("config")
    shutil.copytree(get_test_config_dir(), config_dir, symlinks=True, dirs_exist_ok=True)
    return str(config_dir)


@pytest.fixture
def real_hass(tmp_path_factory: pytest.TempPathFactory, socket_enabled: None) -> Iterator[RealHass]:
    """A real `python -m homeassistant`, started as `scripts/develop` starts it (fresh config)."""
    with run_real_hass(tmp_path_factory.mktemp("real-hass") / "config") as hass:
        yield hass


@pytest.fixture
def mock_config_entry() -> MockConfigEntry:
    """A GIoT entry as the user step creates it."""
    return MockConfigEntry(domain=DOMAIN, title="GIoT", data={})


@pytest.fixture
def mock_setup_entry() -> Generator[None]:
    """Keep config flow tests from setting the entry up."""
    with patch("custom_components.giot.async_setup_entry", return_value=True):
        yield


@pytest.fixture
def camera(hass: HomeAssistant) -> dr.DeviceEntry:
    """A camera another integration owns: one entity, known to the registry by its MAC."""
    owner = MockConfigEntry(domain="camera_vendor", title="Camera vendor")
    owner.add_to_hass(hass)
    # A fixed device id keeps unique ids (entry id + device id + key) stable in snapshots.
    with patch("homeassistant.util.uuid.getrandbits", return_value=int(CAMERA_DEVICE_ID, 16)):
        device = dr.async_get(hass).async_get_or_create(
            config_entry_id=owner.entry_id,
            connections={(dr.CONNECTION_NETWORK_MAC, CAMERA_MAC)},
            identifiers={("camera_vendor", "cam-1")},
            manufacturer="Vendor",
            model="Cam 1",
            name="Camera",
        )
    er.async_get(hass).async_get_or_create(
        "binary_sensor",
        "camera_vendor",
        "cam-1-motion",
        config_entry=owner,
        device_id=device.id,
        suggested_object_id="camera_motion",
    )
    hass.states.async_set(CAMERA_ENTITY, "off")
    return device


@pytest.fixture
def options(camera: dr.DeviceEntry) -> dict[str, Any]:
    """Options that watch the camera."""
    return {CONF_DEVICES: [camera.id]}


@pytest.fixture
def giot_entry(hass: HomeAssistant, options: dict[str, Any]) -> MockConfigEntry:
    """A GIoT entry watching the camera, added to hass."""
    entry = MockConfigEntry(
        domain=DOMAIN, title="GIoT", data={}, options=options, entry_id=ENTRY_ID
    )
    entry.add_to_hass(hass)
    return entry


@pytest.fixture
def platforms() -> list[Platform]:
    """Platforms to load (snapshot tests narrow this to one)."""
    return list(custom_components.giot.PLATFORMS)


@pytest.fixture
async def init_integration(
    hass: HomeAssistant, giot_entry: MockConfigEntry, platforms: list[Platform]
) -> AsyncGenerator[MockConfigEntry]:
    """Set GIoT up with the chosen platforms."""
    with patch("custom_components.giot.PLATFORMS", platforms):
        assert await hass.config_entries.async_setup(giot_entry.entry_id)
        await hass.async_block_till_done()
        yield giot_entry


@pytest.fixture
def camera_entry_options(
    hass: HomeAssistant, options: dict[str, Any]
) -> Callable[..., Coroutine[Any, Any, MockConfigEntry]]:
    """Set up a GIoT entry watching the camera with extra options."""

    async def _setup(**extra: Any) -> MockConfigEntry:
        entry = MockConfigEntry(domain=DOMAIN, data={}, options={**options, **extra})
        entry.add_to_hass(hass)
        assert await hass.config_entries.async_setup(entry.entry_id)
        await hass.async_block_till_done()
        return entry

    return _setup


@pytest.fixture
def coordinator(init_integration: MockConfigEntry) -> GIoTCoordinator:
    """The loaded entry's coordinator."""
    coordinator: GIoTCoordinator = init_integration.runtime_data.coordinator
    return coordinator


REMOTE = "93.184.216.34"


def normal_flows(
    start: float, count: int = 40, *, mac: str | None = CAMERA_MAC
) -> list[FlowRecord]:
    """The camera's routine: one https upload to its cloud every 30 s (enough to warm up)."""
    return [
        FlowRecord(
            ts=start + i * 30.0,
            orig_h=CAMERA_IP,
            orig_p=50000 + i,
            resp_h=REMOTE,
            resp_p=443,
            proto="tcp",
            duration=0.3,
            orig_bytes=500,
            resp_bytes=4000,
            conn_state="SF",
            orig_pkts=5,
            resp_pkts=6,
            orig_mac=mac,
        )
        for i in range(count)
    ]


def scan_flows(
    start: float, count: int = 30, *, src: str = CAMERA_IP, mac: str | None = CAMERA_MAC
) -> list[FlowRecord]:
    """A horizontal-then-vertical port scan: one new destination port every 100 ms."""
    return [
        FlowRecord(
            ts=start + i * 0.1,
            orig_h=src,
            orig_p=40000 + i,
            resp_h="192.168.1.1",
            resp_p=20 + i,
            proto="tcp",
            conn_state="S0",
            orig_mac=mac,
        )
        for i in range(count)
    ]


@pytest.fixture
async def fake_node(socket_enabled: None) -> AsyncGenerator[FakeNode]:
    """A GIoT node listening on 127.0.0.1 (a real WebSocket server)."""
    node = FakeNode()
    await node.start()
    yield node
    await node.stop()
