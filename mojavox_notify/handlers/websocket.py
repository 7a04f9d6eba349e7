"""`/ws/notifications`: the dashboard socket's tornado handler.

It only authenticates, builds the connection's outbox (`transport.py`) and session
(`session.py`), hands the client's frames to the session and closes with the right code. What
the socket says and in which order is the session's.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from typing import Any

import tornado.websocket

from .. import tenants
from ..auth import TokenVerifier, bearer_token
from ..errors import AuthenticationError, RateLimitedError
from ..logs import log_access
from ..metrics import Metrics
from ..ratelimit import RateLimiter
from ..settings import WebSocketSettings
from .base import STATUS_CODES
from .closes import (CLOSE_AUTH_THROTTLED, CLOSE_REASONS, CLOSE_TOKEN_INVALID,
                     CLOSE_TOKEN_MISSING)
from .heartbeat import Heartbeat
from .session import SessionContext, SocketSession
from .transport import Outbox

log = logging.getLogger(__name__)

_client_numbers = itertools.count(1)


class NotificationSocket(tornado.websocket.WebSocketHandler):
    def initialize(self, context: SessionContext, verifier: TokenVerifier,
                   websocket: WebSocketSettings, allowed_origins: tuple[str, ...],
                   auth_failures: RateLimiter, metrics: Metrics, heartbeat: Heartbeat) -> None:
        self.context = context
        self.verifier = verifier
        self.ws_settings = websocket
        self.allowed_origins = allowed_origins
        self.auth_failures = auth_failures
        self.metrics = metrics
        self.heartbeat = heartbeat
        self.remote_ip = self.request.remote_ip or ""
        self._opened_at = time.monotonic()
        self._close_counted = False
        self.session: SocketSession | None = None

    # -- handshake ------------------------------------------------------------------------------

    def check_origin(self, origin: str) -> bool:
        return not self.allowed_origins or origin in self.allowed_origins

    def get_compression_options(self) -> None:
        return None

    def finish(self, chunk: Any = None) -> Any:
        """tornado refuses a bad handshake (no Upgrade header, a foreign origin) in plain text;
        answer in the API's error shape instead."""
        if self.ws_connection is None and isinstance(chunk, str) and self.get_status() >= 400:
            code = STATUS_CODES.get(self.get_status(), "http_error")
            self.set_header("Content-Type", "application/json; charset=utf-8")
            chunk = json.dumps({"error": {"code": code, "message": chunk}}, separators=(",", ":"))
        return super().finish(chunk)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """tornado's error page (a 405 for POST on the socket's path) is HTML: its reason, in the
        API's error shape (see `finish`), and a 405's Allow."""
        if status_code == 405:
            self.set_header("Allow", "GET")
        self.finish(self._reason)

    async def open(self) -> None:
        token = (self.get_query_argument("token", None)
                 or bearer_token(self.request.headers.get("Authorization", "")))
        if not token:
            self.close(CLOSE_TOKEN_MISSING, "Authentication required")
            return
        try:  # a failure is taken before verifying and given back for a good token (base.py)
            self.auth_failures.take([self.remote_ip])
        except RateLimitedError:
            self.close(CLOSE_AUTH_THROTTLED, "Too many failed authentications; retry later")
            return
        try:
            principal = await self.verifier.verify(token)
        except AuthenticationError:
            self.close(CLOSE_TOKEN_INVALID, "Invalid token")
            return
        self.auth_failures.give_back(self.remote_ip)
        if principal.expires_at <= time.time():
            # Accepted within the leeway, but a socket needs a token that is still valid.
            self.close(CLOSE_TOKEN_INVALID, "Token expired")
            return
        since = self.get_query_argument("since", None)
        self._forget_handshake()
        client_id = f"{principal.user_id}-{int(time.time() * 1000)}-{next(_client_numbers)}"
        outbox = Outbox(self.ws_connection.stream, self.metrics.frames_sent, self,
                        self.ws_settings.max_queued_messages, self.ws_settings.max_buffered_bytes)
        self.session = SocketSession(self.context, principal, self.remote_ip, client_id, outbox,
                                     self)
        if await self.session.start(since) and self.ws_connection is not None:
            self.heartbeat.add(self)  # (not for a socket that closed while its session started)

    def _forget_handshake(self) -> None:
        """The socket is live: its request's headers and parsed query, and the headers of the
        handshake's answer, are not needed again, so they are not kept for the socket's
        lifetime (about 2 KB of each socket)."""
        request = self.request
        for kept in (request.headers, request.query_arguments, request.arguments, self._headers):
            kept.clear()  # in place: tornado's connection object holds the same headers
        request.uri, request.query = request.path, ""

    # -- frames and keepalive -------------------------------------------------------------------

    async def on_message(self, raw: str | bytes) -> None:
        if self.session is not None:
            await self.session.receive(raw)

    def send_ping(self) -> bool:  # the heartbeat's
        try:
            self.ping()
        except tornado.websocket.WebSocketClosedError:
            return False
        return True

    def on_pong(self, data: bytes) -> None:
        self.heartbeat.ponged(self)

    # -- closing --------------------------------------------------------------------------------

    def slow_consumer(self, frames: int, size: int) -> None:  # the outbox's Peer
        log.warning("closing socket %s of %s: slow consumer (%d frames, %d bytes queued)",
                    self.session.client_id, self.session.user_id, frames, size)
        self.session.drop_slow_consumer()

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        if code is not None and not self._close_counted:
            self._close_counted = True
            self.metrics.socket_closes.labels(CLOSE_REASONS.get(code, str(code))).inc()
        super().close(code, reason)

    def on_close(self) -> None:
        session = self.session
        log_access("WS", self.request.path, 101, time.monotonic() - self._opened_at,
                   tenants.shown(session.user_id) if session else None,
                   session.client_id if session else self.remote_ip,
                   ("closed", f"{self.close_code} {self.close_reason or ''}".strip())
                   if self.close_code not in (None, 1000, 1001) else None)
        self.heartbeat.remove(self)
        if session is not None:
            session.end()
            # The handler and its session refer to each other: without this the closed socket
            # (request, headers, outbox) waits for a full cycle collection, which the tuned
            # collector (cli.py) makes rare: a churning worker held thousands.
            self.session = None
