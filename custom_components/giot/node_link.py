"""The link to the GIoT node: one WebSocket that Home Assistant opens and keeps open.

The node (``giot-node``, beside Home Assistant: it runs the Flower SuperNode) serves
``ws://host:port/giot``; Home Assistant opens no port. The conversation is ``node_protocol``'s:
the node's ``challenge``, our ``auth`` (a proof of the pairing token, never the token), its
``welcome``; then ``task`` frames in, ``result`` frames out, ``status`` and ``error`` any time.
Every frame in goes through ``node_protocol.decode``; one that fails is answered with ``error``
and nothing of it is applied.

One task runs at a time (a second is answered ``skipped busy``). A task is answered within its
``deadline_s`` less a margin, or ``skipped deadline``: the detector's work, which cannot be
stopped, finishes in the background and the link stays busy until it has.

The link reconnects with a doubling delay (5 s to 5 min). A refused token asks the user for a
new one (reauthentication) and stops the link until then; a node speaking another protocol
version is a repair issue, and so is a node unreachable for ``UNREACHABLE_AFTER``; each goes
once the link works again.
"""

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
from homeassistant.config_entries import ConfigEntry
from homeassistant.core import CALLBACK_TYPE, HomeAssistant, callback
from homeassistant.helpers.aiohttp_client import async_get_clientsession
from homeassistant.helpers.event import async_call_later
from homeassistant.util import dt as dt_util
from yarl import URL

from giot_engine import node_protocol
from giot_engine.node_protocol import Frame, ProtocolError

from .const import CONF_SERVER_KEY, DOMAIN, LOGGER, NODE_PATH, FederationStatus
from .federation import Federation, TaskResult, skipped
from .issues import HealthIssues
from .models import HubState, NodeAddress

BACKOFF_MIN_S = 5.0
BACKOFF_MAX_S = 300.0
CONNECT_TIMEOUT_S = 10.0
HANDSHAKE_TIMEOUT_S = 10.0
HEARTBEAT_S = 30.0
UNREACHABLE_AFTER_S = 600.0
# A result must reach the node before its own deadline does: answer this much earlier (at most
# a fifth of the deadline, for short ones).
DEADLINE_MARGIN_S = 5.0


class NodeError(Exception):
    """The node could not be used; the subclass says why."""


class NodeUnreachableError(NodeError):
    """Nothing answered at the address, or not a GIoT node, or it went away."""


class NodeAuthError(NodeError):
    """The node refused the pairing token."""


class NodeIncompatibleError(NodeError):
    """The node speaks no protocol version this integration speaks."""


@dataclass(frozen=True, slots=True)
class NodeHello:
    """What the node said about itself while shaking hands."""

    node_id: str
    node_version: str
    protocol: int
    superlink: str
    connected: bool
    server_key: str = ""  # the server's model-signing key (hex), "" if the node has none


def node_url(host: str, port: int) -> URL:
    """Address of the node's WebSocket (an IPv6 host gets its brackets)."""
    return URL.build(scheme="ws", host=host, port=port, path=NODE_PATH)


def answer_within(deadline_s: float) -> float:
    """Seconds the hub has for a task, leaving the margin for the result to travel."""
    return max(0.0, deadline_s - min(DEADLINE_MARGIN_S, deadline_s / 5))


class Channel:
    """One open WebSocket to the node: frames in and out, each one's bytes counted."""

    def __init__(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        count: Callable[[int, int], None] = lambda received, sent: None,
    ) -> None:
        """Wrap an open WebSocket; ``count(received, sent)`` hears of every frame."""
        self.ws = ws
        self._count = count

    async def send(
        self,
        kind: str,
        body: dict[str, Any],
        arrays: dict[str, Any] | None = None,
    ) -> int:
        """Encode (checked) and send one frame; return its size."""
        data = node_protocol.encode(kind, body, arrays)
        await self.ws.send_bytes(data)
        self._count(0, len(data))
        return len(data)

    async def send_error(self, reason: str, detail: str, in_reply_to: str | None = None) -> int:
        """Tell the node why its frame was not taken."""
        body = {"reason": reason, "detail": detail[:4096], "in_reply_to": in_reply_to}
        return await self.send("error", body)

    async def receive(self) -> tuple[Frame, int] | None:
        """Read and check the next frame (and its size); None once the socket closed.

        A text message or a frame that fails the checks raises ``ProtocolError``.
        """
        message = await self.ws.receive()
        if message.type is aiohttp.WSMsgType.TEXT:
            raise ProtocolError("bad_frame", "a text message")
        if message.type is not aiohttp.WSMsgType.BINARY:
            return None
        data: bytes = message.data
        self._count(len(data), 0)
        return node_protocol.decode(data), len(data)


async def async_handshake(channel: Channel, token: str, hub: str) -> NodeHello:
    """Answer the node's challenge with the token's proof; raise ``NodeError`` if refused."""
    try:
        challenge = await _async_expect(channel, "challenge")
        protocols = challenge.body["protocols"]
        if node_protocol.PROTOCOL_VERSION not in protocols:
            detail = f"the node speaks protocol {protocols}, GIoT {node_protocol.PROTOCOL_VERSION}"
            await channel.send_error("unsupported_version", detail)
            raise NodeIncompatibleError(detail)
        auth = {
            "proof": node_protocol.proof(token, challenge.body["nonce"]),
            "protocol": node_protocol.PROTOCOL_VERSION,
            "hub": hub,
        }
        await channel.send("auth", auth)
        welcome = await _async_expect(channel, "welcome")
    except TimeoutError as err:
        raise NodeUnreachableError("the node did not answer in time") from err
    if welcome.body["protocol"] != node_protocol.PROTOCOL_VERSION:
        raise NodeIncompatibleError(f"the node welcomed protocol {welcome.body['protocol']}")
    return NodeHello(
        node_id=welcome.body["node_id"],
        node_version=challenge.body["node_version"],
        protocol=welcome.body["protocol"],
        superlink=welcome.body["superlink"],
        connected=welcome.body["connected"],
        server_key=welcome.body.get("server_key", ""),
    )


async def _async_expect(channel: Channel, kind: str) -> Frame:
    """Read the handshake's next frame; an ``error`` from the node says why it refused."""
    try:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
            received = await channel.receive()
    except ProtocolError as err:
        await channel.send_error(err.reason, err.detail)
        if err.reason == "unsupported_version":
            raise NodeIncompatibleError(str(err)) from err
        raise NodeUnreachableError(f"not a GIoT node: {err}") from err
    if received is None:
        raise NodeUnreachableError("the node closed the connection")
    frame, _ = received
    if frame.kind == "error":
        reason, detail = frame.body["reason"], frame.body["detail"]
        if reason == "bad_token":
            raise NodeAuthError(detail)
        if reason == "unsupported_version":
            raise NodeIncompatibleError(detail)
        raise NodeUnreachableError(f"the node refused: {reason} {detail}".strip())
    if frame.kind != kind:
        await channel.send_error("unexpected", f"{frame.kind} instead of {kind}")
        raise NodeUnreachableError(f"the node sent {frame.kind} instead of {kind}")
    return frame


async def async_connect(
    hass: HomeAssistant,
    host: str,
    port: int,
    count: Callable[[int, int], None] = lambda received, sent: None,
    *,
    heartbeat: float | None = None,
) -> Channel:
    """Open the node's WebSocket with Home Assistant's shared session.

    ``heartbeat`` (seconds) pings a link that stays open, so a node that vanished without
    closing it is noticed; a pairing check closes at once and needs none.
    """
    session = async_get_clientsession(hass)
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            ws = await session.ws_connect(
                node_url(host, port),
                heartbeat=heartbeat,
                max_msg_size=node_protocol.MAX_FRAME_BYTES,
            )
    except (aiohttp.ClientError, TimeoutError, OSError) as err:
        raise NodeUnreachableError(str(err) or type(err).__name__) from err
    return Channel(ws, count)


async def async_check_node(hass: HomeAssistant, host: str, port: int, token: str) -> NodeHello:
    """Pair-check: connect, shake hands with ``token``, close; raise ``NodeError`` if not."""
    channel = await async_connect(hass, host, port)
    try:
        return await async_handshake(channel, token, hass.config.location_name)
    except (aiohttp.ClientError, OSError) as err:
        raise NodeUnreachableError(str(err)) from err
    finally:
        await channel.ws.close()


class NodeLink:
    """Keeps the entry connected to its node and answers the node's tasks."""

    def __init__(
        self,
        hass: HomeAssistant,
        entry: ConfigEntry,
        node: NodeAddress,
        *,
        hub: HubState,
        federation: Federation,
        issues: HealthIssues,
        changed: Callable[[], None],
    ) -> None:
        """Link the entry to ``node``; ``changed`` tells the hub entities.

        Its tasks are the entry's background tasks: they end when the entry unloads.
        """
        self._hass = hass
        self._entry = entry
        self.node = node
        self._hub = hub
        self._federation = federation
        self._issues = issues
        self._changed = changed
        self.hello: NodeHello | None = None
        # the node's last ``status``: its SuperLink, whether its SuperNode runs, its last round
        self.node_status: dict[str, Any] = {}
        self._task: asyncio.Task[None] | None = None
        self._busy = False
        self._delay = BACKOFF_MIN_S
        self._down_since: datetime | None = None
        self._cancel_unreachable: CALLBACK_TYPE | None = None

    @property
    def address(self) -> str:
        """The node's host and port, as the user wrote them."""
        return f"{self.node.host}:{self.node.port}"

    @callback
    def async_start(self) -> None:
        """Connect in the background; without a token, ask for one first."""
        if not self.node.token:
            self._async_need_token()
            return
        self._set_status(FederationStatus.CONNECTING)
        self._task = self._background(self._async_run(), f"{DOMAIN} node link")

    async def async_stop(self) -> None:
        """Close the link (the entry unloads); a task in flight is abandoned."""
        if self._cancel_unreachable is not None:
            self._cancel_unreachable()
            self._cancel_unreachable = None
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    # --- connecting --------------------------------------------------------------------------

    async def _async_run(self) -> None:
        """Connect, serve, and reconnect after a doubling delay, until the token is refused."""
        while True:
            try:
                await self._async_session()
            except NodeAuthError as err:
                LOGGER.warning(
                    "The GIoT node at %s refused the pairing token: %s", self.address, err
                )
                self._async_need_token()
                return
            except NodeIncompatibleError as err:
                self._async_incompatible(str(err))
            except NodeUnreachableError as err:
                self._async_unreachable(str(err))
            else:
                self._async_unreachable("the node closed the connection")
            await asyncio.sleep(self._delay)
            self._delay = min(self._delay * 2, BACKOFF_MAX_S)

    async def _async_session(self) -> None:
        """One connection: handshake, then frames until it closes."""
        channel = await async_connect(
            self._hass,
            self.node.host,
            self.node.port,
            self._federation.async_count_link,
            heartbeat=HEARTBEAT_S,
        )
        try:
            hello = await async_handshake(channel, self.node.token, self._hass.config.location_name)
            self._async_connected(hello)
            await self._async_serve(channel)
        except (aiohttp.ClientError, ConnectionError) as err:
            raise NodeUnreachableError(str(err) or type(err).__name__) from err
        finally:
            await channel.ws.close()

    @callback
    def _async_connected(self, hello: NodeHello) -> None:
        if self._down_since is not None:
            LOGGER.info("The GIoT node at %s is reachable again", self.address)
        self._clear_down()
        self._async_learn_key(hello.server_key)
        self.hello = hello
        self.node_status = {
            "superlink": hello.superlink,
            "connected": hello.connected,
            "last_round": None,
        }
        self._delay = BACKOFF_MIN_S
        self._issues.async_node_incompatible("protocol", None)
        self._set_status(FederationStatus.CONNECTED)

    @callback
    def _async_learn_key(self, key: str) -> None:
        """Keep the server's key of an entry paired before its node had one; never replace it.

        The key is learnt at pairing (config flow); a node that later names another one is
        not followed (a new server means pairing again), so its models stay refused.
        """
        known = str(self._entry.data.get(CONF_SERVER_KEY, ""))
        if not key or key == known:
            return
        if known:
            LOGGER.warning(
                "The GIoT node at %s names another server key than the one learnt at pairing; "
                "GIoT keeps the one it knows (reconfigure GIoT to pair again)",
                self.address,
            )
            return
        LOGGER.info("GIoT learnt the server's model-signing key from its node")
        self._hass.config_entries.async_update_entry(
            self._entry, data={**self._entry.data, CONF_SERVER_KEY: key}
        )

    @callback
    def _async_need_token(self) -> None:
        self._set_status(FederationStatus.REAUTH_NEEDED)
        self._entry.async_start_reauth(self._hass)

    @callback
    def _async_incompatible(self, detail: str) -> None:
        LOGGER.warning("The GIoT node at %s is incompatible: %s", self.address, detail)
        self._clear_down()
        self._issues.async_node_incompatible("protocol", detail)
        self._set_status(FederationStatus.INCOMPATIBLE)

    @callback
    def _async_unreachable(self, why: str) -> None:
        """Note a failed or lost connection; the repair comes after ``UNREACHABLE_AFTER_S``."""
        self._set_status(FederationStatus.UNREACHABLE)
        if self._down_since is not None:
            LOGGER.debug("The GIoT node at %s is still unreachable: %s", self.address, why)
            return
        LOGGER.warning("The GIoT node at %s is unreachable: %s", self.address, why)
        self._down_since = dt_util.utcnow()
        self._cancel_unreachable = async_call_later(
            self._hass, UNREACHABLE_AFTER_S, self._async_still_unreachable
        )

    @callback
    def _async_still_unreachable(self, _now: datetime) -> None:
        self._cancel_unreachable = None
        self._issues.async_node_unreachable(self.address)

    @callback
    def _clear_down(self) -> None:
        self._down_since = None
        if self._cancel_unreachable is not None:
            self._cancel_unreachable()
            self._cancel_unreachable = None
        self._issues.async_node_unreachable(None)

    def _background[R](self, job: Coroutine[Any, Any, R], name: str) -> asyncio.Task[R]:
        return self._entry.async_create_background_task(self._hass, job, name)

    @callback
    def _set_status(self, status: FederationStatus) -> None:
        self._hub.federation_status = status
        self._changed()

    # --- frames ------------------------------------------------------------------------------

    async def _async_serve(self, channel: Channel) -> None:
        """Take the node's frames until the socket closes; a bad one gets ``error`` back."""
        while True:
            try:
                received = await channel.receive()
            except ProtocolError as err:
                LOGGER.warning("The GIoT node sent a frame GIoT refused: %s", err)
                await channel.send_error(err.reason, err.detail)
                continue
            if received is None:
                return
            frame, size = received
            if frame.kind == "task":
                self._async_task(channel, frame, size)
            elif frame.kind == "status":
                self.node_status = dict(frame.body)
                self._changed()
            elif frame.kind == "error":
                if frame.body["reason"] == "bad_token":
                    raise NodeAuthError(frame.body["detail"])
                LOGGER.warning(
                    "The GIoT node reports %s: %s", frame.body["reason"], frame.body["detail"]
                )
            else:
                await channel.send_error("unexpected", f"{frame.kind} after welcome")

    @callback
    def _async_task(self, channel: Channel, task: Frame, size: int) -> None:
        """Answer a task in the background, or at once ``skipped busy`` while one runs."""
        self._federation.async_count(task.body, received=size)
        if self._busy:
            result = skipped(task.body["task_id"], "busy")
            self._background(self._async_send_result(channel, task, result), f"{DOMAIN} busy")
            return
        self._busy = True
        work = self._background(self._federation.async_run(task), f"{DOMAIN} task")
        work.add_done_callback(self._async_done)
        self._background(self._async_answer(channel, task, work), f"{DOMAIN} answer")

    @callback
    def _async_done(self, _work: asyncio.Task[TaskResult]) -> None:
        self._busy = False

    async def _async_answer(
        self, channel: Channel, task: Frame, work: asyncio.Task[TaskResult]
    ) -> None:
        """Send the work's result, or ``skipped deadline`` when it is not done in time."""
        budget = answer_within(float(task.body["deadline_s"]))
        done, _ = await asyncio.wait({work}, timeout=budget)
        if work in done:
            result = work.result()
        else:
            LOGGER.warning(
                "GIoT did not finish the node's %s task within %.0f s", task.body["kind"], budget
            )
            result = skipped(task.body["task_id"], "deadline")
        await self._async_send_result(channel, task, result)

    async def _async_send_result(self, channel: Channel, task: Frame, result: TaskResult) -> None:
        """Send a result; one the protocol refuses (too large, bad metrics) goes as skipped."""
        try:
            try:
                size = await channel.send("result", result.body, result.arrays)
            except ProtocolError as err:
                LOGGER.warning("GIoT's answer to the node's task was not sendable: %s", err)
                result = skipped(task.body["task_id"], _skip_reason(err))
                size = await channel.send("result", result.body)
        except (aiohttp.ClientError, ConnectionError, RuntimeError) as err:
            LOGGER.debug("The result of task %s was not sent: %s", task.body["task_id"], err)
            return
        self._federation.async_count(task.body, sent=size, status=result.body["status"])


def _skip_reason(err: ProtocolError) -> str:
    return "too_large" if err.reason == "too_large" else "failed"
