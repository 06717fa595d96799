"""The GIoT node of ``hub_round``, in a process of its own as ``giot-node`` is.

``python -m benchmarks.ha._node``: the tests' ``FakeNode`` (a real aiohttp WebSocket server
speaking ``node_protocol``) on 127.0.0.1; it prints its port, then serves the benchmark over its
stdin and stdout. Each request is one encoded ``task`` frame (8-byte length, then the frame): the
node sends it to the hub and answers with the hub's next frame, pickled with its size and the
seconds from sending the task to receiving the answer (the round trip the server waits for,
less the Internet). A closed stdin ends it. Its work (encoding, sending, decoding) thus costs
Home Assistant's process nothing, as a real node's does not.
"""

import asyncio
import pickle
import struct
import sys
import time
from typing import IO

from tests.ha.fake_node import FakeNode

LENGTH = struct.Struct("!Q")


def read_message(stream: IO[bytes]) -> bytes | None:
    """One length-prefixed message; None at the end of the stream."""
    head = stream.read(LENGTH.size)
    if len(head) < LENGTH.size:
        return None
    (size,) = LENGTH.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        return None
    return data


def write_message(stream: IO[bytes], data: bytes) -> None:
    """Write one length-prefixed message."""
    stream.write(LENGTH.pack(len(data)) + data)
    stream.flush()


async def serve() -> None:
    """Print the port, then send each task and hand back what the hub answered."""
    node = FakeNode()
    await node.start()
    sys.stdout.write(f"{node.port}\n")
    sys.stdout.flush()
    loop = asyncio.get_running_loop()
    try:
        while (
            frame := await loop.run_in_executor(None, read_message, sys.stdin.buffer)
        ) is not None:
            await node.connected.wait()
            started = time.perf_counter()
            await node.send_raw(frame)
            answer = await node.frames.get()
            took = time.perf_counter() - started
            reply = {
                "kind": answer.kind,
                "body": answer.body,
                "arrays": answer.arrays,
                "size": node.sizes[-1],
                "seconds": took,
            }
            data = pickle.dumps(reply, protocol=5)
            await loop.run_in_executor(None, write_message, sys.stdout.buffer, data)
    finally:
        await node.stop()


if __name__ == "__main__":
    asyncio.run(serve())
