"""The node's two doors: the WebSocket Home Assistant opens, and the bridge its ClientApps use.

``/giot`` (WebSocket, on ``--listen``): the integration connects, the node sends ``challenge``, the
integration answers ``auth`` with ``proof(token, nonce)``; a good proof gets ``welcome``, anything
else one ``error`` and the connection closed. One integration at a time: a newly authenticated
one replaces the old (an HA restart reconnects before the old socket times out). After that a
frame that fails ``node_protocol.decode`` is answered with ``error`` and not applied; the
connection stays.

``bridge.sock`` (HTTP on a Unix socket in the 0700 state directory): ``POST /task`` with a ``task``
frame, answered with the integration's ``result`` frame, or a ``skipped`` one of the node's own
(``no_hub``: nobody connected or the hub went away; ``deadline``: no answer within the task's
``deadline_s``). Only a result for a task that is waiting, from the hub it was sent to, counts;
a late one is dropped (logged, the hub gets ``error deadline``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from dataclasses import dataclass
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from giot_engine import node_protocol as proto
from giot_node import package_version
from giot_node.state import NodeState

log = logging.getLogger(__name__)

AUTH_TIMEOUT_S = 10.0
UNIX_PATH_MAX = 107  # sun_path holds 108 bytes, the last one NUL


@dataclass(eq=False)
class Hub:
    """One authenticated integration."""

    ws: web.WebSocketResponse
    name: str
    peer: str


def skipped(task_id: str, reason: str) -> proto.Frame:
    """Build the node's own answer for when the hub cannot give one."""
    body = {"task_id": task_id, "status": "skipped", "reason": reason, "metrics": {}}
    return proto.Frame("result", body)


async def send(ws: web.WebSocketResponse, kind: str, body: dict[str, Any]) -> None:
    """Send one frame; a socket that closed meanwhile is not an error of ours."""
    with contextlib.suppress(ConnectionError, RuntimeError):
        await ws.send_bytes(proto.encode(kind, body))


async def send_error(
    ws: web.WebSocketResponse, reason: str, detail: str = "", in_reply_to: str | None = None
) -> None:
    await send(ws, "error", {"reason": reason, "detail": detail[:4096], "in_reply_to": in_reply_to})


class Link:
    """Hub WebSocket + bridge, and the status both report."""

    def __init__(self, state: NodeState, superlink: str, server_key: str = "") -> None:
        self.state = state
        self.node_id = state.node_id()
        self.superlink = superlink
        self.server_key = server_key  # hex; the hub learns it from ``welcome``
        self.hub: Hub | None = None
        self.pending: dict[str, tuple[Hub, asyncio.Future[proto.Frame]]] = {}
        self.expired: deque[str] = deque(maxlen=256)
        self.supernode_alive = False
        self.last_round = 0
        self.port = 0
        self._runners: list[web.AppRunner] = []

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self, host: str, port: int) -> None:
        """Listen for the hub on ``host:port`` (0: any free port) and open the bridge socket."""
        ws_app = web.Application()
        ws_app.router.add_get("/giot", self.handle_ws)
        bridge_app = web.Application(client_max_size=proto.MAX_FRAME_BYTES)
        bridge_app.router.add_post("/task", self.handle_task)
        path = self.state.bridge_path
        if len(os.fsencode(path)) > UNIX_PATH_MAX:
            raise OSError(f"state directory path too long for a Unix socket: {path}")
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a previous run's socket
        for app in (ws_app, bridge_app):
            runner = web.AppRunner(app, handle_signals=False, access_log=None)
            await runner.setup()
            self._runners.append(runner)
        ws_site = web.TCPSite(self._runners[0], host, port)
        await ws_site.start()
        self.port = int(self._runners[0].addresses[0][1])
        await web.UnixSite(self._runners[1], str(path)).start()
        os.chmod(path, 0o600)

    async def close(self) -> None:
        """Answer waiting tasks, close the hub, stop listening, remove the socket."""
        for task_id in list(self.pending):
            self._resolve(task_id, skipped(task_id, "no_hub"))
        if self.hub is not None:
            await self.hub.ws.close(code=WSCloseCode.GOING_AWAY, message=b"node stopping")
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners = []
        with contextlib.suppress(FileNotFoundError):
            self.state.bridge_path.unlink()

    # -- status ------------------------------------------------------------------------------
    async def set_supernode(self, alive: bool) -> None:
        """Note whether the SuperNode process runs and tell the hub."""
        self.supernode_alive = alive
        await self.send_status()

    async def send_status(self) -> None:
        if self.hub is not None:
            body = {
                "superlink": self.superlink,
                "connected": self.supernode_alive,
                "last_round": self.last_round,
            }
            await send(self.hub.ws, "status", body)

    # -- hub WebSocket -----------------------------------------------------------------------
    async def handle_ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=proto.MAX_FRAME_BYTES, heartbeat=30.0)
        await ws.prepare(request)
        hub = await self._authenticate(ws, str(request.remote))
        if hub is None:
            await ws.close()
            return ws
        old, self.hub = self.hub, hub
        log.info("hub %r connected from %s", hub.name, hub.peer)
        if old is not None:
            log.info("hub %r (%s) replaced by the new connection", old.name, old.peer)
            self._drop(old)
            await old.ws.close(code=WSCloseCode.GOING_AWAY, message=b"replaced")
        try:
            await self._serve(hub)
        finally:
            if self.hub is hub:
                self.hub = None
                log.info("hub %r disconnected", hub.name)
            self._drop(hub)
        return ws

    async def _authenticate(self, ws: web.WebSocketResponse, peer: str) -> Hub | None:
        nonce = proto.new_nonce()
        challenge = {
            "node_id": self.node_id,
            "nonce": nonce,
            "protocols": sorted(proto.SUPPORTED_VERSIONS),
            "node_version": package_version(),
        }
        await send(ws, "challenge", challenge)
        try:
            msg = await ws.receive(timeout=AUTH_TIMEOUT_S)
        except TimeoutError:
            await send_error(ws, "unexpected", f"no auth within {AUTH_TIMEOUT_S:.0f} s")
            return None
        if msg.type != WSMsgType.BINARY:
            if msg.type == WSMsgType.TEXT:
                await send_error(ws, "bad_frame", "text message")
            return None
        try:
            frame = proto.decode(msg.data)
        except proto.ProtocolError as err:
            log.warning("refused hub from %s: %s", peer, err)
            await send_error(ws, err.reason, err.detail)
            return None
        body = frame.body
        why: tuple[str, str] | None = None
        if frame.kind != "auth":
            why = ("unexpected", f"{frame.kind} before auth")
        elif body["protocol"] not in proto.SUPPORTED_VERSIONS:
            why = ("unsupported_version", f"protocol {body['protocol']}")
        elif not proto.check_proof(self.state.token(), nonce, body["proof"]):
            why = ("bad_token", "the pairing proof does not match (`giot-node pair` makes a token)")
        if why is not None:
            log.warning("refused hub from %s: %s (%s)", peer, *why)
            await send_error(ws, *why)
            return None
        welcome = {
            "node_id": self.node_id,
            "protocol": body["protocol"],
            "superlink": self.superlink,
            "connected": self.supernode_alive,
            "server_key": self.server_key,
        }
        await send(ws, "welcome", welcome)
        return Hub(ws, body["hub"], peer)

    async def _serve(self, hub: Hub) -> None:
        async for msg in hub.ws:
            if msg.type == WSMsgType.BINARY:
                await self._from_hub(hub, msg.data)
            elif msg.type == WSMsgType.TEXT:
                await send_error(hub.ws, "bad_frame", "text message")
            else:
                break

    async def _from_hub(self, hub: Hub, data: bytes) -> None:
        try:
            frame = proto.decode(data)
        except proto.ProtocolError as err:
            log.warning("hub %r sent a bad frame: %s", hub.name, err)
            await send_error(hub.ws, err.reason, err.detail)
            return
        if frame.kind == "error":
            log.warning(
                "hub %r reports %s: %s", hub.name, frame.body["reason"], frame.body["detail"]
            )
        elif frame.kind != "result":
            await send_error(hub.ws, "unexpected", f"{frame.kind} from a hub")
        else:
            task_id = frame.body["task_id"]
            waiting = self.pending.get(task_id)
            if waiting is None or waiting[0] is not hub:
                late = task_id in self.expired
                log.warning(
                    "dropped %s result for task %s", "a late" if late else "an unknown", task_id
                )
                reason, detail = (
                    ("deadline", "too late") if late else ("unexpected", "no such task")
                )
                await send_error(hub.ws, reason, detail, in_reply_to=task_id)
            else:
                self._resolve(task_id, frame)

    def _resolve(self, task_id: str, frame: proto.Frame) -> None:
        waiting = self.pending.get(task_id)
        if waiting is not None and not waiting[1].done():
            waiting[1].set_result(frame)

    def _drop(self, hub: Hub) -> None:
        """Tasks sent to a hub that left will get no answer from it."""
        for task_id, (owner, _) in list(self.pending.items()):
            if owner is hub:
                self._resolve(task_id, skipped(task_id, "no_hub"))

    # -- bridge ------------------------------------------------------------------------------
    async def handle_task(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            frame = proto.decode(raw)
            if frame.kind != "task":
                raise proto.ProtocolError("unexpected", f"{frame.kind} on the bridge")
        except proto.ProtocolError as err:
            body = {"reason": err.reason, "detail": err.detail[:4096], "in_reply_to": None}
            return web.Response(status=400, body=proto.encode("error", body))
        result = await self.run_task(frame, raw)
        return web.Response(
            body=proto.encode("result", result.body, result.arrays),
            content_type="application/octet-stream",
        )

    async def run_task(self, task: proto.Frame, raw: bytes) -> proto.Frame:
        """Hand ``task`` (``raw``: its checked bytes) to the hub and wait for its result."""
        task_id, deadline = task.body["task_id"], float(task.body["deadline_s"])
        hub = self.hub
        if hub is None:
            result = skipped(task_id, "no_hub")
        elif task_id in self.pending:
            result = skipped(task_id, "busy")
        else:
            future: asyncio.Future[proto.Frame] = asyncio.get_running_loop().create_future()
            self.pending[task_id] = (hub, future)
            log.info(
                "%s task %s (run %d, round %d) sent to hub %r",
                task.body["kind"],
                task_id,
                task.body["run_id"],
                task.body["round"],
                hub.name,
            )
            try:
                await hub.ws.send_bytes(raw)
                result = await asyncio.wait_for(future, deadline)
            except TimeoutError:
                self.expired.append(task_id)
                result = skipped(task_id, "deadline")
            except (ConnectionError, RuntimeError):
                result = skipped(task_id, "no_hub")
            finally:
                self.pending.pop(task_id, None)
        status, reason = result.body["status"], result.body["reason"]
        log.info(
            "%s task %s (run %d, round %d): %s%s",
            task.body["kind"],
            task_id,
            task.body["run_id"],
            task.body["round"],
            status,
            f" ({reason})" if reason else "",
        )
        if status == "ok":
            self.last_round = max(self.last_round, int(task.body["round"]))
        await self.send_status()
        return result
