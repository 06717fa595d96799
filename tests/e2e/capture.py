"""A TCP relay that keeps every byte one side sent: what a node forwarded to the SuperLink.

The end-to-end test puts it between a GIoT node and the SuperLink (no TLS on that link in this
test, so the bytes are what Flower put on the wire) and searches them for anything of the home.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class CaptureRelay:
    """Listen on a free local port, relay to ``target``, record client-to-server bytes."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.upstream = bytearray()  # node -> SuperLink
        self.downstream = bytearray()  # SuperLink -> node
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while chunk := src.recv(65536):
                with self._lock:
                    (self.upstream if up else self.downstream).extend(chunk)
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def sent(self) -> bytes:
        """Every byte the node side has sent so far."""
        with self._lock:
            return bytes(self.upstream)

    def close(self) -> None:
        """Stop accepting (open relays end when either side closes)."""
        self._closed = True
        self._server.close()
