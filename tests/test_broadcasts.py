"""Broadcasts: an announcement stored once and shown on every dashboard socket, now and to the
sockets that connect while it lasts."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest

from mojavox_notify.broadcasts import MAX_ACTIVE, BroadcastBoard
from mojavox_notify.handlers import transport
from mojavox_notify.model import iso

from .support.engines import both_engines
from .support.sockets import Socket, raw_websocket
from .support.tokens import SERVICE, new_user, token
from .support.waiting import wait_until

bounded = pytest.mark.timeout(60)
SERVICE_TOKEN = token(SERVICE, ["service"])


async def announce(app, **fields) -> dict:
    body = {"title": "Maintenance tonight", "message": "The dialer restarts at 22:00 UTC", **fields}
    status, answer = await app.api.post("/api/broadcasts", SERVICE_TOKEN, body)
    assert status == 201, answer
    return answer


async def live_socket(app, user: str, **options) -> Socket:
    socket = await Socket.open(app, token(user), **options)
    await socket.expect("connected")
    return socket


def payload(broadcast_id: str, minute: int, expires_in: float, now: float) -> dict:
    moment = datetime(2026, 11, 30, 12, minute, tzinfo=timezone.utc)
    return {"id": broadcast_id, "timestamp": iso(moment),
            "expiresAt": iso(datetime.fromtimestamp(now + expires_in, tz=timezone.utc))}


# -- the board --------------------------------------------------------------------------------------

def test_the_board_takes_each_broadcast_once_and_drops_it_when_it_expires():
    now = [1_000_000.0]
    board = BroadcastBoard(clock=lambda: now[0])
    assert board.remember(payload("b" * 24, 2, 60, now[0]))
    assert board.remember(payload("a" * 24, 1, 10, now[0]))
    assert not board.remember(payload("a" * 24, 1, 10, now[0]))  # already shown
    assert not board.remember(payload("c" * 24, 3, -1, now[0]))  # expired on arrival
    assert [p["id"][0] for p in board.active()] == ["a", "b"]  # oldest first
    now[0] += 11
    assert [p["id"][0] for p in board.active()] == ["b"]


def test_the_board_keeps_the_newest_when_full():
    now = 1_000_000.0
    board = BroadcastBoard(clock=lambda: now)
    for minute in range(1, MAX_ACTIVE + 1):
        assert board.remember(payload(f"{minute:024x}", minute, 60, now))
    assert board.remember(payload(f"{99:024x}", 59, 60, now))
    assert not board.remember(payload(f"{98:024x}", 0, 60, now))  # older than all it holds
    assert len(board) == MAX_ACTIVE
    assert board.active()[0]["id"] == f"{2:024x}" and board.active()[-1]["id"] == f"{99:024x}"


# -- REST -------------------------------------------------------------------------------------------

@bounded
async def test_a_service_broadcasts_and_any_user_reads_the_active_ones_newest_first(start_app):
    app = await start_app()
    first = await announce(app, priority="critical", ttlSeconds=600, actionUrl="/status",
                           data={"window": "22:00-22:30"})
    assert first["priority"] == "critical" and first["actionUrl"] == "/status"
    assert first["data"] == {"window": "22:00-22:30"}
    created = datetime.fromisoformat(first["timestamp"])
    assert datetime.fromisoformat(first["expiresAt"]) - created == timedelta(seconds=600)
    second = await announce(app, title="<b>Dialer</b> back", message="All lines up")
    assert second["title"] == "Dialer back" and second["priority"] == "high"

    status, answer = await app.api.get("/api/broadcasts", token(new_user()))
    assert status == 200
    assert [b["id"] for b in answer["broadcasts"]] == [second["id"], first["id"]]
    assert answer["broadcasts"][1] == first


@bounded
@pytest.mark.parametrize("body, field", [
    ({"title": "t"}, "message"),
    ({"title": "t", "message": "m", "ttlSeconds": 0}, "ttlSeconds"),
    ({"title": "t", "message": "m", "ttlSeconds": 7 * 24 * 3600 + 1}, "ttlSeconds"),
    ({"title": "t", "message": "m", "ttlSeconds": True}, "ttlSeconds"),
    ({"title": "t", "message": "m", "priority": "urgent"}, "priority"),
    ({"title": "t", "message": "m", "userIds": ["a"]}, "userIds"),
    ({"title": "<i></i>", "message": "m"}, "title"),
    ({"title": "t", "message": "m", "actionUrl": "javascript:alert(1)"}, "actionUrl"),
    ({"title": "t", "message": "m", "data": [1]}, "data"),
    ({"title": "t", "message": "m", "data": {"k": "x" * 17_000}}, "data"),
])
async def test_a_bad_broadcast_is_a_400_naming_the_field_and_nothing_is_stored(start_app, body,
                                                                               field):
    app = await start_app()
    status, answer = await app.api.post("/api/broadcasts", SERVICE_TOKEN, body)
    assert status == 400, answer
    assert answer["error"]["message"].startswith(f"{field}: "), answer
    status, answer = await app.api.get("/api/broadcasts", token(new_user()))
    assert answer == {"broadcasts": []}


@bounded
async def test_only_a_service_may_broadcast(start_app):
    app = await start_app()
    status, answer = await app.api.post("/api/broadcasts", token(new_user()),
                                        {"title": "t", "message": "m"})
    assert status == 403, answer
    status, _ = await app.api.post("/api/broadcasts", None, {"title": "t", "message": "m"})
    assert status == 401


# -- sockets ----------------------------------------------------------------------------------------

@both_engines
@bounded
async def test_every_socket_gets_a_broadcast_once_whatever_its_channels(start_app):
    app = await start_app()
    users = [new_user() for _ in range(3)]
    sockets = [await live_socket(app, user) for user in users for _ in range(2)]
    await sockets[0].send({"type": "unsubscribe", "channels": ["all"]})
    await sockets[0].expect("subscribed")

    sent = await announce(app)
    for socket in sockets:
        frame = await socket.expect("broadcast")
        assert frame["payload"] == sent
        assert [f["type"] for f in await socket.quiet(0.3)] == []  # once, no unread change
    status, unread = await app.api.get("/api/notifications/unread-count", token(users[1]))
    assert unread["count"] == 0


@both_engines
@bounded
async def test_a_socket_that_connects_later_is_shown_the_active_broadcasts_after_connected(
        start_app):
    app = await start_app()
    short = await announce(app, title="Short", ttlSeconds=1)
    first = await announce(app, title="First")
    second = await announce(app, title="Second")
    await asyncio.sleep(1.1)  # `short` has expired

    socket = await Socket.open(app, token(new_user()))
    frames = [await socket.receive() for _ in range(3)]
    assert [f["type"] for f in frames] == ["connected", "broadcast", "broadcast"]
    assert [f["payload"] for f in frames[1:]] == [first, second]
    assert short["id"] not in {f["payload"]["id"] for f in frames[1:]}
    assert [f["type"] for f in await socket.quiet(0.3)] == []


@bounded
async def test_broadcasts_outlive_a_restart(start_app, make_settings):
    settings = make_settings()
    app = await start_app(settings=settings)
    sent = await announce(app)
    await app.stop()

    again = await start_app(settings=settings)
    socket = await Socket.open(again, token(new_user()))
    await socket.expect("connected")
    assert (await socket.receive())["payload"] == sent


@bounded
async def test_a_broadcast_during_connects_reaches_each_socket_exactly_once(start_app):
    """Sockets connecting while a broadcast is published see it once: live, or after
    `connected` from the board, never both."""
    app = await start_app()
    connecting = [asyncio.ensure_future(Socket.open(app, token(new_user()))) for _ in range(40)]
    sent = await announce(app)
    sockets = await asyncio.gather(*connecting)
    for socket in sockets:
        assert (await socket.receive())["type"] == "connected"
        frames = await socket.quiet(0.3)
        assert [(f["type"], f["payload"]["id"]) for f in frames] == [("broadcast", sent["id"])]


@bounded
async def test_cleanup_deletes_expired_broadcasts(start_app):
    app = await start_app()
    await announce(app, ttlSeconds=1)
    kept = await announce(app)
    await asyncio.sleep(1.1)
    await app.service.cleanup()
    assert await app.store.delete_expired_broadcasts() == 0  # cleanup took the expired one
    assert [b["id"] for b in await app.service.active_broadcasts()] == [kept["id"]]


@bounded
async def test_broadcasts_sent_by_two_threads_reach_each_socket_once_and_in_order(start_app,
                                                                                  monkeypatch):
    monkeypatch.setattr(transport, "PARALLEL_SENDS_FROM", 2)
    app = await start_app()
    sockets = [await live_socket(app, new_user()) for _ in range(30)]
    sent = [await app.service.broadcast({"title": f"#{index}", "message": "m"})
            for index in range(5)]
    for socket in sockets:
        frames = [await socket.expect("broadcast") for _ in sent]
        assert [frame["payload"] for frame in frames] == sent
        assert await socket.quiet(0.1) == []


@bounded
async def test_a_client_that_stops_reading_broadcasts_is_closed_and_the_others_keep_them(
        start_app, monkeypatch, caplog):
    monkeypatch.setattr(transport, "PARALLEL_SENDS_FROM", 2)
    app = await start_app(**{"websocket.max_queued_messages": 50,
                             "websocket.max_buffered_bytes": 200_000})
    slow = new_user()
    reader, writer = await raw_websocket(app, slow)
    await wait_until(lambda: app.hub.connections_of(slow) == 1, 5)
    healthy = await live_socket(app, new_user())
    padding = {"blob": "x" * 15_000}
    sent = []
    for index in range(600):
        sent.append(await app.service.broadcast({"title": f"#{index}", "message": "m",
                                                 "data": padding}))
        if app.hub.connections_of(slow) == 0:
            break
        await asyncio.sleep(0)
    assert app.hub.connections_of(slow) == 0, "the slow consumer was never dropped"
    assert sum("slow consumer" in record.getMessage() for record in caplog.records) == 1
    received = [(await healthy.expect("broadcast", timeout=10))["payload"]["id"] for _ in sent]
    assert received == [broadcast["id"] for broadcast in sent]
    writer.close()
