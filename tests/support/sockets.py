"""Dashboard socket clients: `Socket` checks every frame it receives against its published schema;
`raw_websocket` completes the handshake and then never reads (a dead or slow client)."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import jsonschema
import tornado.httpclient
import tornado.websocket

from mojavox_notify.wire.frames import SERVER_FRAMES

from .tokens import token


FRAME_VALIDATORS = {name: jsonschema.Draft202012Validator(schema)
                    for name, schema in SERVER_FRAMES.items()}


def check_server_frame(frame: Any) -> None:
    assert isinstance(frame, dict) and frame.get("type") in FRAME_VALIDATORS, frame
    errors = sorted(FRAME_VALIDATORS[frame["type"]].iter_errors(frame), key=lambda e: e.path)
    assert not errors, f"frame does not match its schema: {errors[0].message} in {frame}"


class Socket:
    """A dashboard socket: `receive()` returns the next frame, `expect(type)` the next of a type."""

    def __init__(self, connection: tornado.websocket.WebSocketClientConnection):
        self.connection = connection
        self.frames: list[dict] = []

    @classmethod
    async def open(cls, app, token_value: str | None = None, since: str | None = None,
                   headers: dict | None = None, **options: Any) -> "Socket":
        query = []
        if token_value is not None:
            query.append(f"token={token_value}")
        if since is not None:
            query.append(f"since={since}")
        url = f"ws://127.0.0.1:{app.port}{app.settings.server.ws_path}"
        if query:
            url += "?" + "&".join(query)
        request = tornado.httpclient.HTTPRequest(url, headers=headers or {})
        connection = await tornado.websocket.websocket_connect(request, **options)
        return cls(connection)

    async def send(self, frame: Any) -> None:
        text = frame if isinstance(frame, (str, bytes)) else json.dumps(frame)
        await self.connection.write_message(text, binary=isinstance(text, bytes))

    async def receive(self, timeout: float = 5.0) -> dict | None:
        """The next frame, or None when the server closed the socket. Every frame must match
        its published schema (mojavox_notify/wire/frames.py)."""
        text = await asyncio.wait_for(self.connection.read_message(), timeout)
        if text is None:
            return None
        frame = json.loads(text)
        check_server_frame(frame)
        self.frames.append(frame)
        return frame

    async def expect(self, message_type: str, timeout: float = 5.0) -> dict:
        """Skip other frames until one of `message_type` arrives."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            frame = await self.receive(max(remaining, 0.01))
            if frame is None:
                raise AssertionError(f"socket closed ({self.close_code}) while waiting for {message_type}")
            if frame["type"] == message_type:
                return frame

    async def quiet(self, seconds: float = 0.3) -> list[dict]:
        """Every frame that arrives within `seconds` (to show that nothing else comes)."""
        received = []
        try:
            while True:
                frame = await self.receive(seconds)
                if frame is None:
                    return received
                received.append(frame)
        except asyncio.TimeoutError:
            return received

    async def closed(self, timeout: float = 5.0) -> int | None:
        """Wait until the server closes the socket; its close code."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError("the socket was not closed")
            try:
                if await self.receive(remaining) is None:
                    return self.close_code
            except asyncio.TimeoutError:
                continue

    @property
    def close_code(self) -> int | None:
        return self.connection.close_code

    def close(self) -> None:
        self.connection.close()


async def raw_websocket(app, user) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client that completes the handshake and then never reads or answers pings."""
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port, limit=1024)
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    writer.write((f"GET {app.settings.server.ws_path}?token={token(user)} HTTP/1.1\r\n"
                  f"Host: 127.0.0.1:{app.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
                 .encode())
    await writer.drain()
    status = await reader.readline()
    assert b"101" in status
    return reader, writer


class SocketTally:
    """Sockets of `users` on one server, keeping `key(payload)` of every notification each one
    receives (the kill tests' count of what reached the sockets), until the user's sentinel
    (a notification titled `sentinel`) arrives."""

    def __init__(self, key=lambda payload: payload["id"]) -> None:
        self.key = key
        self.seen: dict[str, list[str]] = {}
        self.sentinels: dict[str, asyncio.Event] = {}
        self._readers: list[asyncio.Task] = []
        self._sockets: list[Socket] = []

    async def open(self, server, users: list[str]) -> None:
        for user in users:
            connection = await Socket.open(server, token(user))
            await connection.expect("connected")
            self._sockets.append(connection)
            self.seen[user] = []
            self.sentinels[user] = asyncio.Event()
            self._readers.append(asyncio.ensure_future(self._read(user, connection)))

    async def _read(self, user: str, connection: Socket) -> None:
        while True:
            frame = await connection.receive(timeout=120)
            if frame is None:
                return
            if frame["type"] != "notification":
                continue
            if frame["payload"]["title"] == "sentinel":
                self.sentinels[user].set()
            else:
                self.seen[user].append(self.key(frame["payload"]))

    async def sentinels_through(self, server) -> None:
        """A last notification per user behind everything, posted to `server` (a killable
        serve process), and each one awaited: a socket that missed one (stored by a killed
        process just before it could publish it) fetches the gap before its sentinel."""
        for user in self.seen:
            status, body = await asyncio.to_thread(
                server.call, "POST", "/api/notifications", token("svc", ["service"]),
                {"userId": user, "type": "payment_received", "title": "sentinel",
                 "message": "end"})
            assert status == 201, body
        async with asyncio.timeout(30):
            await asyncio.gather(*(sentinel.wait() for sentinel in self.sentinels.values()))

    def accounts(self) -> list[str]:
        return [value for values in self.seen.values() for value in values]

    def close(self) -> None:
        for reader in self._readers:
            reader.cancel()
        for connection in self._sockets:
            connection.close()
