"""The node link against a real WebSocket server playing the GIoT node.

The node is the outside world here: ``FakeNode`` speaks node_protocol over aiohttp on
127.0.0.1, and every frame the integration sends is decoded with node_protocol and checked.
"""

import asyncio
import contextlib
import json
import struct
import threading
from collections.abc import Callable, Coroutine, Generator
from datetime import timedelta
from typing import Any
from unittest.mock import patch

import aiohttp
import numpy as np
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer
from homeassistant.config_entries import SOURCE_REAUTH
from homeassistant.core import HomeAssistant
from homeassistant.helpers import issue_registry as ir
from homeassistant.util import dt as dt_util
from pytest_homeassistant_custom_component.common import MockConfigEntry, async_fire_time_changed

from custom_components.giot.const import (
    CONF_FEDERATION,
    CONF_NODE_HOST,
    CONF_NODE_PORT,
    CONF_NODE_TOKEN,
    DOMAIN,
)
from custom_components.giot.coordinator import GIoTCoordinator
from custom_components.giot.diagnostics import async_get_config_entry_diagnostics
from custom_components.giot.federation import PAUSED_REASON, task_seed
from custom_components.giot.models import HubState
from custom_components.giot.node_link import (
    Channel,
    NodeAuthError,
    NodeIncompatibleError,
    NodeUnreachableError,
    answer_within,
    async_check_node,
    node_url,
)
from giot_engine import node_protocol as proto
from giot_engine.federated import TaskAnswer
from giot_engine.model_manager import N_POSITIONS

from .conftest import FederatedDetector
from .fake_node import NODE_ID, TOKEN, FakeNode, task

pytestmark = pytest.mark.usefixtures("federated", "socket_enabled")

STATUS = "sensor.giot_federation_status"
WAIT_S = 5.0
# When the hub closes the socket, the node's close reply makes aiohttp 3.14 (its coalesced
# heartbeat reset) schedule one more heartbeat on the closed socket: a stray timer that only
# finds the socket closed. Tests where the hub closes after the node's last frame allow it.
HUB_CLOSES = pytest.mark.parametrize("expected_lingering_timers", [True])


async def until(condition: Callable[[], object]) -> None:
    """Wait for what the link does in its background tasks (block_till_done does not)."""
    async with asyncio.timeout(WAIT_S):
        while not condition():  # noqa: ASYNC110 - polled: nothing signals background work
            await asyncio.sleep(0.01)


@pytest.fixture(autouse=True)
def fast_backoff() -> Generator[None]:
    """Reconnect after milliseconds instead of seconds."""
    with (
        patch("custom_components.giot.node_link.BACKOFF_MIN_S", 0.02),
        patch("custom_components.giot.node_link.BACKOFF_MAX_S", 0.1),
    ):
        yield


def node_entry(
    hass: HomeAssistant, port: int, token: str = TOKEN, **options: Any
) -> MockConfigEntry:
    """A GIoT entry paired with the node on 127.0.0.1:port."""
    entry = MockConfigEntry(
        domain=DOMAIN,
        title="GIoT",
        unique_id=NODE_ID,
        data={CONF_NODE_HOST: "127.0.0.1", CONF_NODE_PORT: port, CONF_NODE_TOKEN: token},
        options={CONF_FEDERATION: True, **options},
    )
    entry.add_to_hass(hass)
    return entry


async def setup(hass: HomeAssistant, entry: MockConfigEntry) -> GIoTCoordinator:
    """Set the entry up and give some windows to train on."""
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    coordinator: GIoTCoordinator = entry.runtime_data.coordinator
    return coordinator


def add_windows(coordinator: GIoTCoordinator, count: int = 4) -> None:
    """Stored windows of the model's width: what federated training learns from."""
    windows = np.full((count, N_POSITIONS), 5, np.int32)
    coordinator.windows.add("dev", windows, dt_util.utcnow().timestamp())


@pytest.fixture
async def linked(hass: HomeAssistant, fake_node: FakeNode) -> tuple[FakeNode, GIoTCoordinator]:
    """A loaded entry connected to the fake node."""
    coordinator = await setup(hass, node_entry(hass, fake_node.port))
    await fake_node.wait_connected()
    await until(lambda: hass.states.get(STATUS).state == "connected")
    return fake_node, coordinator


async def test_train_round_trip(
    hass: HomeAssistant, linked: tuple[FakeNode, GIoTCoordinator]
) -> None:
    """Authenticate, take a train task with arrays, answer with the detector's arrays."""
    node, coordinator = linked
    auth = node.auths[0]
    assert auth["hub"] == hass.config.location_name
    assert auth["protocol"] == proto.PROTOCOL_VERSION
    add_windows(coordinator)
    down = await node.send("task", task(config={"lr": 0.5}), {"w": np.ones(3, np.float32)})

    result = await node.next_frame()
    assert result.kind == "result"
    assert result.body == {
        "task_id": "t1",
        "status": "ok",
        "reason": "",
        "metrics": {"windows": 4.0, "seed": float(task_seed(7, 3)), "lr": 0.5},
    }
    np.testing.assert_array_equal(result.arrays["w"], np.full(3, 2, np.float32))
    hub: HubState = coordinator.hub
    await until(lambda: hub.last_participation is not None)
    assert hub.federation_round == 3
    assert hub.bytes_down == down
    assert hub.bytes_up == node.sizes[-1]
    assert hub.bytes_up_total > hub.bytes_up  # the handshake's auth frame too
    assert hub.bytes_down_total > hub.bytes_down  # challenge and welcome too
    assert hass.states.get("sensor.giot_federation_round").state == "3"
    last = hass.states.get("sensor.giot_last_participation").state
    assert dt_util.parse_datetime(last) == hub.last_participation.replace(microsecond=0)
    sent = hass.states.get("sensor.giot_bytes_sent_last_round")
    assert sent.attributes["unit_of_measurement"] == "KiB"
    assert float(sent.state) == pytest.approx(hub.bytes_up / 1024, abs=0.05)
    assert hass.states.get(STATUS).state == "connected"

    # the next task of the same round adds to its counts; a new round starts afresh
    await node.send(
        "task",
        task("t2", "evaluate", config={"version": "g3", "round": 3}),
        {"w": np.ones(3, np.float32)},
    )
    await node.next_frame()
    await until(lambda: hub.bytes_up > node.sizes[0])
    assert hub.bytes_up == sum(node.sizes)
    await node.send("task", task("t3", server_round=4), {"w": np.ones(1, np.float32)})
    await node.next_frame()
    await until(lambda: hub.federation_round == 4)
    assert hub.bytes_up == node.sizes[-1]

    # what a restart keeps
    entry = coordinator.config_entry
    totals = (hub.bytes_up_total, hub.bytes_down_total)
    await hass.config_entries.async_reload(entry.entry_id)
    await hass.async_block_till_done()
    reloaded: HubState = entry.runtime_data.coordinator.hub
    assert reloaded.federation_round == 4
    assert reloaded.last_participation is not None
    assert reloaded.bytes_up == hub.bytes_up
    assert (reloaded.bytes_up_total, reloaded.bytes_down_total) >= totals
    assert reloaded.model_origin == "local"  # the stand-in's evaluate saves no model


async def test_evaluate_takes_the_global_model(
    hass: HomeAssistant, linked: tuple[FakeNode, GIoTCoordinator]
) -> None:
    """An evaluate task loads the global model: version and origin entities follow."""
    node, _ = linked
    assert hass.states.get("sensor.giot_model_origin").state == "local"
    config = {"version": "global-5", "round": 5}
    await node.send("task", task(kind="evaluate", server_round=5, config=config), {"w": np.ones(2)})
    result = await node.next_frame()
    assert result.body["status"] == "ok"
    assert result.body["metrics"] == {"loss": 1.5, "windows": 0.0}  # no windows: still taken
    await until(lambda: hass.states.get("sensor.giot_model_origin").state != "local")
    assert hass.states.get("sensor.giot_model_origin").state == "global round 5"
    assert hass.states.get("sensor.giot_model_version").state == "global-5"


async def test_incompatible_model_is_a_repair(
    hass: HomeAssistant,
    issue_registry: ir.IssueRegistry,
    linked: tuple[FakeNode, GIoTCoordinator],
) -> None:
    """A global model the detector refuses raises the repair; the next good round clears it."""
    node, _ = linked
    await node.send("task", task(kind="evaluate"), {"wrong": np.ones(2)})
    result = await node.next_frame()
    assert (result.body["status"], result.body["reason"]) == ("refused", "incompatible_model")
    await until(lambda: hass.states.get(STATUS).state == "incompatible")
    issue = issue_registry.async_get_issue(DOMAIN, "node_incompatible_model")
    assert issue is not None
    assert issue.translation_placeholders == {"detail": "incompatible_model"}

    config = {"version": "g", "round": 3}
    await node.send("task", task("t2", "evaluate", config=config), {"w": np.ones(2)})
    await node.next_frame()
    await until(lambda: hass.states.get(STATUS).state == "connected")
    assert issue_registry.async_get_issue(DOMAIN, "node_incompatible_model") is None


def _raw_frame(header: dict[str, Any]) -> bytes:
    raw = json.dumps(header).encode()
    return proto.MAGIC + struct.pack(">I", len(raw)) + raw


async def test_malformed_frames_are_answered_not_applied(
    hass: HomeAssistant, linked: tuple[FakeNode, GIoTCoordinator]
) -> None:
    """Bad frames get an error back; nothing of them is applied; the link stays up."""
    node, coordinator = linked
    before = (coordinator.hub.federation_round, coordinator.hub.bytes_up)
    bad_task = task()
    bad_task["extra"] = 1
    sent: list[bytes | str] = [
        b"nonsense",
        "a text message",
        _raw_frame({"v": 1, "kind": "task", "body": bad_task, "arrays": []}),
        _raw_frame({"v": 9, "kind": "task", "body": task(), "arrays": []}),
        proto.encode("task", task("t9"), {"w": np.ones(3)})[:-4],  # an array cut short
    ]
    for data in sent:
        await node.send_raw(data)
    reasons = []
    for _ in sent:
        frame = await node.next_frame()
        assert frame.kind == "error"
        reasons.append(frame.body["reason"])
    assert reasons == ["bad_frame", "bad_frame", "bad_schema", "unsupported_version", "bad_frame"]
    assert (coordinator.hub.federation_round, coordinator.hub.bytes_up) == before
    assert hass.states.get(STATUS).state == "connected"

    # a kind that makes no sense now, the node's status and errors
    await node.send(
        "welcome", {"node_id": NODE_ID, "protocol": 1, "superlink": "x", "connected": True}
    )
    frame = await node.next_frame()
    assert (frame.kind, frame.body["reason"]) == ("error", "unexpected")
    await node.send("status", {"superlink": "s:9092", "connected": False, "last_round": 8})
    await until(lambda: coordinator.link.node_status.get("last_round") == 8)
    await node.send("error", {"reason": "deadline", "detail": "too late", "in_reply_to": "t0"})
    await node.send(
        "task", task("t10", kind="evaluate", config={"version": "v", "round": 3}), {"w": np.ones(1)}
    )
    assert (await node.next_frame()).body["task_id"] == "t10"
    assert node.connections == 1


async def test_bad_token_starts_reauth(hass: HomeAssistant, fake_node: FakeNode) -> None:
    """A refused token asks the user for a new one and stops reconnecting."""
    await setup(hass, node_entry(hass, fake_node.port, token="wrong-token"))
    await until(lambda: hass.states.get(STATUS).state == "reauth_needed")
    await hass.async_block_till_done()
    flows = hass.config_entries.flow.async_progress_by_handler(DOMAIN)
    assert [flow["context"]["source"] for flow in flows] == [SOURCE_REAUTH]
    await asyncio.sleep(0.3)  # many backoff delays
    assert fake_node.connections == 1


@HUB_CLOSES
async def test_bad_token_after_welcome_starts_reauth(
    hass: HomeAssistant, linked: tuple[FakeNode, GIoTCoordinator]
) -> None:
    """The node may also refuse the token later (it was changed on the node)."""
    node, _ = linked
    await node.send("error", {"reason": "bad_token", "detail": "re-paired", "in_reply_to": None})
    await until(lambda: hass.states.get(STATUS).state == "reauth_needed")
    await hass.async_block_till_done()
    assert hass.config_entries.flow.async_progress_by_handler(DOMAIN)


async def test_entry_without_token_asks_for_one(hass: HomeAssistant) -> None:
    """An entry from before pairing had tokens remembers only the address: reauth at once."""
    entry = MockConfigEntry(
        domain=DOMAIN,
        data={CONF_NODE_HOST: "127.0.0.1", CONF_NODE_PORT: 9},
        options={CONF_FEDERATION: True},
    )
    entry.add_to_hass(hass)
    await setup(hass, entry)
    assert hass.states.get(STATUS).state == "reauth_needed"
    assert hass.config_entries.flow.async_progress_by_handler(DOMAIN)


async def test_node_going_away_reconnects(
    hass: HomeAssistant, linked: tuple[FakeNode, GIoTCoordinator]
) -> None:
    """The link comes back by itself after the node closed it."""
    node, coordinator = linked
    assert node.ws is not None
    await node.ws.close()
    await until(lambda: node.connections == 2 and node.connected.is_set())
    await until(lambda: hass.states.get(STATUS).state == "connected")
    add_windows(coordinator)
    await node.send("task", task(), {"w": np.ones(1)})
    assert (await node.next_frame()).body["status"] == "ok"


async def test_unreachable_node_is_a_repair(
    hass: HomeAssistant, issue_registry: ir.IssueRegistry, unused_tcp_port: int
) -> None:
    """Nothing listening: unreachable at once, a repair after ten minutes, both gone later."""
    await setup(hass, node_entry(hass, unused_tcp_port))
    await until(lambda: hass.states.get(STATUS).state == "unreachable")
    assert issue_registry.async_get_issue(DOMAIN, "node_unreachable") is None
    async_fire_time_changed(hass, dt_util.utcnow() + timedelta(minutes=11))
    await hass.async_block_till_done()
    issue = issue_registry.async_get_issue(DOMAIN, "node_unreachable")
    assert issue is not None
    assert issue.translation_placeholders == {"address": f"127.0.0.1:{unused_tcp_port}"}

    node = FakeNode()
    await node.start(unused_tcp_port)
    try:
        await node.wait_connected()
        await until(lambda: hass.states.get(STATUS).state == "connected")
        assert issue_registry.async_get_issue(DOMAIN, "node_unreachable") is None
    finally:
        await node.stop()


@HUB_CLOSES
async def test_unsupported_version_is_a_repair(
    hass: HomeAssistant, issue_registry: ir.IssueRegistry
) -> None:
    """A node that speaks only another protocol version is told so and raises the repair."""
    node = FakeNode(protocols=[2])
    await node.start()
    try:
        await setup(hass, node_entry(hass, node.port))
        frame = await node.next_frame()
        assert (frame.kind, frame.body["reason"]) == ("error", "unsupported_version")
        await until(lambda: hass.states.get(STATUS).state == "incompatible")
        assert issue_registry.async_get_issue(DOMAIN, "node_incompatible_protocol") is not None
        node.protocols = [1]  # the node was updated
        await node.wait_connected()
        await until(lambda: hass.states.get(STATUS).state == "connected")
        assert issue_registry.async_get_issue(DOMAIN, "node_incompatible_protocol") is None
    finally:
        await node.stop()


async def test_paused_or_off_answers_skipped(
    hass: HomeAssistant, linked: tuple[FakeNode, GIoTCoordinator]
) -> None:
    """The pause switch (and federation off in the options) answers tasks without doing them."""
    node, coordinator = linked
    await hass.services.async_call(
        "switch", "turn_on", {"entity_id": "switch.giot_pause_federated_training"}, blocking=True
    )
    assert hass.states.get(STATUS).state == "paused"
    await node.send("task", task(), {"w": np.ones(1)})
    result = await node.next_frame()
    assert (result.body["status"], result.body["reason"]) == ("skipped", PAUSED_REASON)
    assert result.arrays == {}

    await hass.services.async_call(
        "switch", "turn_off", {"entity_id": "switch.giot_pause_federated_training"}, blocking=True
    )
    coordinator.federation_enabled = False
    await node.send("task", task("t2"), {"w": np.ones(1)})
    result = await node.next_frame()
    assert (result.body["status"], result.body["reason"]) == ("skipped", PAUSED_REASON)
    await until(lambda: coordinator.hub.bytes_up == sum(node.sizes))
    assert coordinator.hub.federation_round is None  # skipped is no participation


async def test_busy_and_deadline(
    hass: HomeAssistant, linked: tuple[FakeNode, GIoTCoordinator]
) -> None:
    """Past its deadline a task is answered skipped; while it still runs others are busy."""
    node, coordinator = linked
    add_windows(coordinator)
    gate = threading.Event()
    FederatedDetector.gate = gate
    try:
        await node.send("task", task(deadline_s=0.5), {"w": np.ones(1)})
        await until(lambda: hass.states.get(STATUS).state == "training")
        result = await node.next_frame()
        assert (result.body["status"], result.body["reason"]) == ("skipped", "deadline")
        await node.send("task", task("t2"), {"w": np.ones(1)})
        result = await node.next_frame()
        assert (result.body["task_id"], result.body["reason"]) == ("t2", "busy")
    finally:
        gate.set()
    await until(lambda: hass.states.get(STATUS).state == "connected")
    await until(lambda: not coordinator.link._busy)
    FederatedDetector.gate = None
    await node.send("task", task("t3"), {"w": np.ones(1)})
    assert (await node.next_frame()).body["status"] == "ok"


async def test_local_training_makes_tasks_busy(
    hass: HomeAssistant, linked: tuple[FakeNode, GIoTCoordinator]
) -> None:
    """A task that finds local training running does not wait for it."""
    node, coordinator = linked
    async with coordinator.training.lock:
        await node.send("task", task(), {"w": np.ones(1)})
        result = await node.next_frame()
    assert (result.body["status"], result.body["reason"]) == ("skipped", "busy")


def _raise(*_: Any) -> TaskAnswer:
    raise ValueError("a bug")


def _answer(**kwargs: Any) -> Callable[..., TaskAnswer]:
    """A federated_train that answers ``TaskAnswer(**kwargs)``."""
    return lambda *_: TaskAnswer(**kwargs)


@pytest.mark.parametrize(
    ("config", "windows", "train", "reason"),
    [
        ({"fail": True}, 4, None, "failed"),  # the detector raised
        ({}, 4, _raise, "failed"),  # anything else went wrong
        ({}, 0, None, "no_data"),  # nothing to train on
        ({}, 4, _answer(status="ok", metrics={"loss": float("nan")}), "failed"),  # unsendable
        ({}, 4, _answer(status="ok", arrays={"w": np.ones(1000)}), "too_large"),
    ],
)
async def test_train_that_cannot_answer(
    linked: tuple[FakeNode, GIoTCoordinator],
    config: dict[str, Any],
    windows: int,
    train: Callable[..., TaskAnswer] | None,
    reason: str,
) -> None:
    """A failed training, no windows, or an answer the protocol refuses: skipped, why."""
    node, coordinator = linked
    if windows:
        add_windows(coordinator, windows)
    with (
        patch.object(FederatedDetector, "federated_train", train)
        if train
        else contextlib.nullcontext(),
        patch.object(proto, "MAX_FRAME_BYTES", 4000),
    ):
        await node.send("task", task(config=config), {"w": np.ones(1)})
        result = await node.next_frame()
    assert (result.body["status"], result.body["reason"]) == ("skipped", reason)
    assert result.arrays == {}


async def test_unload_closes_the_link(
    hass: HomeAssistant, linked: tuple[FakeNode, GIoTCoordinator]
) -> None:
    """Unloading closes the socket and does not reconnect."""
    node, coordinator = linked
    assert await hass.config_entries.async_unload(coordinator.config_entry.entry_id)
    await until(lambda: not node.connected.is_set())
    await asyncio.sleep(0.2)
    assert node.connections == 1


def test_answer_budget_and_url() -> None:
    """The margin is 5 s, at most a fifth of the deadline; IPv6 hosts get brackets."""
    assert answer_within(60.0) == 55.0
    assert answer_within(1.0) == pytest.approx(0.8)
    assert answer_within(0.0) == 0.0
    assert str(node_url("fd00::1", 9093)) == "ws://[fd00::1]:9093/giot"


# --- the handshake against nodes that misbehave ----------------------------------------------

type Script = Callable[[web.WebSocketResponse], Coroutine[Any, Any, None]]


def _challenge(protocols: list[int] | None = None) -> bytes:
    body = {
        "node_id": NODE_ID,
        "nonce": proto.new_nonce(),
        "protocols": protocols or [1],
        "node_version": "0.1.0",
    }
    return proto.encode("challenge", body)


def _error(reason: str) -> bytes:
    return proto.encode("error", {"reason": reason, "detail": "", "in_reply_to": None})


def _welcome(protocol: int = 1) -> bytes:
    body = {"node_id": NODE_ID, "protocol": protocol, "superlink": "s", "connected": False}
    return proto.encode("welcome", body)


def _after_auth(*frames: bytes) -> Script:
    async def script(ws: web.WebSocketResponse) -> None:
        await ws.send_bytes(_challenge())
        await ws.receive()
        for frame in frames:
            await ws.send_bytes(frame)

    return script


def _first(*frames: bytes) -> Script:
    async def script(ws: web.WebSocketResponse) -> None:
        for frame in frames:
            await ws.send_bytes(frame)

    return script


async def _silent(ws: web.WebSocketResponse) -> None:
    await asyncio.sleep(1)


async def _close(ws: web.WebSocketResponse) -> None:
    await ws.close()


@HUB_CLOSES
@pytest.mark.parametrize(
    ("script", "error", "answer"),
    [
        (_close, NodeUnreachableError, None),  # closes at once
        (_silent, NodeUnreachableError, None),  # says nothing
        (_first(b"GIOT\x00\x00\x00\x02{}"), NodeUnreachableError, "bad_frame"),
        (
            _first(_raw_frame({"v": 9, "kind": "x", "body": {}, "arrays": []})),
            NodeIncompatibleError,
            "unsupported_version",
        ),
        (_first(_welcome()), NodeUnreachableError, "unexpected"),  # no challenge
        (_first(_challenge([2, 3])), NodeIncompatibleError, "unsupported_version"),
        (_after_auth(_error("unsupported_version")), NodeIncompatibleError, None),
        (_after_auth(_error("no_hub")), NodeUnreachableError, None),
        (_after_auth(_error("bad_token")), NodeAuthError, None),
        (_after_auth(_welcome(2)), NodeIncompatibleError, None),
    ],
)
async def test_handshake_refusals(
    hass: HomeAssistant, script: Script, error: type[Exception], answer: str | None
) -> None:
    """Whatever the node does wrong while shaking hands is one of three errors."""
    answers: list[proto.Frame] = []

    async def handle(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await script(ws)
        async for message in ws:
            if message.type is WSMsgType.BINARY:
                answers.append(proto.decode(message.data))
        return ws

    app = web.Application()
    app.router.add_get("/giot", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        with (
            patch("custom_components.giot.node_link.HANDSHAKE_TIMEOUT_S", 0.2),
            pytest.raises(error),
        ):
            await async_check_node(hass, "127.0.0.1", server.port, TOKEN)
    finally:
        await server.close()
    errors = [frame.body["reason"] for frame in answers if frame.kind == "error"]
    assert errors == ([answer] if answer else [])


async def test_handshake_connection_lost(hass: HomeAssistant, fake_node: FakeNode) -> None:
    """A socket that fails under the handshake is a connection error too."""
    with (
        patch.object(Channel, "send", side_effect=aiohttp.ClientConnectionResetError("gone")),
        pytest.raises(NodeUnreachableError),
    ):
        await async_check_node(hass, "127.0.0.1", fake_node.port, TOKEN)


@HUB_CLOSES
async def test_link_failing_under_it_reconnects(
    hass: HomeAssistant, linked: tuple[FakeNode, GIoTCoordinator]
) -> None:
    """A send that fails on a broken socket ends the session; the link connects again."""
    node, _ = linked
    with patch.object(
        Channel, "send_error", side_effect=aiohttp.ClientConnectionResetError("gone")
    ):
        await node.send_raw(b"nonsense")  # the hub's error answer fails
        await until(lambda: node.connections == 2)
    await node.wait_connected()
    await until(lambda: hass.states.get(STATUS).state == "connected")


async def test_result_for_a_closed_link_is_dropped(
    hass: HomeAssistant, linked: tuple[FakeNode, GIoTCoordinator]
) -> None:
    """The node went away while the hub trained: the result is dropped, not counted."""
    node, coordinator = linked
    add_windows(coordinator)
    gate = threading.Event()
    FederatedDetector.gate = gate
    await node.send("task", task(), {"w": np.ones(1)})
    await until(lambda: coordinator.hub.federation_training)
    assert node.ws is not None
    await node.ws.close()
    await until(lambda: hass.states.get(STATUS).state != "training")
    gate.set()
    await until(lambda: not coordinator.hub.federation_training)
    await until(lambda: not coordinator.link._busy)
    assert coordinator.hub.federation_round is None
    assert coordinator.hub.bytes_up == 0


async def test_diagnostics_redact_the_node(
    hass: HomeAssistant, linked: tuple[FakeNode, GIoTCoordinator]
) -> None:
    """The link's state is in the diagnostics; its host, token, node id and SuperLink are not."""
    _, coordinator = linked
    entry = coordinator.config_entry
    diagnostics = await async_get_config_entry_diagnostics(hass, entry)
    assert diagnostics["entry"]["data"][CONF_NODE_TOKEN] == "**REDACTED**"
    assert diagnostics["entry"]["data"][CONF_NODE_HOST] == "**REDACTED**"
    assert diagnostics["node"] == {
        "node_id": "**REDACTED**",
        "node_version": "0.1.0",
        "protocol": 1,
        "status": {"superlink": "**REDACTED**", "connected": True, "last_round": None},
    }
    assert diagnostics["hub"]["federation_status"] == "connected"
    for secret in (TOKEN, NODE_ID, "superlink.example"):
        assert secret not in str(diagnostics)
