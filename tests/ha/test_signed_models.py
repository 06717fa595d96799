"""The shipped base model at first start, and global models checked against the server's key."""

import asyncio
import json
import time
from collections.abc import Callable

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from homeassistant import config_entries
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.helpers import issue_registry as ir
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.giot.const import (
    BASE_MODEL_DIR,
    CONF_FEDERATION,
    CONF_NODE_HOST,
    CONF_NODE_PORT,
    CONF_NODE_TOKEN,
    CONF_SERVER_KEY,
    DOMAIN,
)
from custom_components.giot.coordinator import GIoTCoordinator
from custom_components.giot.federation import signature_problem
from giot_engine.artifact import arrays_digest, check_manifest, model_message
from giot_engine.records import FlowRecord

from .conftest import CAMERA_IP, CAMERA_MAC, normal_flows
from .fake_node import NODE_ID, TOKEN, FakeNode, task
from .test_node_link import global_model

ANOMALY = "binary_sensor.camera_anomaly"
WAIT_S = 5.0


async def until(condition: Callable[[], object]) -> None:
    """Wait for the link's background work."""
    async with asyncio.timeout(WAIT_S):
        while not condition():  # noqa: ASYNC110 - polled: nothing signals background work
            await asyncio.sleep(0.01)


def _key() -> tuple[Ed25519PrivateKey, str]:
    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return key, raw.hex()


def _signed(key: Ed25519PrivateKey, arrays: dict[str, np.ndarray], rnd: int) -> dict[str, str]:
    digest = arrays_digest(arrays)
    signature = key.sign(model_message("base-x+run7.r3", rnd, digest)).hex()
    return {"model-version": "base-x+run7.r3", "model-sha256": digest, "model-signature": signature}


def knocking(start: float, count: int = 60) -> list[FlowRecord]:
    """Failed TCP attempts to one remote host and port, two a second: IoT-23's Mirai scanning."""
    return [
        FlowRecord(
            ts=start + i * 0.5,
            orig_h=CAMERA_IP,
            orig_p=40000 + i,
            resp_h="66.67.61.168",
            resp_p=63798,
            proto="tcp",
            conn_state="S0",
            orig_mac=CAMERA_MAC,
        )
        for i in range(count)
    ]


def test_the_shipped_base_model_is_small_and_whole() -> None:
    manifest = check_manifest(BASE_MODEL_DIR)  # every file matches its hash
    meta = json.loads((BASE_MODEL_DIR / "giot.json").read_text())
    assert meta["origin"] == "base"
    assert meta["version"] == manifest["version"]
    assert meta["signature_head"]["trained"]
    assert sum(p.stat().st_size for p in BASE_MODEL_DIR.iterdir()) < 500_000
    card = (BASE_MODEL_DIR / "README.md").read_text()
    assert "license: cc-by-4.0" in card
    assert "Garcia" in card
    assert "CC BY 4.0" in card


@pytest.mark.usefixtures("shipped_base_model")
async def test_first_start_detects_with_the_shipped_base_model(
    hass: HomeAssistant, coordinator: GIoTCoordinator
) -> None:
    """No model of its own: the hub scores with the base model and names known attacks."""
    version = json.loads((BASE_MODEL_DIR / "giot.json").read_text())["version"]
    assert coordinator.hub.model_origin == "base"
    assert coordinator.hub.model_version == version
    assert hass.states.get("sensor.giot_model_version").state == version
    info = coordinator.detector.model_info
    assert (info["scorer"], info["signature_head"], info["base"]) == ("giot", "trained", version)

    start = time.time() - 3600
    coordinator.ingest.async_add_flows(normal_flows(start))
    coordinator.ingest.async_add_flows(knocking(start + 40 * 30.0 + 10))
    await hass.async_block_till_done()
    anomaly = hass.states.get(ANOMALY)
    assert anomaly.state == "on"
    assert anomaly.attributes["alert_type"] == "port_scan"  # the head's name, not the hub's


@pytest.mark.usefixtures("socket_enabled")
async def test_a_global_model_needs_the_servers_signature(hass: HomeAssistant) -> None:
    """Unsigned or wrongly signed: refused, repair raised, model kept; signed: taken."""
    key, public = _key()
    node = FakeNode(server_key=public)
    await node.start()
    try:
        entry = MockConfigEntry(
            domain=DOMAIN,
            unique_id=NODE_ID,
            data={
                CONF_NODE_HOST: "127.0.0.1",
                CONF_NODE_PORT: node.port,
                CONF_NODE_TOKEN: TOKEN,
                CONF_SERVER_KEY: public,
            },
            options={CONF_FEDERATION: True},
        )
        entry.add_to_hass(hass)
        assert await hass.config_entries.async_setup(entry.entry_id)
        await hass.async_block_till_done()
        coordinator: GIoTCoordinator = entry.runtime_data.coordinator
        await node.wait_connected()
        before = coordinator.hub.model_version
        arrays = global_model()  # every tensor of the hub's model, as the server publishes it
        other, _ = _key()
        bad = {
            "unsigned": {"version": "v9", "round": 3},
            "another key": {"version": "v9", "round": 3, **_signed(other, arrays, 3)},
            "another round": {"version": "v9", "round": 3, **_signed(key, arrays, 2)},
        }
        for n, config in enumerate(bad.values()):
            await node.send("task", task(f"e{n}", "evaluate", config=config), arrays)
            result = await node.next_frame()
            assert (result.body["status"], result.body["reason"]) == ("refused", "invalid_model")
            assert coordinator.hub.model_version == before
            issue = ir.async_get(hass).async_get_issue(DOMAIN, "node_incompatible_model")
            assert issue is not None
            assert issue.translation_placeholders == {"detail": "invalid_model"}
        # the same tensors, changed by one value after signing
        config = {"version": "v9", "round": 3, **_signed(key, arrays, 3)}
        tampered = {k: v * np.float32(1.01) for k, v in arrays.items()}
        await node.send("task", task("e9", "evaluate", config=config), tampered)
        assert (await node.next_frame()).body["status"] == "refused"

        await node.send("task", task("ok", "evaluate", config=config), arrays)
        result = await node.next_frame()
        assert (result.body["status"], result.body["reason"]) in {
            ("ok", ""),
            ("skipped", "no_data"),
        }
        assert coordinator.hub.model_version != before
        assert coordinator.hub.model_origin == "global round 3"
        assert ir.async_get(hass).async_get_issue(DOMAIN, "node_incompatible_model") is None
    finally:
        await node.stop()


def test_signature_problem_says_why() -> None:
    key, public = _key()
    arrays = {"w": np.arange(4, dtype=np.float32)}
    body = task(kind="evaluate", config=_signed(key, arrays, 3))
    assert signature_problem(public, body, arrays) == ""
    assert signature_problem(public, task(kind="evaluate"), arrays) == "unsigned"
    assert signature_problem("zz", body, arrays) == "unreadable signature or key"
    assert signature_problem(public, body, {"w": arrays["w"][::-1].copy()}) == (
        "not signed by the server's key"
    )


@pytest.mark.usefixtures("socket_enabled", "mock_setup_entry")
async def test_pairing_learns_the_servers_key(hass: HomeAssistant) -> None:
    _, public = _key()
    node = FakeNode(server_key=public)
    await node.start()
    try:
        result = await hass.config_entries.flow.async_init(
            DOMAIN, context={"source": config_entries.SOURCE_USER}
        )
        result = await hass.config_entries.flow.async_configure(
            result["flow_id"],
            {CONF_NODE_HOST: "127.0.0.1", CONF_NODE_PORT: node.port, CONF_NODE_TOKEN: TOKEN},
        )
        assert result["type"] is FlowResultType.CREATE_ENTRY
        assert result["data"][CONF_SERVER_KEY] == public
    finally:
        await node.stop()


@pytest.mark.usefixtures("socket_enabled")
async def test_an_entry_paired_before_learns_the_key_once(hass: HomeAssistant) -> None:
    """Paired without a key: the first welcome that names one teaches it; a later one does not."""
    _, public = _key()
    _, other = _key()
    node = FakeNode(server_key=public)
    await node.start()
    try:
        entry = MockConfigEntry(
            domain=DOMAIN,
            unique_id=NODE_ID,
            data={CONF_NODE_HOST: "127.0.0.1", CONF_NODE_PORT: node.port, CONF_NODE_TOKEN: TOKEN},
            options={CONF_FEDERATION: True},
        )
        entry.add_to_hass(hass)
        assert await hass.config_entries.async_setup(entry.entry_id)
        await hass.async_block_till_done()
        await node.wait_connected()
        await until(lambda: entry.data.get(CONF_SERVER_KEY) == public)
        coordinator: GIoTCoordinator = entry.runtime_data.coordinator
        assert coordinator.link is not None
        coordinator.link._async_learn_key(other)  # a node that names another server later
        assert entry.data[CONF_SERVER_KEY] == public
    finally:
        await node.stop()
