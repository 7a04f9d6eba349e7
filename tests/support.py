"""Test clients for the real server: JSON over HTTP and a socket reader that waits for frames."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from typing import Any

import jsonschema
import jwt
import pytest
import tornado.httpclient
import tornado.httputil
import tornado.netutil
import tornado.websocket

from mojavox_notify.app import NotifyApp
from mojavox_notify.wire.frames import SERVER_FRAMES


TEST_SECRET = "test-secret-for-mojavox-notify-0123456789"

# Apply to a test (or a module's `pytestmark`) to run it on both storage engines.
ENGINES = ["sqlite", "mongo"]
both_engines = pytest.mark.parametrize("storage_engine", ENGINES, indirect=True)


def new_user(prefix: str = "user") -> str:
    """A user id no other test uses, so tests never need to wipe shared state."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def token(user: str, roles: tuple[str, ...] | list[str] = (), ttl: float | None = 3600,
          secret: str = TEST_SECRET, **claims: Any) -> str:
    """An HS256 token; `ttl=None` leaves out `exp`, extra claims are added as given."""
    now = time.time()
    payload = {"sub": user, "roles": list(roles), "iat": int(now), **claims}
    if ttl is not None:
        payload["exp"] = now + ttl
    return jwt.encode(payload, secret, algorithm="HS256")


class Api:
    """REST calls against one running app; returns (status, parsed JSON body)."""

    def __init__(self, base_url: str):
        self.base_url = base_url
        self.client = tornado.httpclient.AsyncHTTPClient()
        self.last_headers: tornado.httputil.HTTPHeaders | None = None

    async def call(self, method: str, path: str, token: str | None = None, body: Any = None,
                   raw_body: bytes | None = None, headers: dict | None = None) -> tuple[int, Any]:
        headers = dict(headers or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        data = raw_body if raw_body is not None else (json.dumps(body).encode() if body is not None else None)
        if data is None and method in ("POST", "PUT"):
            data = b""
        if data is not None:
            headers.setdefault("Content-Type", "application/json")
        request = tornado.httpclient.HTTPRequest(
            self.base_url + path, method=method, headers=headers, body=data,
            allow_nonstandard_methods=True, request_timeout=20)
        response = await self.client.fetch(request, raise_error=False)
        self.last_headers = response.headers
        text = response.body.decode() if response.body else ""
        try:
            return response.code, json.loads(text) if text else None
        except ValueError:
            return response.code, text

    async def get(self, path, token=None, **kw):
        return await self.call("GET", path, token, **kw)

    async def post(self, path, token=None, body=None, **kw):
        return await self.call("POST", path, token, body, **kw)

    async def put(self, path, token=None, body=None, **kw):
        return await self.call("PUT", path, token, body, **kw)

    async def delete(self, path, token=None, body=None, **kw):
        return await self.call("DELETE", path, token, body, **kw)

    async def notify(self, user: str, type: str = "payment_received", **fields: Any) -> dict:
        """Create one notification through the service endpoint and return its payload."""
        draft = {"userId": user, "type": type, "title": fields.pop("title", "Title"),
                 "message": fields.pop("message", "Message"), **fields}
        status, body = await self.post("/api/notifications", token("test-service", ["service"]), draft)
        assert status == 201, body
        return body


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
        its published schema (mojavox_notify/protocol.py)."""
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


class HealthWatch:
    """`async with HealthWatch(app) as watch:` asks /healthz over and over, on the app's own loop,
    while the body does something else there. `watch.longest` is the longest time from one
    answer to the next: a stall of the loop lands inside one of these intervals wherever it
    falls (during a health request or between two), so it is how long the body held up every
    other request. Idle, an interval is a few milliseconds."""

    PAUSE = 0.005

    def __init__(self, app):
        self.app = app
        self.longest = 0.0
        self._stop = False
        self._answered = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> "HealthWatch":
        self._task = asyncio.get_running_loop().create_task(self._watch())
        await asyncio.wait_for(self._answered.wait(), 10)
        self.longest = 0.0  # the first answer waited for the connection to open
        return self

    async def __aexit__(self, *exc_info) -> None:
        self._stop = True
        await self._task

    async def _watch(self) -> None:
        last = time.monotonic()
        while True:  # once more after the stop: the interval the stop came in is measured too
            status, body = await self.app.api.get("/healthz")
            assert status == 200, body
            now = time.monotonic()
            self.longest = max(self.longest, now - last)
            last = now
            self._answered.set()
            if self._stop:
                return
            await asyncio.sleep(self.PAUSE)


SERVICE = "test-service"


async def post_event(app, event_type: str, data: Any, event_id: str | None = None,
                     **fields: Any) -> tuple[int, Any]:
    """POST /api/events with a service token; returns (status, parsed JSON body)."""
    body = {"type": event_type, "data": data, **fields}
    if event_id is not None:
        body["id"] = event_id
    return await app.api.post("/api/events", token(SERVICE, ["service"]), body)


async def notifications_of(app, user: str) -> list[dict]:
    """The user's stored notifications, newest first, read back through the REST API."""
    status, body = await app.api.get("/api/notifications?limit=100", token(user))
    assert status == 200, body
    return body["notifications"]


class LiveApp:
    """A NotifyApp on a loop in a background thread; `run(coroutine)` runs on that loop."""

    def __init__(self, settings):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.app = NotifyApp(settings)
        self.run(self.app.start(sockets=tornado.netutil.bind_sockets(0, "127.0.0.1")))
        self.base = f"http://127.0.0.1:{self.app.port}"
        self.user = new_user("fuzz")
        self.notification_id = self.run(self._seed())

    def run(self, coroutine, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    async def _seed(self) -> str:
        status, body = await self.request("POST", "/api/notifications", token("live", ["service"]), json.dumps(
            {"userId": self.user, "type": "payment_received", "title": "t", "message": "m"}).encode())
        assert status == 201, body
        return body["id"]

    async def request(self, method: str, path: str, bearer: str | None, body: bytes | None,
                      headers: dict | None = None) -> tuple[int, Any]:
        headers = dict(headers or {})
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        if body is None and method in ("POST", "PUT"):
            body = b""
        response = await tornado.httpclient.AsyncHTTPClient().fetch(
            self.base + path, method=method, headers=headers, body=body, raise_error=False,
            allow_nonstandard_methods=True, request_timeout=20)
        try:
            return response.code, json.loads(response.body) if response.body else None
        except ValueError:
            return response.code, response.body

    def stop(self) -> None:
        self.run(self.app.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
