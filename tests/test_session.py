"""The socket session without tornado: a real service on the embedded storage and a real hub,
and a list for an outbox. Delivery order, catch-up, resume and the client's commands, exactly
as a socket sees them, without a network round trip."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from mojavox_notify.app import NotifyApp
from mojavox_notify.auth import Principal
from mojavox_notify.broker.messages import NotificationCreated
from mojavox_notify.handlers.closes import CLOSE_POLICY_VIOLATION, CLOSE_TOO_MANY_SOCKETS
from mojavox_notify.handlers.session import SessionContext, SocketSession
from mojavox_notify.presence import HubPresence
from mojavox_notify.ratelimit import RateLimiter

pytestmark = pytest.mark.parametrize("storage_engine", ["sqlite"], indirect=True)


class ListOutbox:
    """Frames as the client would read them; encoded ones (broadcasts) decoded back."""

    def __init__(self):
        self.frames: list[dict] = []
        self.closing: tuple[int, str] | None = None

    def put(self, frame):
        self.frames.append(orjson.loads(orjson.dumps(frame)))

    def put_encoded(self, data: bytes):
        header = 4 if data[1] == 126 else 10 if data[1] == 127 else 2
        self.frames.append(orjson.loads(data[header:]))

    def close_after_flush(self, code, reason):
        self.closing = (code, reason)

    def cancel(self):
        pass

    def of(self, *types):
        return [frame for frame in self.frames if frame["type"] in types]


class Closes:
    """The session's peer: the closes it asked for."""

    def __init__(self):
        self.closes: list[tuple[int, str]] = []

    def close(self, code, reason):
        self.closes.append((code, reason))


@pytest.fixture
async def stack(make_settings):
    """A service, hub and in-process broker as the app wires them, with no HTTP server."""
    app = NotifyApp(make_settings(**{"websocket.max_sockets_per_user": 2,
                                     "websocket.messages_per_second": 5,
                                     "websocket.close_above_messages_per_second": 20}))
    await app.open_storage()
    await app.broker.start(app.hub.dispatch)
    yield app
    await app.broker.stop()
    await app.store.close()


def _session(app, user_id="alice"):
    context = SessionContext(service=app.service, escalations=app.escalations, hub=app.hub,
                             presence=HubPresence(app.hub),
                             types=app.plugins.types, verifier=app.verifier,
                             request_limiter=RateLimiter(0, "requests"),
                             settings=app.settings.websocket, max_sockets_per_ip=0)
    outbox, peer = ListOutbox(), Closes()
    principal = Principal(user_id, frozenset({"user"}), time.time() + 3600)
    session = SocketSession(context, principal, "127.0.0.1", f"{user_id}-1", outbox, peer)
    closed = peer.closes
    return session, outbox, closed


async def _create(app, user_id="alice", title="Payment received"):
    return await app.service.create({"userId": user_id, "type": "payment_received",
                                     "title": title, "message": "$50.00 from account 4411"})


async def _settle():
    for _ in range(20):
        await asyncio.sleep(0.01)


async def test_connected_first_then_live_notifications_in_order_with_their_counts(stack):
    session, outbox, closed = _session(stack)
    assert await session.start(None)
    first = await _create(stack)
    second = await _create(stack)
    await _settle()
    assert [frame["type"] for frame in outbox.frames] == [
        "connected", "notification", "unread_count", "notification", "unread_count"]
    assert [frame["payload"]["id"] for frame in outbox.of("notification")] == [first["id"], second["id"]]
    assert outbox.of("unread_count")[-1]["count"] == 2
    await stack.service.mark_read("alice", first["id"])
    await stack.service.delete("alice", second["id"])
    await _settle()
    assert [(frame["type"], frame.get("notificationId")) for frame in outbox.frames[5:]] == [
        ("notification_read", first["id"]), ("unread_count", None),
        ("notification_deleted", second["id"]), ("unread_count", None)]
    assert closed == []


async def test_a_gap_is_filled_from_storage_and_a_duplicate_dropped(stack):
    session, outbox, _ = _session(stack)
    assert await session.start(None)
    await stack.broker.stop()  # this process's broker loses the next message
    lost = await _create(stack, title="Lost on the way")
    await stack.broker.start(stack.hub.dispatch)
    after = await _create(stack, title="Arrives with a gap before it")
    await _settle()
    assert [frame["payload"]["id"] for frame in outbox.of("notification")] == [lost["id"], after["id"]]
    assert outbox.of("unread_count")[-1]["count"] == 2
    session.notify(NotificationCreated("alice", 1, lost, {"count": 1, "byPriority": {}}))
    await _settle()
    assert len(outbox.of("notification")) == 2  # a duplicate: dropped


async def test_since_replays_what_was_missed_after_connected(stack):
    seen = await _create(stack, title="Seen")
    missed = [await _create(stack, title=f"Missed {index}") for index in range(2)]
    session, outbox, _ = _session(stack)
    assert await session.start(seen["id"])
    await _settle()
    assert [frame["type"] for frame in outbox.frames] == [
        "connected", "notification", "notification", "resumed"]
    assert [frame["payload"]["id"] for frame in outbox.of("notification")] == [m["id"] for m in missed]
    assert outbox.of("resumed")[0] == {"type": "resumed", "count": 2, "hasMore": False,
                                       "lastId": missed[-1]["id"]}


async def test_a_since_of_someone_else_is_told_and_the_socket_goes_live(stack):
    bobs = await _create(stack, user_id="bob")
    session, outbox, _ = _session(stack)
    assert await session.start(bobs["id"])
    assert [frame["type"] for frame in outbox.frames] == ["connected", "error"]
    assert outbox.frames[1]["code"] == "since_not_found"


async def test_commands_are_answered_and_bad_ones_refused_on_an_open_socket(stack):
    session, outbox, closed = _session(stack)
    assert await session.start(None)
    for raw in ('{"type": "ping"}', '{"type": "subscribe", "channels": ["nope"]}',
                '{"type": "teleport"}', 'not json', '{"type": "unsubscribe", "channels": ["all"]}',
                '{"type": "get_history", "limit": 1}'):
        await session.receive(raw)
    answers = [(frame["type"], frame.get("code")) for frame in outbox.frames[1:]]
    assert answers == [("pong", None), ("error", "unknown_channel"), ("error", "unknown_type"),
                       ("error", "invalid_json"), ("subscribed", None), ("history", None)]
    await _create(stack)
    await _settle()
    assert outbox.of("notification") == []  # unsubscribed from every channel
    assert closed == []


async def test_a_flooding_client_is_refused_then_closed_and_detached(stack):
    session, outbox, closed = _session(stack)
    assert await session.start(None)
    sent = 0
    while not closed and sent < 25:  # a closed socket reads no more
        await session.receive('{"type": "ping"}')
        sent += 1
    assert sent == 21  # past close_above_messages_per_second within one second
    assert [frame["code"] for frame in outbox.of("error")] == ["rate_limited"]
    assert len(outbox.of("pong")) == 10  # a burst of twice messages_per_second
    assert closed == [(CLOSE_POLICY_VIOLATION, "Too many messages")]
    assert stack.hub.connections_of("alice") == 0


async def test_past_the_per_user_cap_a_session_is_refused_before_it_attaches(stack):
    sessions = [_session(stack) for _ in range(3)]
    assert [await session.start(None) for session, _, _ in sessions] == [True, True, False]
    _, outbox, closed = sessions[2]
    assert outbox.frames == [] and closed[0][0] == CLOSE_TOO_MANY_SOCKETS
    assert stack.hub.connections_of("alice") == 2
    sessions[0][0].end()
    assert stack.hub.connections_of("alice") == 1


async def test_shutdown_closes_after_what_is_queued(stack):
    session, outbox, _ = _session(stack)
    assert await session.start(None)
    stack.hub.shutdown_all(1001, "server shutting down")
    assert outbox.closing == (1001, "server shutting down")



async def test_a_socket_that_ends_while_its_session_starts_keeps_nothing_behind(stack, monkeypatch):
    """The tab closed while the session was still reading its counts (or asking Redis about the
    user's other sockets): the session must neither attach afterwards nor set a token timer,
    which would keep the closed socket, its session and outbox alive until the token expires
    (found by the soak: 5,000 closed sockets held by 7-day timers in one worker)."""
    for slow in ("connection_state", "elsewhere"):
        release = asyncio.Event()
        target = stack.service if slow == "connection_state" else HubPresence
        original = getattr(target, slow)

        async def held(*args, **kwargs):
            await release.wait()
            return await original(*args, **kwargs)

        monkeypatch.setattr(target, slow, held if slow == "connection_state" else
                            lambda self, *args, **kwargs: held(self, *args, **kwargs))
        session, outbox, closed = _session(stack)
        starting = asyncio.ensure_future(session.start(None))
        await _settle()
        session.end()  # the socket closed (on_close)
        release.set()
        assert await starting is False, slow
        assert session._token_timer is None, slow
        assert stack.hub.connections_of("alice") == 0, slow
        monkeypatch.undo()
