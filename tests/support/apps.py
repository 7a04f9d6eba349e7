"""Running a NotifyApp in the test process: `start_on_loopback` on the test's own loop (the
`start_app` fixture), `LiveApp` on a loop of its own thread."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import tornado.httpclient
import tornado.netutil

from mojavox_notify.app import NotifyApp

from .api import Api
from .tokens import new_user, token


async def start_on_loopback(app: NotifyApp) -> NotifyApp:
    """Start `app` on a free 127.0.0.1 port and give it `app.api`, a REST client for it. A start
    that fails closes the listening sockets and stops whatever had started."""
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    try:
        await app.start(sockets=sockets)
    except BaseException:
        for listening in sockets:
            listening.close()
        await app.stop()
        raise
    app.api = Api(f"http://127.0.0.1:{app.port}")
    return app


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
