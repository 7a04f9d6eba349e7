"""`/ws/notifications`: the dashboard socket.

Each socket delivers its user's notifications in sequence order, exactly once: it remembers the
last `seq` it passed on; a live message with a later `seq` than the next expected one makes it
fetch the gap from storage first, and an earlier or equal one is a duplicate and dropped. The
same mechanism serves `?since=` recovery, and live messages that arrive meanwhile wait their turn.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
import socket
import struct
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

import orjson
import tornado.websocket
from tornado.iostream import StreamClosedError

from ..auth import Principal, TokenVerifier, bearer_token
from ..broadcasts import MAX_ACTIVE
from ..broker import Message
from ..errors import (ECHO_CHARS, AuthenticationError, NotFoundError, NotifyError,
                      RateLimitedError, StorageUnavailableError, ValidationError)
from ..httpserver import JsonAnswersStream
from ..hub import Hub
from ..presence import HubPresence
from ..logs import log_access
from ..metrics import Metrics
from ..model import NotificationTypes, iso, parse_json, utcnow
from ..ratelimit import RateLimiter
from ..redaction import shorten
from ..service import NotificationService, page_bounds
from ..settings import ServerSettings, WebSocketSettings
from .base import STATUS_CODES
from .heartbeat import Heartbeat

log = logging.getLogger(__name__)

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_TOKEN_MISSING = 4001
CLOSE_TOKEN_INVALID = 4002
CLOSE_TOKEN_EXPIRED = 4003
CLOSE_SLOW_CONSUMER = 4008
CLOSE_TOO_MANY_SOCKETS = 4009
CLOSE_AUTH_THROTTLED = 4029
# What /metrics calls each close the server makes.
CLOSE_REASONS = {CLOSE_GOING_AWAY: "shutdown", CLOSE_POLICY_VIOLATION: "flooding",
                 CLOSE_TRY_AGAIN_LATER: "storage_unavailable", CLOSE_TOKEN_MISSING: "token_missing",
                 CLOSE_TOKEN_INVALID: "token_invalid", CLOSE_TOKEN_EXPIRED: "token_expired",
                 CLOSE_SLOW_CONSUMER: "slow_consumer", CLOSE_TOO_MANY_SOCKETS: "too_many_sockets",
                 CLOSE_AUTH_THROTTLED: "auth_throttled", 1011: "internal_error"}
LATEST_EPOCH = datetime(9999, 12, 31, tzinfo=timezone.utc).timestamp()

_client_numbers = itertools.count(1)


class Outbox:
    """Frames to one socket, written as WebSocket frames straight to the connection's stream.

    Frames put during one turn of the event loop leave in one write (an alert's `notification`
    and `unread_count`: one system call), with no task per frame (tornado's `write_message`
    makes one) and nothing per socket while idle. Behind a write the kernel has not taken in
    full, frames wait here, bounded: a client that stops reading is closed instead of growing
    this process's memory."""

    __slots__ = ("_socket", "_pending", "_pending_bytes", "_max_messages", "_max_bytes",
                 "_blocked", "_scheduled", "_dropped", "closing_code", "_closing_reason")

    def __init__(self, socket: "NotificationSocket", max_messages: int, max_bytes: int):
        self._socket = socket
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._blocked = False
        self._scheduled = False
        self._dropped = False
        self.closing_code: int | None = None
        self._closing_reason = ""

    def put(self, frame: dict[str, Any]) -> None:
        if self.closing_code is None and not self._dropped:
            self.put_encoded(websocket_frame(encode_frame(frame)))

    def put_encoded(self, data: bytes) -> None:
        """A complete WebSocket frame, e.g. one encoded once for many sockets."""
        if self.closing_code is not None or self._dropped:
            return
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._blocked:
            if len(self._pending) > self._max_messages or self._pending_bytes > self._max_bytes:
                log.warning("closing socket %s of %s: slow consumer (%d frames, %d bytes queued)",
                            self._socket.client_id, self._socket.user_id, len(self._pending),
                            self._pending_bytes)
                self._drop()
                self._socket.drop_slow_consumer()
            return
        if not self._scheduled:
            self._scheduled = True
            _flushes_of(asyncio.get_running_loop()).add(self)

    def idle(self) -> bool:
        """Nothing queued, scheduled or blocked: a frame may go straight to the socket."""
        return not (self._pending or self._scheduled or self._blocked or self._dropped
                    or self.closing_code is not None)

    def sent_directly(self, data: bytes, sent: int) -> None:
        """`data` went straight to the socket (see `deliver_to_all`), `sent` bytes of it; the rest
        waits here like any frame."""
        if sent:
            self._socket.metrics.frames_sent.inc()
        if sent < len(data):
            self.put_encoded(data[sent:])

    def _flush(self) -> None:
        self._scheduled = False
        if self._dropped or self._blocked:
            return
        if self._pending:
            self._write()
        if not self._blocked and self.closing_code is not None:
            self._socket.close(self.closing_code, self._closing_reason)

    def _write(self) -> None:
        connection = self._socket.ws_connection
        if connection is None:
            self._drop()
            return
        data, count = b"".join(self._pending), len(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        stream = connection.stream
        try:
            written = (stream.write_now(data) if isinstance(stream, JsonAnswersStream)
                       else stream.write(data))
        except StreamClosedError:
            self._drop()
            return
        self._socket.metrics.frames_sent.inc(count)
        if written is None:  # all of it is with the kernel
            return
        if stream.writing():  # the kernel took only part of it
            self._blocked = True
            written.add_done_callback(self._drained)
        else:
            written.add_done_callback(_consume_outcome)

    def _drained(self, written: asyncio.Future) -> None:
        self._blocked = False
        if written.cancelled() or written.exception() is not None:
            self._drop()
            return
        self._flush()

    def _drop(self) -> None:
        self._dropped = True
        self._pending.clear()
        self._pending_bytes = 0

    def close_after_flush(self, code: int, reason: str) -> None:
        """Send what is queued, then close (graceful shutdown)."""
        self.closing_code = code
        self._closing_reason = reason
        if not self._blocked and not self._scheduled:
            self._flush()

    def cancel(self) -> None:
        self._drop()


class _Flushes:
    """The outboxes that got frames during this turn of the event loop, flushed together by one
    callback at its end (a 1,000-user alert schedules one callback, not a thousand). Every
    FLUSH_EVERY outboxes the ones gathered so far leave at once, while the turn goes on: the
    first sockets of a big fan-out start receiving while the rest are still being encoded (their
    frames are complete: a socket's frames of one message are put together)."""

    FLUSH_EVERY = 32

    def __init__(self) -> None:
        self._due: list[Outbox] = []  # (no reference to its loop: the registry's key stays weak)

    def add(self, outbox: Outbox) -> None:
        if not self._due:
            asyncio.get_running_loop().call_soon(self._flush_due)
        elif len(self._due) >= self.FLUSH_EVERY:
            self._flush_due()
        self._due.append(outbox)

    def _flush_due(self) -> None:
        due, self._due = self._due, []
        for outbox in due:
            try:
                outbox._flush()
            except Exception:  # one socket's failure must not keep the others' frames
                log.exception("flushing a socket's frames failed")


_flushes: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Flushes]" = weakref.WeakKeyDictionary()


def _flushes_of(loop: asyncio.AbstractEventLoop) -> _Flushes:
    flushes = _flushes.get(loop)
    if flushes is None:
        flushes = _flushes[loop] = _Flushes()
    return flushes


def encode_frame(frame: dict[str, Any]) -> bytes:
    """Compact JSON of a frame: orjson, or the standard library for what orjson refuses
    (integers past 64 bits in a notification's data)."""
    try:
        return orjson.dumps(frame)
    except orjson.JSONEncodeError:
        return json.dumps(frame, separators=(",", ":"), ensure_ascii=False).encode()


_broadcast_frames: "collections.OrderedDict[str, bytes]" = collections.OrderedDict()


def broadcast_frame(payload: dict[str, Any]) -> bytes:
    """A broadcast's frame, encoded once per process for all the sockets it goes to (and every
    socket that connects while it is active)."""
    data = _broadcast_frames.get(payload["id"])
    if data is None:
        data = _broadcast_frames[payload["id"]] = websocket_frame(
            encode_frame({"type": "broadcast", "payload": payload}))
        if len(_broadcast_frames) > 2 * MAX_ACTIVE:
            _broadcast_frames.popitem(last=False)
    return data


#: From this many sockets on, a frame for all of them is sent by two threads at once: the
#: kernel's work per send (on loopback, the receiver's side too) is most of a fan-out's cost,
#: and a send does not hold the GIL.
PARALLEL_SENDS_FROM = 512
_send_helper = ThreadPoolExecutor(1, thread_name_prefix="mojavox-fan-out")


def deliver_to_all(sockets: list["NotificationSocket"], message: Message) -> None:
    """The hub's fan-out of a broadcast: one frame, encoded once, to every socket. Sockets with
    nothing else queued get it straight from here (in parallel when they are many); the others
    queue it behind what they have."""
    data = broadcast_frame(message["broadcast"])
    direct, targets = [], []
    for each in sockets:
        target = each.direct_target()
        if target is None:
            each.deliver(message)
        else:
            direct.append(each)
            targets.append(target)
    if len(targets) < PARALLEL_SENDS_FROM:
        results = _send_each(targets, data)
    else:
        half = len(targets) // 2
        helper = _send_helper.submit(_send_each, targets[:half], data)
        mine = _send_each(targets[half:], data)
        results = helper.result() + mine
    for each, sent in zip(direct, results):
        each.outbox.sent_directly(data, sent)


def _send_each(targets: list, data: bytes) -> list[int]:
    results = []
    for target in targets:
        try:
            results.append(target.send(data))
        except OSError:  # would block, or broken: the outbox meets it its own way
            results.append(0)
    return results


def websocket_frame(payload: bytes) -> bytes:
    """One final, unmasked text frame (RFC 6455 5.2), as a server sends it; compression is off."""
    length = len(payload)
    if length < 126:
        return bytes((0x81, length)) + payload
    if length <= 0xFFFF:
        return struct.pack("!BBH", 0x81, 126, length) + payload
    return struct.pack("!BBQ", 0x81, 127, length) + payload


class InboundLimit:
    """Frames from one client, of every kind (pings and invalid frames too). Past
    `per_second` (a burst of twice that is allowed) a frame is refused unanswered but for one
    `rate_limited` error a second; past `close_above` frames within one second the client is
    flooding and is closed (1008). Either figure 0: no limit of that kind."""

    __slots__ = ("_per_second", "_burst", "_tokens", "_at", "_close_above", "_window",
                 "_in_window", "_told_at")

    def __init__(self, per_second: float, close_above: float):
        self._per_second = per_second
        self._burst = 2 * per_second
        self._tokens = self._burst
        self._close_above = close_above
        self._at = self._window = time.monotonic()
        self._in_window = 0
        self._told_at = float("-inf")

    def admit(self) -> str:
        """"accept", "refuse" (tell the client), "ignore" (refused, already told) or "close"."""
        now = time.monotonic()
        if now - self._window >= 1:
            self._window, self._in_window = now, 0
        self._in_window += 1
        if self._close_above and self._in_window > self._close_above:
            return "close"
        if not self._per_second:
            return "accept"
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._per_second)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return "accept"
        if now - self._told_at >= 1:
            self._told_at = now
            return "refuse"
        return "ignore"


def _consume_outcome(written: asyncio.Future) -> None:
    """A write that was already flushed: collect its outcome so none is left unretrieved."""
    if not written.cancelled():
        written.exception()


class NotificationSocket(tornado.websocket.WebSocketHandler):
    def initialize(self, service: NotificationService, hub: Hub, verifier: TokenVerifier,
                   types: NotificationTypes, server: ServerSettings, websocket: WebSocketSettings,
                   request_limiter: RateLimiter, auth_failures: RateLimiter, metrics: Metrics,
                   heartbeat: Heartbeat, presence: HubPresence | None = None) -> None:
        self.service = service
        self.heartbeat = heartbeat
        self.hub = hub
        self.presence = presence or HubPresence(hub)
        self.verifier = verifier
        self.types = types
        self.server_settings = server
        self.ws_settings = websocket
        self.request_limiter = request_limiter
        self.auth_failures = auth_failures
        self.metrics = metrics
        self._close_counted = False
        self.remote_ip = self.request.remote_ip or ""
        self._opened_at = time.monotonic()
        self.inbound = InboundLimit(websocket.messages_per_second,
                                    websocket.close_above_messages_per_second)
        self.principal: Principal | None = None
        self.user_id: str | None = None
        self.client_id = ""
        self.channels: frozenset[str] = frozenset()
        self.outbox: Outbox | None = None
        self.last_seq = 0
        self.live_from = 0
        self._catching_up = True
        self._held: list[Message] = []
        self._early: list[Message] | None = None
        self._resync_pending = False
        self._token_timer: asyncio.TimerHandle | None = None
        self._attached = False

    # -- handshake ------------------------------------------------------------------------------

    def check_origin(self, origin: str) -> bool:
        allowed = self.server_settings.allowed_origins
        return not allowed or origin in allowed

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
            self.principal = await self.verifier.verify(token)
        except AuthenticationError:
            self.close(CLOSE_TOKEN_INVALID, "Invalid token")
            return
        self.auth_failures.give_back(self.remote_ip)
        if self.principal.expires_at <= time.time():
            # Accepted within the leeway, but a socket needs a token that is still valid.
            self.close(CLOSE_TOKEN_INVALID, "Token expired")
            return
        since = self.get_query_argument("since", None)
        self.user_id = self.principal.user_id
        self.client_id = f"{self.user_id}-{int(time.time() * 1000)}-{next(_client_numbers)}"
        self.channels = self.types.all  # shared until this socket changes its subscriptions
        self.outbox = Outbox(self, self.ws_settings.max_queued_messages,
                             self.ws_settings.max_buffered_bytes)
        try:
            await self._start_live(since)
        except StorageUnavailableError as error:
            log.warning("socket %s could not start: %s", self.client_id, error.message)
            self.close(CLOSE_TRY_AGAIN_LATER, "storage unavailable; reconnect later")
        except Exception:
            log.exception("socket %s could not start", self.client_id)
            self.close(1011, "internal error")

    async def _start_live(self, since: str | None) -> None:
        """Connected, then the missed backlog (with `since`), then live ones: no gap, no repeat."""
        since_seq, since_error = None, None
        if since is not None:
            try:
                since_seq = await self._seq_of_since(since)
            except NotFoundError as error:  # told, and live without a backlog: page history
                since_error = error
            # Storage failing now is no answer: it closes 1013, and the client resumes later
            # from the same `since` instead of going live past what it missed.
        # The user's sockets on other instances count towards the per-user cap (through Redis).
        elsewhere = (await self.presence.elsewhere(self.user_id)
                     if self.ws_settings.max_sockets_per_user else 0)
        refusal = self._over_socket_limits(elsewhere)
        if refusal:
            log.warning("socket of %s from %s refused: %s", self.user_id, self.remote_ip, refusal)
            self.close(CLOSE_TOO_MANY_SOCKETS, refusal)
            return
        # Attached before the counters are read, so no storage read has to close a gap: what
        # is stored after that read is published after it and reaches this socket (kept until
        # `connected` has gone, then held until the backlog has); what was stored before is
        # within `state.seq`.
        self._early = []
        self.hub.attach(self)
        self._attached = True
        state = await self.service.connection_state(self.user_id)
        self.live_from = self.last_seq = state.seq
        self._forget_handshake()
        self.heartbeat.add(self)
        self._schedule_token_timers()
        self._send("connected", clientId=self.client_id, timestamp=iso(utcnow()),
                   unreadCount=state.unread_payload())
        # Every broadcast that came early is on the board already: shown once, from there.
        for payload in self.hub.broadcasts.active():
            self._show_broadcast(payload)
        early, self._early = self._early, None
        for message in early:
            if message.get("kind") != "broadcast":
                self.deliver(message)
        if since_error is not None:
            self._send_error(since_error.code, since_error.message)
        elif since_seq is not None:
            await self._send_backlog(since_seq)
        self._release_held()
        if any(message.get("unread") is not None for message in early):
            # Their counts may predate the one `connected` carried: end on the current one.
            self._send("unread_count", **await self.service.unread(self.user_id))

    def _forget_handshake(self) -> None:
        """The socket is live: its request's headers and parsed query, and the headers of the
        handshake's answer, are not needed again, so they are not kept for the socket's
        lifetime (about 2 KB of each socket)."""
        request = self.request
        for kept in (request.headers, request.query_arguments, request.arguments, self._headers):
            kept.clear()  # in place: tornado's connection object holds the same headers
        request.uri, request.query = request.path, ""

    def _over_socket_limits(self, elsewhere: int = 0) -> str | None:
        """Checked right before attaching, with no wait in between, so concurrent connects of
        one user cannot all pass (on this process; `elsewhere` counts the other instances')."""
        per_user = self.ws_settings.max_sockets_per_user
        if per_user and self.hub.connections_of(self.user_id) + elsewhere >= per_user:
            return f"Too many sockets for this user (at most {per_user})"
        per_address = self.server_settings.max_sockets_per_ip
        if per_address and self.hub.connections_from(self.remote_ip) >= per_address:
            return f"Too many sockets from this address (at most {per_address})"
        return None

    async def _send_backlog(self, since_seq: int) -> None:
        """What the client missed before this connection went live: (since, live_from], capped
        to the newest `resume_limit`, oldest first; `hasMore` tells it to page history."""
        limit = self.ws_settings.resume_limit
        backlog, has_more = await self.service.between(self.user_id, since_seq, self.live_from, limit)
        for _, payload in backlog:
            if payload["type"] in self.channels:
                self._send("notification", payload=payload)
        self._send("resumed", count=len(backlog), hasMore=has_more,
                   lastId=backlog[-1][1]["id"] if backlog else None)

    # -- live delivery (called by the hub; never blocks) ------------------------------------------

    def deliver(self, message: Message) -> None:
        if self._early is not None:  # attached, `connected` not sent yet
            self._early.append(message)
            return
        if message.get("kind") != "notification":
            self._deliver_change(message)
            return
        if self._catching_up:
            self._held.append(message)
            return
        seq = message["seq"]
        if seq <= self.last_seq:
            return
        if seq == self.last_seq + 1:
            self._pass_on(seq, message["notification"])
            self._send("unread_count", **message["unread"])
            return
        self._held.append(message)
        self._catching_up = True
        asyncio.get_running_loop().create_task(self._catch_up())

    def direct_target(self) -> "socket.socket | None":
        """The OS socket, when a frame may be written to it right now from anywhere (no frame
        queued or in flight, live); else None."""
        if self._early is not None or self.outbox is None or not self.outbox.idle():
            return None
        connection = self.ws_connection
        if connection is None:
            return None
        stream = connection.stream
        if stream.closed() or stream.writing():
            return None
        return stream.socket

    def _pass_on(self, seq: int, payload: dict) -> None:
        self.last_seq = seq
        if payload["type"] in self.channels:
            self._send("notification", payload=payload)

    def resync(self) -> None:  # the hub's Connection.resync
        """Live messages may have been missed (the broker lost Redis for a while): fill from
        storage after `last_seq`, then send a fresh `unread_count` and `resynced {count}`."""
        if not self._attached:
            return
        if self._catching_up:
            self._resync_pending = True
            return
        self._catching_up = True
        asyncio.get_running_loop().create_task(self._catch_up(resync=True))

    async def _catch_up(self, resync: bool = False) -> None:
        """Fetch everything after `last_seq` from storage, then release held live messages."""
        self._catching_up = True
        try:
            passed_on = 0
            while True:
                batch, more = await self.service.after(self.user_id, self.last_seq,
                                                       self.ws_settings.resume_limit)
                for seq, payload in batch:
                    self._pass_on(seq, payload)
                passed_on += len(batch)
                if not more:
                    break
            if passed_on or resync:
                self._send("unread_count", **await self.service.unread(self.user_id))
            if resync:
                self._send("resynced", count=passed_on)
            self._release_held()
        except StorageUnavailableError as error:
            # Closing is the honest answer: a client that reconnects with ?since= misses nothing.
            log.warning("socket %s could not catch up: %s", self.client_id, error.message)
            self.close(CLOSE_TRY_AGAIN_LATER, "storage unavailable; reconnect later")
        except Exception:
            log.exception("socket %s could not catch up", self.client_id)
            self.close(1011, "internal error")

    def _release_held(self) -> None:
        """Live from here: the notifications held meanwhile, in sequence order."""
        held, self._held = self._held, []
        self._catching_up = False
        for message in sorted(held, key=lambda m: m["seq"]):
            self.deliver(message)
        if self._resync_pending:
            self._resync_pending = False
            self.resync()

    def _deliver_change(self, message: Message) -> None:
        kind = message["kind"]
        if kind == "broadcast":
            self._show_broadcast(message["broadcast"])
        elif kind == "read":
            self._send("notification_read", notificationId=message["notification_id"])
        elif kind == "read_all":
            self._send("notification_read", notificationId=None, all=True)
        elif kind == "deleted":
            self._send("notification_deleted", notificationId=message["notification_id"])
        if message.get("unread") is not None:
            self._send("unread_count", **message["unread"])

    # -- client messages ------------------------------------------------------------------------

    def send_ping(self) -> bool:  # the heartbeat's
        try:
            self.ping()
        except tornado.websocket.WebSocketClosedError:
            return False
        return True

    def on_pong(self, data: bytes) -> None:
        self.heartbeat.ponged(self)

    async def on_message(self, raw: str | bytes) -> None:
        if self.principal is None:
            return
        admission = self.inbound.admit()
        if admission == "close":
            log.warning("closing socket %s of %s: flooding", self.client_id, self.user_id)
            self._detach()
            self.close(CLOSE_POLICY_VIOLATION, "Too many messages")
            return
        if admission == "refuse":
            self._send_error("rate_limited", "too many messages on this socket: at most "
                             f"{self.ws_settings.messages_per_second:g} a second; the excess is ignored")
        if admission != "accept":
            return
        try:
            frame = _parse_frame(raw)
            handler = getattr(self, f"_on_{frame['type']}", None)
            if handler is None:
                raise ValidationError("type", f"unknown message type "
                                      f"{shorten(frame['type'], ECHO_CHARS)!r}; allowed: "
                                      f"{', '.join(CLIENT_MESSAGES)}", code="unknown_type")
            if frame["type"] != "ping":
                await self.request_limiter.acquire([self.user_id])
            await handler(frame)
        except NotifyError as error:
            self._send_error(error.code, error.message)
        except Exception:
            log.exception("socket %s failed to handle a message", self.client_id)
            self._send_error("internal_error", "the server failed to handle the message")

    async def _on_ping(self, frame: dict) -> None:
        self._send("pong", timestamp=iso(utcnow()))

    async def _on_subscribe(self, frame: dict) -> None:
        self.channels |= self._channels(frame)
        self._send_subscribed()

    async def _on_unsubscribe(self, frame: dict) -> None:
        self.channels -= self._channels(frame)
        self._send_subscribed()

    def _channels(self, frame: dict) -> frozenset[str]:
        channels = frame.get("channels")
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            raise ValidationError("channels", "must be a list of channel names")
        for channel in channels:
            if channel != "all" and channel not in self.types:
                raise ValidationError("channels", f"unknown channel "
                                      f"{shorten(channel, ECHO_CHARS)!r}; allowed: all, "
                                      f"{', '.join(self.types.names)}", code="unknown_channel")
        return self.types.all if "all" in channels else frozenset(channels)

    def _send_subscribed(self) -> None:
        effective = ["all"] if self.channels == self.types.all else sorted(self.channels)
        self._send("subscribed", channels=effective)

    async def _on_mark_read(self, frame: dict) -> None:
        notification_id = frame.get("notificationId")
        if not isinstance(notification_id, str):
            raise ValidationError("notificationId", "must be a notification id string")
        await self.service.mark_read(self.user_id, notification_id)

    async def _on_mark_all_read(self, frame: dict) -> None:
        await self.service.mark_all_read(self.user_id)

    async def _on_get_history(self, frame: dict) -> None:
        limit, offset = page_bounds(frame.get("limit", 50), frame.get("offset", 0))
        unread_only = frame.get("unreadOnly", False)
        if not isinstance(unread_only, bool):
            raise ValidationError("unreadOnly", "must be true or false")
        page = await self.service.list(self.user_id, limit, offset, unread_only)
        self._send("history", **page)

    async def _on_resume(self, frame: dict) -> None:
        since = frame.get("since")
        if not isinstance(since, str):
            raise ValidationError("since", "must be the id of the last notification you received")
        await self._send_backlog(await self._seq_of_since(since))

    async def _seq_of_since(self, since: str) -> int:
        try:
            return await self.service.seq_of(self.user_id, since)
        except NotFoundError:
            raise NotFoundError("since: no such notification of yours; page get_history instead",
                                code="since_not_found") from None

    async def _on_refresh_token(self, frame: dict) -> None:
        token = frame.get("token")
        if not isinstance(token, str) or not token:
            raise ValidationError("token", "must be a JWT string")
        principal = await self.verifier.verify(token)
        if principal.expires_at <= time.time():
            raise AuthenticationError("the new token has already expired", code="token_expired")
        if principal.user_id != self.user_id:
            log.warning("socket %s: refresh with a token of another user; closing", self.client_id)
            self.close(CLOSE_TOKEN_INVALID, "Token is for another user")
            return
        self.principal = principal
        self._schedule_token_timers()
        self._send("token_refreshed", expiresAt=iso_epoch(principal.expires_at))

    # -- token lifetime -------------------------------------------------------------------------

    def _schedule_token_timers(self) -> None:
        """One timer per socket: the `token_expiring` warning, which then sets the close."""
        if self._token_timer is not None:
            self._token_timer.cancel()
        warn_in = (self.principal.expires_at - time.time()
                   - self.ws_settings.token_expiry_warning_seconds)
        self._token_timer = asyncio.get_running_loop().call_later(max(0.0, warn_in),
                                                                  self._token_expiring)

    def _token_expiring(self) -> None:
        self._send("token_expiring", expiresAt=iso_epoch(self.principal.expires_at))
        self._token_timer = asyncio.get_running_loop().call_later(
            max(0.0, self.principal.expires_at - time.time()), self.close, CLOSE_TOKEN_EXPIRED,
            "Token expired")

    # -- output and teardown ----------------------------------------------------------------------

    def _send(self, message_type: str, **fields: Any) -> None:
        if self.outbox is not None:
            self.outbox.put({"type": message_type, **fields})

    def _show_broadcast(self, payload: dict[str, Any]) -> None:
        self.outbox.put_encoded(broadcast_frame(payload))

    def _send_error(self, code: str, message: str) -> None:
        self._send("error", code=code, message=message)

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        if code is not None and not self._close_counted:
            self._close_counted = True
            self.metrics.socket_closes.labels(CLOSE_REASONS.get(code, str(code))).inc()
        super().close(code, reason)

    def shutdown(self, code: int, reason: str) -> None:  # the hub's Connection.shutdown
        """Close after what is queued is sent (used at server shutdown)."""
        if self.outbox is None:
            self.close(code, reason)
        else:
            self.outbox.close_after_flush(code, reason)

    def drop_slow_consumer(self) -> None:
        """Stop routing to this socket at once: a client that does not read may never answer
        the close handshake (tornado aborts the connection when it times out)."""
        self._detach()
        self.close(CLOSE_SLOW_CONSUMER, "slow consumer")

    def _detach(self) -> None:
        if self._attached:
            self.hub.detach(self)
            self._attached = False

    def on_close(self) -> None:
        log_access("WS", self.request.path, 101, time.monotonic() - self._opened_at,
                   self.user_id, self.client_id or self.remote_ip,
                   ("closed", f"{self.close_code} {self.close_reason or ''}".strip())
                   if self.close_code not in (None, 1000, 1001) else None)
        if self._token_timer is not None:
            self._token_timer.cancel()
        self.heartbeat.remove(self)
        self._detach()
        if self.outbox is not None:
            self.outbox.cancel()


CLIENT_MESSAGES = ("subscribe", "unsubscribe", "mark_read", "mark_all_read", "get_history",
                   "ping", "resume", "refresh_token")


def _parse_frame(raw: str | bytes) -> dict:
    try:
        frame = parse_json(raw, "message")
    except ValidationError as error:
        raise ValidationError("", error.message, code="invalid_json") from None
    if not isinstance(frame, dict):
        raise ValidationError("", "the message must be a JSON object", code="invalid_message")
    if not isinstance(frame.get("type"), str):
        raise ValidationError("type", "must be a string naming the message", code="invalid_message")
    return frame


def iso_epoch(seconds: float) -> str:
    """An epoch time as ISO 8601; past year 9999 (a token's `exp` may be anything) it is that."""
    return iso(datetime.fromtimestamp(min(seconds, LATEST_EPOCH), tz=timezone.utc))
