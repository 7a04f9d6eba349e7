"""REST calls against a running test app: `app.api` (an `Api`), and the calls tests make most."""

from __future__ import annotations

import json
from typing import Any

import tornado.httpclient
import tornado.httputil

from .tokens import SERVICE, token


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
