"""A WebSocket client for holding many sockets in one benchmark process, cheaply.

A full client (tornado's, `websockets`) spends tens of microseconds per frame in futures and
parsing; with 1,000 sockets in one process that, not the server, sets the figure measured. This
one is an asyncio Protocol that parses the server's frames in place (a server's frames are never
masked), answers pings, and hands each text frame's bytes to a callback. It speaks only what a
benchmark needs: no extensions, no fragmented messages.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from typing import Callable

OPEN_TIMEOUT = 30.0
TEXT, CLOSE, PING, PONG = 0x1, 0x8, 0x9, 0xA


class LeanSocket(asyncio.Protocol):
    """One client socket; `on_text(payload)` gets every text frame after the handshake."""

    def __init__(self, on_text: Callable[[bytes], None]):
        self.on_text = on_text
        self.upgraded = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._in_handshake = True
        #: The server's close frame (its code and reason), once one came.
        self.close_frame: bytes | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._in_handshake and not self._handshake():
            return
        buffer, position, size = self._buffer, 0, len(self._buffer)
        while size - position >= 2:
            opcode, length, start = buffer[position] & 0x0F, buffer[position + 1] & 0x7F, position + 2
            if length == 126:
                if size - position < 4:
                    break
                length, start = struct.unpack_from("!H", buffer, position + 2)[0], position + 4
            elif length == 127:
                if size - position < 10:
                    break
                length, start = struct.unpack_from("!Q", buffer, position + 2)[0], position + 10
            if size < start + length:
                break
            payload = bytes(buffer[start:start + length])
            position = start + length
            if opcode == TEXT:
                self.on_text(payload)
            elif opcode == PING:
                self._send(PONG, payload)
            elif opcode == CLOSE:
                self.close_frame = payload
                self._send(CLOSE, payload[:2])
                self.transport.close()
        del buffer[:position]

    def _handshake(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(self._buffer[:end])
        del self._buffer[:end + 4]
        self._in_handshake = False
        if self.upgraded.done():  # its opener gave up waiting meanwhile
            self.transport.close()
            return False
        if not head.startswith(b"HTTP/1.1 101"):
            self.upgraded.set_exception(ConnectionError(head.split(b"\r\n", 1)[0].decode()))
            self.transport.close()
            return False
        self.upgraded.set_result(None)
        return True

    def send_text(self, text: str) -> None:
        self._send(TEXT, text.encode())

    def _send(self, opcode: int, payload: bytes) -> None:
        """A client's frames are masked (RFC 6455 5.3)."""
        mask = os.urandom(4)
        length = len(payload)
        if length < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
        elif length <= 0xFFFF:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
        masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
        self.transport.write(head + mask + masked)

    def close_reason(self) -> str:
        """The server's close code and reason, or "" when it sent none."""
        if not self.close_frame or len(self.close_frame) < 2:
            return ""
        return f"closed {struct.unpack_from('!H', self.close_frame)[0]} " \
               f"{self.close_frame[2:].decode(errors='replace')}"

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._send(CLOSE, struct.pack("!H", 1000))
            self.transport.close()

    def connection_lost(self, error: Exception | None) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError("closed during the handshake"))
        if not self.closed.done():
            self.closed.set_result(None)


async def connect(host: str, port: int, path: str, on_text: Callable[[bytes], None],
                  local_address: str | None = None) -> LeanSocket:
    """An open socket to ws://host:port/path (its handshake answered 101)."""
    loop = asyncio.get_running_loop()
    _, socket = await loop.create_connection(
        lambda: LeanSocket(on_text), host, port,
        local_addr=(local_address, 0) if local_address else None)
    key = base64.b64encode(os.urandom(16)).decode()
    socket.transport.write(
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    await asyncio.wait_for(socket.upgraded, OPEN_TIMEOUT)
    return socket
