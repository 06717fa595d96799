"""A tiny GIoT node for the tests: a real aiohttp WebSocket server speaking node_protocol.

It shakes hands as ``giot-node`` does (challenge, the integration's auth checked against its
token, welcome or ``error bad_token``), then keeps every frame the integration sends in a
queue and lets the test send tasks, status frames or anything malformed.
"""

import asyncio
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from giot_engine import node_protocol as proto

NODE_ID = "node-0123456789ab"
TOKEN = "abcde-fghij-kmnpq-rstuv"
TIMEOUT_S = 10.0


class FakeNode:
    """Plays the node; ``protocols`` are the versions its challenge offers."""

    def __init__(
        self,
        token: str = TOKEN,
        node_id: str = NODE_ID,
        protocols: list[int] | None = None,
        server_key: str = "",
    ) -> None:
        """Not listening until ``start``; ``server_key`` (hex) goes in ``welcome`` when set."""
        self.token = token
        self.server_key = server_key
        self.node_id = node_id
        self.protocols = protocols or [proto.PROTOCOL_VERSION]
        self.connections = 0
        self.auths: list[dict[str, Any]] = []
        self.frames: asyncio.Queue[proto.Frame] = asyncio.Queue()
        self.sizes: list[int] = []
        self.connected = asyncio.Event()
        self.ws: web.WebSocketResponse | None = None
        self._server: TestServer | None = None

    @property
    def port(self) -> int:
        """The port it listens on."""
        assert self._server is not None
        assert self._server.port is not None
        return self._server.port

    async def start(self, port: int | None = None) -> None:
        """Listen on 127.0.0.1 (any free port unless given)."""
        app = web.Application()
        app.router.add_get("/giot", self._handle)
        self._server = TestServer(app, host="127.0.0.1", port=port)
        await self._server.start_server()

    async def stop(self) -> None:
        """Stop listening and close the hub's socket."""
        if self.ws is not None:
            await self.ws.close()
        if self._server is not None:
            await self._server.close()

    async def _handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=proto.MAX_FRAME_BYTES)
        await ws.prepare(request)
        self.connections += 1
        nonce = proto.new_nonce()
        challenge = {
            "node_id": self.node_id,
            "nonce": nonce,
            "protocols": self.protocols,
            "node_version": "0.1.0",
        }
        await ws.send_bytes(proto.encode("challenge", challenge))
        message = await ws.receive()
        if message.type is not WSMsgType.BINARY:
            return ws
        auth = proto.decode(message.data)
        if auth.kind != "auth":  # an error frame from the hub (it refused our challenge)
            await self.frames.put(auth)
            await ws.close()
            return ws
        self.auths.append(auth.body)
        if not proto.check_proof(self.token, nonce, auth.body["proof"]):
            error = {"reason": "bad_token", "detail": "no", "in_reply_to": None}
            await ws.send_bytes(proto.encode("error", error))
            await ws.close()
            return ws
        welcome = {
            "node_id": self.node_id,
            "protocol": auth.body["protocol"],
            "superlink": "superlink.example:9092",
            "connected": True,
        }
        if self.server_key:
            welcome["server_key"] = self.server_key
        await ws.send_bytes(proto.encode("welcome", welcome))
        self.ws = ws
        self.connected.set()
        async for message in ws:
            if message.type is WSMsgType.BINARY:
                self.sizes.append(len(message.data))
                await self.frames.put(proto.decode(message.data))
        if self.ws is ws:
            self.ws = None
            self.connected.clear()
        return ws

    async def wait_connected(self) -> None:
        """Wait until the hub has shaken hands."""
        async with asyncio.timeout(TIMEOUT_S):
            await self.connected.wait()

    async def send(
        self, kind: str, body: dict[str, Any], arrays: dict[str, np.ndarray] | None = None
    ) -> int:
        """Send a checked frame to the hub; return its size."""
        data = proto.encode(kind, body, arrays)
        await self.send_raw(data)
        return len(data)

    async def send_raw(self, data: bytes | str) -> None:
        """Send anything at all."""
        assert self.ws is not None
        if isinstance(data, str):
            await self.ws.send_str(data)
        else:
            await self.ws.send_bytes(data)

    async def next_frame(self) -> proto.Frame:
        """The hub's next frame."""
        async with asyncio.timeout(TIMEOUT_S):
            return await self.frames.get()


def task(
    task_id: str = "t1",
    kind: str = "train",
    *,
    server_round: int = 3,
    deadline_s: float = 30.0,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A task body as the node sends it."""
    return {
        "task_id": task_id,
        "kind": kind,
        "run_id": 7,
        "round": server_round,
        "deadline_s": deadline_s,
        "config": config or {},
    }
