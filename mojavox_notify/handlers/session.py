"""One dashboard socket's conversation, without tornado: a test drives it with a fake outbox.

Each session delivers its user's notifications in sequence order, exactly once: it remembers
the last `seq` it passed on; a live message with a later `seq` than the next expected one makes
it fetch the gap from storage first, and an earlier or equal one is a duplicate and dropped.
The same mechanism serves `?since=` recovery, and live messages that arrive meanwhile wait
their turn. It also answers the client's commands and keeps time on the token.

It speaks to its socket through two things it is given: an outbox (`put`, `put_encoded`,
`close_after_flush`, `cancel`: see `transport.Outbox`) and a peer that closes it
(`close(code, reason)`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Protocol

from .. import tenants
from ..auth import Principal, TokenVerifier
from ..broker.messages import AllRead, NotificationCreated, NotificationDeleted, NotificationRead
from ..escalations.service import EscalationService
from ..errors import (ECHO_CHARS, AuthenticationError, NotFoundError, NotifyError,
                      StorageUnavailableError, ValidationError)
from ..hub import Hub
from ..model import NotificationTypes, iso, utcnow
from ..presence import HubPresence
from ..ratelimit import InboundLimit, RateLimiter
from ..redaction import shorten
from ..service import NotificationService
from ..settings import WebSocketSettings
from .closes import (CLOSE_POLICY_VIOLATION, CLOSE_SLOW_CONSUMER, CLOSE_TOKEN_EXPIRED,
                     CLOSE_TOKEN_INVALID, CLOSE_TOO_MANY_SOCKETS, CLOSE_TRY_AGAIN_LATER,
                     CLOSE_INTERNAL_ERROR)
from ..wire.frames import check_client_frame
from .transport import Outbox, broadcast_frame

log = logging.getLogger(__name__)

LATEST_EPOCH = datetime(9999, 12, 31, tzinfo=timezone.utc).timestamp()


class FrameSink(Protocol):
    """What a session writes its frames to (`transport.Outbox`, or a test's list)."""

    def put(self, frame: dict[str, Any]) -> None: ...

    def put_encoded(self, data: bytes) -> None: ...

    def close_after_flush(self, code: int, reason: str) -> None: ...

    def cancel(self) -> None: ...


class Closer(Protocol):
    def close(self, code: int, reason: str) -> None: ...


@dataclass(frozen=True)
class SessionContext:
    """The collaborators every session of a process shares."""

    service: NotificationService
    escalations: EscalationService
    hub: Hub
    presence: HubPresence
    types: NotificationTypes
    verifier: TokenVerifier
    request_limiter: RateLimiter
    settings: WebSocketSettings
    max_sockets_per_ip: int


class SocketSession:
    """The hub's `Connection` for one socket."""

    # Slots: one per live socket, tens of thousands of them per process.
    __slots__ = ("context", "service", "settings", "principal", "user_id", "tenant", "remote_ip",
                 "client_id", "outbox", "_peer", "inbound", "channels", "last_seq", "live_from",
                 "_catching_up", "_held", "_early", "_resync_pending", "_token_timer", "_attached",
                 "_ended")

    def __init__(self, context: SessionContext, principal: Principal, remote_ip: str,
                 client_id: str, outbox: FrameSink, peer: Closer):
        self.context = context
        self.service = context.service
        self.settings = context.settings
        self.principal = principal
        self.user_id = principal.key  # the hub's, storage's and presence's key of this user
        self.tenant = principal.tenant or tenants.DEFAULT
        self.remote_ip = remote_ip
        self.client_id = client_id
        self.outbox = outbox
        self._peer = peer
        self.inbound = InboundLimit(self.settings.messages_per_second,
                                    self.settings.close_above_messages_per_second)
        self.channels = context.types.all  # shared until this socket changes its subscriptions
        self.last_seq = 0
        self.live_from = 0
        self._catching_up = True
        self._held: list[NotificationCreated] = []
        self._early: list[tuple[Callable[[Any], None], Any]] | None = None
        self._resync_pending = False
        self._token_timer: asyncio.TimerHandle | None = None
        self._attached = False
        self._ended = False  # the socket closed: nothing may be set up for it any more

    # -- going live -----------------------------------------------------------------------------

    async def start(self, since: str | None) -> bool:
        """`connected`, then the missed backlog (with `since`), then live ones: no gap, no
        repeat. False when the socket was refused or closed instead."""
        try:
            return await self._start_live(since)
        except StorageUnavailableError as error:
            log.warning("socket %s could not start: %s", self.client_id, error.message)
            self.close(CLOSE_TRY_AGAIN_LATER, "storage unavailable; reconnect later")
        except Exception:
            log.exception("socket %s could not start", self.client_id)
            self.close(CLOSE_INTERNAL_ERROR, "internal error")
        return False

    async def _start_live(self, since: str | None) -> bool:
        since_seq, since_error = None, None
        if since is not None:
            try:
                since_seq = await self._seq_of_since(since)
            except NotFoundError as error:  # told, and live without a backlog: page history
                since_error = error
            # Storage failing now is no answer: it closes 1013, and the client resumes later
            # from the same `since` instead of going live past what it missed.
        # The user's sockets on other instances count towards the per-user cap (through Redis).
        elsewhere = (await self.context.presence.elsewhere(self.user_id)
                     if self.settings.max_sockets_per_user else 0)
        if self._ended:  # closed meanwhile: attaching now would route to it for good
            return False
        refusal = self._over_socket_limits(elsewhere)
        if refusal:
            log.warning("socket of %s from %s refused: %s", tenants.shown(self.user_id),
                        self.remote_ip, refusal)
            self.close(CLOSE_TOO_MANY_SOCKETS, refusal)
            return False
        # Attached before the counters are read, so no storage read has to close a gap: what
        # is stored after that read is published after it and reaches this socket (kept until
        # `connected` has gone, then held until the backlog has); what was stored before is
        # within `state.seq`.
        self._early = []
        self.context.hub.attach(self)
        self._attached = True
        state = await self.service.connection_state(self.user_id)
        if self._ended:  # closed meanwhile (end() detached it): no token timer to keep it alive
            return False
        self.live_from = self.last_seq = state.seq
        self._schedule_token_timers()
        self._send("connected", clientId=self.client_id, timestamp=iso(utcnow()),
                   unreadCount=state.unread_payload(), tenant=self.tenant)
        # Every broadcast that came early is on the board already: shown once, from there.
        for payload in self.context.hub.broadcasts.active(self.tenant):
            self.outbox.put_encoded(broadcast_frame(payload))
        early, self._early = self._early, None
        for handle, message in early:
            handle(message)
        if since_error is not None:
            self._send_error(since_error.code, since_error.message)
        elif since_seq is not None:
            await self._send_backlog(since_seq)
        self._release_held()
        if early:
            # Their counts may predate the one `connected` carried: end on the current one.
            self._send("unread_count", **await self.service.unread(self.user_id))
        return True

    def _over_socket_limits(self, elsewhere: int = 0) -> str | None:
        """Checked right before attaching, with no wait in between, so concurrent connects of
        one user cannot all pass (on this process; `elsewhere` counts the other instances')."""
        hub = self.context.hub
        per_user = self.settings.max_sockets_per_user
        if per_user and hub.connections_of(self.user_id) + elsewhere >= per_user:
            return f"Too many sockets for this user (at most {per_user})"
        per_address = self.context.max_sockets_per_ip
        if per_address and hub.connections_from(self.remote_ip) >= per_address:
            return f"Too many sockets from this address (at most {per_address})"
        return None

    async def _send_backlog(self, since_seq: int) -> None:
        """What the client missed before this connection went live: (since, live_from], capped
        to the newest `resume_limit`, oldest first; `hasMore` tells it to page history."""
        backlog, has_more = await self.service.between(self.user_id, since_seq, self.live_from,
                                                       self.settings.resume_limit)
        for _, payload in backlog:
            if payload["type"] in self.channels:
                self._send("notification", payload=payload)
        self._send("resumed", count=len(backlog), hasMore=has_more,
                   lastId=backlog[-1][1]["id"] if backlog else None)

    # -- live delivery (called by the hub; never blocks) ------------------------------------------

    def notify(self, message: NotificationCreated) -> None:
        if self._early is not None:  # attached, `connected` not sent yet
            self._early.append((self.notify, message))
            return
        if self._catching_up:
            self._held.append(message)
            return
        seq = message.seq
        if seq <= self.last_seq:
            return
        if seq == self.last_seq + 1:
            self._pass_on(seq, message.notification)
            self._send("unread_count", **message.unread)
            return
        self._held.append(message)
        self._catching_up = True
        asyncio.get_running_loop().create_task(self._catch_up())

    def notification_read(self, message: NotificationRead) -> None:
        self._changed(self.notification_read, message,
                      {"type": "notification_read", "notificationId": message.notification_id})

    def all_read(self, message: AllRead) -> None:
        self._changed(self.all_read, message,
                      {"type": "notification_read", "notificationId": None, "all": True})

    def notification_deleted(self, message: NotificationDeleted) -> None:
        self._changed(self.notification_deleted, message,
                      {"type": "notification_deleted", "notificationId": message.notification_id})

    def _changed(self, handle: Callable[[Any], None], message: Any, frame: dict[str, Any]) -> None:
        """A read or a deletion elsewhere: its frame, then the counts after it (held, like every
        message, until `connected` has gone)."""
        if self._early is not None:
            self._early.append((handle, message))
            return
        self.outbox.put(frame)
        self._send("unread_count", **message.unread)

    def escalation(self, payload: dict[str, Any]) -> None:
        """One of the user's escalations changed: on every socket whatever its channels (held,
        like a read, until `connected` has gone)."""
        if self._early is not None:
            self._early.append((self.escalation, payload))
            return
        self._send("escalation", payload=payload)

    def broadcast(self, payload: dict[str, Any]) -> None:
        """Before `connected` it is left to the board, which shows it right after."""
        if self._early is None:
            self.outbox.put_encoded(broadcast_frame(payload))

    def live_outbox(self) -> Outbox | None:
        """The outbox, once `connected` has gone (a broadcast may be written straight to it)."""
        return self.outbox if self._early is None else None

    def _pass_on(self, seq: int, payload: dict) -> None:
        self.last_seq = seq
        if payload["type"] in self.channels:
            self._send("notification", payload=payload)
            if "escalation" in payload:  # the timeline's `delivered`
                self.context.escalations.delivered(self.user_id, payload)

    def resync(self) -> None:
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
                                                       self.settings.resume_limit)
                for seq, payload in batch:
                    self._pass_on(seq, payload)
                passed_on += len(batch)
                if not more:
                    break
            if passed_on or resync:
                self._send("unread_count", **await self.service.unread(self.user_id))
            if resync:
                # Escalations may have changed meanwhile too: their states as they are now.
                for payload in await self.context.escalations.latest_of(self.user_id):
                    self._send("escalation", payload=payload)
                self._send("resynced", count=passed_on)
            self._release_held()
        except StorageUnavailableError as error:
            # Closing is the honest answer: a client that reconnects with ?since= misses nothing.
            log.warning("socket %s could not catch up: %s", self.client_id, error.message)
            self.close(CLOSE_TRY_AGAIN_LATER, "storage unavailable; reconnect later")
        except Exception:
            log.exception("socket %s could not catch up", self.client_id)
            self.close(CLOSE_INTERNAL_ERROR, "internal error")

    def _release_held(self) -> None:
        """Live from here: the notifications held meanwhile, in sequence order."""
        held, self._held = self._held, []
        self._catching_up = False
        for message in sorted(held, key=lambda m: m.seq):
            self.notify(message)
        if self._resync_pending:
            self._resync_pending = False
            self.resync()

    # -- client messages ------------------------------------------------------------------------

    async def receive(self, raw: str | bytes) -> None:
        """A frame from the client: flood control first, then its command."""
        admission = self.inbound.admit()
        if admission == "close":
            log.warning("closing socket %s of %s: flooding", self.client_id,
                        tenants.shown(self.user_id))
            self.detach()
            self.close(CLOSE_POLICY_VIOLATION, "Too many messages")
            return
        if admission == "refuse":
            self._send_error("rate_limited", "too many messages on this socket: at most "
                             f"{self.settings.messages_per_second:g} a second; the excess is ignored")
        if admission != "accept":
            return
        try:
            frame = check_client_frame(raw)
            if frame["type"] != "ping":
                await self.context.request_limiter.acquire([self.user_id])
            await getattr(self, f"_on_{frame['type']}")(frame)
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
        types = self.context.types
        channels = frame["channels"]
        for channel in channels:
            if channel != "all" and channel not in types:
                raise ValidationError("channels", f"unknown channel "
                                      f"{shorten(channel, ECHO_CHARS)!r}; allowed: all, "
                                      f"{', '.join(types.names)}", code="unknown_channel")
        return types.all if "all" in channels else frozenset(channels)

    def _send_subscribed(self) -> None:
        effective = ["all"] if self.channels == self.context.types.all else sorted(self.channels)
        self._send("subscribed", channels=effective)

    async def _on_mark_read(self, frame: dict) -> None:
        await self.service.mark_read(self.user_id, frame["notificationId"])

    async def _on_ack(self, frame: dict) -> None:
        """Answered by the `escalation` frame every recipient's sockets get; when it changed
        nothing (this user had taken it already) this socket gets the frame alone."""
        payload, changed = await self.context.escalations.acknowledge(self.user_id,
                                                                      frame["notificationId"])
        if not changed:
            self._send("escalation", payload=payload)

    async def _on_seen(self, frame: dict) -> None:
        await self.context.escalations.seen_ids(self.user_id, frame["notificationIds"])

    async def _on_mark_all_read(self, frame: dict) -> None:
        await self.service.mark_all_read(self.user_id)

    async def _on_get_history(self, frame: dict) -> None:
        page = await self.service.list(self.user_id, frame.get("limit", 50), frame.get("offset", 0),
                                       frame.get("unreadOnly", False))
        self._send("history", **page)

    async def _on_resume(self, frame: dict) -> None:
        await self._send_backlog(await self._seq_of_since(frame["since"]))

    async def _seq_of_since(self, since: str) -> int:
        try:
            return await self.service.seq_of(self.user_id, since)
        except NotFoundError:
            raise NotFoundError("since: no such notification of yours; page get_history instead",
                                code="since_not_found") from None

    async def _on_refresh_token(self, frame: dict) -> None:
        principal = await self.context.verifier.verify(frame["token"])
        if principal.expires_at <= time.time():
            raise AuthenticationError("the new token has already expired", code="token_expired")
        if principal.key != self.user_id:  # another user, or the same id in another tenant
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
                   - self.settings.token_expiry_warning_seconds)
        self._token_timer = asyncio.get_running_loop().call_later(max(0.0, warn_in),
                                                                  self._token_expiring)

    def _token_expiring(self) -> None:
        self._send("token_expiring", expiresAt=iso_epoch(self.principal.expires_at))
        self._token_timer = asyncio.get_running_loop().call_later(
            max(0.0, self.principal.expires_at - time.time()), self.close, CLOSE_TOKEN_EXPIRED,
            "Token expired")

    # -- output and teardown ----------------------------------------------------------------------

    def _send(self, message_type: str, **fields: Any) -> None:
        self.outbox.put({"type": message_type, **fields})

    def _send_error(self, code: str, message: str) -> None:
        self._send("error", code=code, message=message)

    def close(self, code: int, reason: str) -> None:
        self._peer.close(code, reason)

    def shutdown(self, code: int, reason: str) -> None:
        """Close after what is queued is sent (used at server shutdown)."""
        self.outbox.close_after_flush(code, reason)

    def drop_slow_consumer(self) -> None:
        """Stop routing to this socket at once: a client that does not read may never answer
        the close handshake (tornado aborts the connection when it times out)."""
        self.detach()
        self.close(CLOSE_SLOW_CONSUMER, "slow consumer")

    def detach(self) -> None:
        if self._attached:
            self.context.hub.detach(self)
            self._attached = False

    def end(self) -> None:
        """The socket closed: nothing more for it, also from a start still under way."""
        self._ended = True
        if self._token_timer is not None:
            self._token_timer.cancel()
        self.detach()
        self.outbox.cancel()


def iso_epoch(seconds: float) -> str:
    """An epoch time as ISO 8601; past year 9999 (a token's `exp` may be anything) it is that."""
    return iso(datetime.fromtimestamp(min(seconds, LATEST_EPOCH), tz=timezone.utc))
