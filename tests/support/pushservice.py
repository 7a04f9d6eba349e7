"""A browser push service stand-in on loopback, strict like a real one.

For each POST to a subscription's endpoint it checks the VAPID authorization (RFC 8292: an
ES256 JWT signed with the key in `k=`, `aud` the endpoint's origin, `exp` at most 24 hours
ahead), the `TTL` and `Content-Encoding: aes128gcm` headers, and decrypts the body (RFC 8291)
with the subscription's own private key and auth secret, as the browser would. Then it answers
what the test scripted (201 by default; 410, 429 with Retry-After, 500 ...).

Tests use `PushServiceStandIn` directly. By hand (see docs/web-push.md):

    .venv/bin/python -m tests.support.pushservice --port 8090

prints a subscription to register with `POST /api/notifications/push-subscription` and then
every push it decrypts.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import secrets
import time
from collections import deque
from dataclasses import dataclass, field

import http_ece
import jwt
import tornado.netutil
import tornado.web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from tornado.httpserver import HTTPServer

from mojavox_notify.push import b64url

from .tokens import token


TOPIC = re.compile(r"[A-Za-z0-9_-]{1,32}")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Browser:
    """One subscription's receiving side: its key pair and auth secret."""

    name: str
    private_key: ec.EllipticCurvePrivateKey
    auth: bytes
    answers: deque = field(default_factory=deque)  # (status, headers) to give, in order
    held: asyncio.Event | None = None  # while set up and not set, pushes wait before an answer


@dataclass(frozen=True)
class Delivery:
    """A push as the browser would get it, with what the push service was told."""

    browser: str
    payload: bytes
    ttl: int
    urgency: str | None
    status: int  # what the stand-in answered
    topic: str | None = None  # the Topic header (RFC 8030 5.4), checked when given


class PushServiceStandIn:
    def __init__(self, vapid_public_key: str | None = None):
        """With `vapid_public_key`, pushes signed with any other key are refused (401)."""
        self.vapid_public_key = vapid_public_key
        self.browsers: dict[str, Browser] = {}
        self.deliveries: list[Delivery] = []
        self.refusals: list[str] = []
        self.arrivals: list[str] = []  # browser names, as each push arrived (before any hold)
        self.port: int | None = None
        self._server: HTTPServer | None = None
        self._arrived = asyncio.Event()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> None:
        application = tornado.web.Application([(r"/push/([A-Za-z0-9_-]+)", _PushHandler, {"service": self})])
        sockets = tornado.netutil.bind_sockets(port, "127.0.0.1")
        self.port = sockets[0].getsockname()[1]
        self._server = HTTPServer(application)
        self._server.add_sockets(sockets)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            await self._server.close_all_connections()

    def subscribe(self) -> dict:
        """A new browser subscription, as `PushSubscription.toJSON()` gives it."""
        name = secrets.token_urlsafe(12)
        browser = Browser(name, ec.generate_private_key(ec.SECP256R1()), os.urandom(16))
        self.browsers[name] = browser
        public = browser.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        return {"endpoint": f"{self.origin}/push/{name}",
                "keys": {"p256dh": b64url(public), "auth": b64url(browser.auth)}}

    def answer(self, subscription: dict, *answers: tuple[int, dict]) -> None:
        """Script the next answers for a subscription's endpoint: (status, headers) each."""
        self.browsers[subscription["endpoint"].rsplit("/", 1)[1]].answers.extend(answers)

    def hold(self, subscription: dict) -> asyncio.Event:
        """Keep the pushes to this subscription waiting for their answer until the returned
        event is set (to change the world while a send is in flight)."""
        browser = self.browsers[subscription["endpoint"].rsplit("/", 1)[1]]
        browser.held = asyncio.Event()
        return browser.held

    def arrived_at(self, subscription: dict) -> int:
        """How many pushes to this subscription arrived, answered or still held."""
        return self.arrivals.count(subscription["endpoint"].rsplit("/", 1)[1])

    def delivered_to(self, subscription: dict) -> list[Delivery]:
        name = subscription["endpoint"].rsplit("/", 1)[1]
        return [d for d in self.deliveries if d.browser == name and d.status in (200, 201)]

    async def wait_for(self, predicate, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._arrived.clear()
            try:
                async with asyncio.timeout(min(remaining, 0.2)):
                    await self._arrived.wait()
            except TimeoutError:
                pass
        return True

    async def receive(self, name: str, headers, body: bytes) -> tuple[int, dict]:
        browser = self.browsers.get(name)
        if browser is None:
            return 404, {}
        self.arrivals.append(name)
        self._arrived.set()
        if browser.held is not None:
            await browser.held.wait()
        problem = self._check_vapid(headers.get("Authorization", ""))
        if problem is None and headers.get("Content-Encoding") != "aes128gcm":
            problem = f"Content-Encoding must be aes128gcm, not {headers.get('Content-Encoding')}"
        if problem is None and not (headers.get("TTL") or "").isdigit():
            problem = "the TTL header is required"
        topic = headers.get("Topic")
        if problem is None and topic is not None and not TOPIC.fullmatch(topic):
            problem = f"Topic must be 1 to 32 URL-safe base64 characters, not {topic!r}"
        if problem is not None:
            self.refusals.append(problem)
            return 401 if "VAPID" in problem else 400, {}
        try:
            payload = http_ece.decrypt(body, private_key=browser.private_key,
                                       auth_secret=browser.auth, version="aes128gcm")
        except Exception as error:  # whatever the library raises for a body it cannot open
            self.refusals.append(f"cannot decrypt: {error!r}")
            return 400, {}
        status, answer_headers = browser.answers.popleft() if browser.answers else (201, {})
        self.deliveries.append(Delivery(name, payload, int(headers["TTL"]), headers.get("Urgency"),
                                        status, topic))
        self._arrived.set()
        return status, answer_headers

    def _check_vapid(self, authorization: str) -> str | None:
        scheme, _, rest = authorization.partition(" ")
        if scheme.lower() != "vapid":
            return "VAPID: Authorization must be 'vapid t=<JWT>, k=<key>'"
        parts = dict(part.strip().split("=", 1) for part in rest.split(",") if "=" in part)
        token, key = parts.get("t"), parts.get("k")
        if not token or not key:
            return "VAPID: t= and k= are required"
        if self.vapid_public_key and key.rstrip("=") != self.vapid_public_key.rstrip("="):
            return "VAPID: signed with another key than the one the browser subscribed with"
        try:
            public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64url(key))
            claims = jwt.decode(token, public, algorithms=["ES256"], audience=self.origin,
                                options={"require": ["exp", "aud", "sub"]})
        except (ValueError, jwt.PyJWTError) as error:
            return f"VAPID: {error}"
        if claims["exp"] > time.time() + 24 * 3600:
            return "VAPID: exp is more than 24 hours ahead"
        if not str(claims["sub"]).startswith(("mailto:", "https://")):
            return "VAPID: sub must be a mailto: or https: contact"
        return None


class _PushHandler(tornado.web.RequestHandler):
    def initialize(self, service: PushServiceStandIn) -> None:
        self.service = service

    async def post(self, name: str) -> None:
        status, headers = await self.service.receive(name, self.request.headers, self.request.body)
        self.set_status(status)
        for header, value in headers.items():
            self.set_header(header, value)
        self.finish()


class SilentPushService:
    """A push service host that accepts every connection, reads the request and never answers:
    a dead or hostile one. It counts the connections it holds open."""

    def __init__(self) -> None:
        self.accepted = 0
        self.open = 0
        self.most_open = 0
        self.paths: list[str] = []
        self.port: int | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._hold, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close every connection held (their senders see them closed) and stop listening."""
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        self.accepted += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.paths.append(head.split(b" ", 2)[1].decode())
            while await reader.read(65536):
                pass
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open -= 1
            self._writers.discard(writer)
            writer.close()


async def subscribed(app, push_service: PushServiceStandIn, user: str) -> dict:
    """A new browser subscription of `push_service`, registered for `user` with the app."""
    subscription = push_service.subscribe()
    status, body = await app.api.post("/api/notifications/push-subscription", token(user),
                                      subscription)
    assert status == 200, body
    return subscription


async def _main(port: int) -> None:
    service = PushServiceStandIn()
    await service.start(port)
    print("push service stand-in on", service.origin)
    print("register this subscription (POST /api/notifications/push-subscription):")
    print(json.dumps(service.subscribe()))
    print("then every push it decrypts is printed here; Ctrl-C stops it.", flush=True)
    seen = 0
    while True:
        await asyncio.sleep(0.2)
        for delivery in service.deliveries[seen:]:
            print(f"push (TTL {delivery.ttl}, Urgency {delivery.urgency}, Topic {delivery.topic}): "
                  f"{delivery.payload.decode()}", flush=True)
        seen = len(service.deliveries)
        for refusal in service.refusals:
            print("refused:", refusal, flush=True)
        service.refusals.clear()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="A push service stand-in on 127.0.0.1 that "
                                     "verifies VAPID and decrypts what it receives.")
    parser.add_argument("--port", type=int, default=8090)
    try:
        asyncio.run(_main(parser.parse_args().port))
    except KeyboardInterrupt:
        pass
