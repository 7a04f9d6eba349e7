"""The dashboard socket protocol on real sockets: handshake, every message, every error."""

from __future__ import annotations

import asyncio
import os
import random
import struct

import pytest
import tornado.httpclient
import tornado.websocket

from .support.api import post_event
from .support.sockets import Socket, raw_websocket
from .support.tokens import new_user, token
from .support.waiting import wait_until

bounded = pytest.mark.timeout(60)


async def connect(app, user, **kwargs) -> Socket:
    socket = await Socket.open(app, token(user), **kwargs)
    await socket.expect("connected")
    return socket


# -- handshake ------------------------------------------------------------------------------------

@bounded
async def test_socket_without_token_is_closed_with_4001(start_app):
    app = await start_app()
    socket = await Socket.open(app)
    assert await socket.closed() == 4001


@bounded
async def test_socket_with_forged_token_is_closed_with_4002(start_app):
    app = await start_app()
    socket = await Socket.open(app, token(new_user(), secret="another-secret-of-at-least-32-bytes!!"))
    assert await socket.closed() == 4002


@bounded
async def test_socket_with_expired_token_is_closed_with_4002(start_app):
    app = await start_app(**{"auth.leeway_seconds": 0})
    socket = await Socket.open(app, token(new_user(), ttl=-10))
    assert await socket.closed() == 4002


@bounded
async def test_token_in_authorization_header_is_accepted(start_app):
    app = await start_app()
    user = new_user()
    socket = await Socket.open(app, headers={"Authorization": f"Bearer {token(user)}"})
    connected = await socket.expect("connected")
    assert connected["clientId"].startswith(user)


@bounded
async def test_connected_frame_carries_client_id_timestamp_and_unread_count(start_app):
    app = await start_app()
    user = new_user()
    await app.api.notify(user, priority="critical")
    await app.api.notify(user, priority="low")
    socket = await Socket.open(app, token(user))
    connected = await socket.receive()
    assert connected["type"] == "connected"
    assert connected["timestamp"].endswith("Z")
    assert connected["unreadCount"] == {
        "count": 2, "byPriority": {"low": 1, "medium": 0, "high": 0, "critical": 1}}


@bounded
async def test_origin_outside_the_allowlist_is_refused(start_app):
    app = await start_app(**{"server.allowed_origins": ["https://app.mojavox.ai"]})
    user = new_user()
    with pytest.raises(tornado.httpclient.HTTPClientError) as refused:
        await Socket.open(app, token(user), headers={"Origin": "https://evil.example"})
    assert refused.value.code == 403
    socket = await Socket.open(app, token(user), headers={"Origin": "https://app.mojavox.ai"})
    await socket.expect("connected")


# -- messages ---------------------------------------------------------------------------------------

@bounded
async def test_ping_gets_pong_with_timestamp(start_app):
    app = await start_app()
    socket = await connect(app, new_user())
    await socket.send({"type": "ping"})
    pong = await socket.receive()
    assert pong["type"] == "pong" and pong["timestamp"].endswith("Z")


@bounded
async def test_notification_created_through_rest_arrives_with_its_payload(start_app):
    app = await start_app()
    user = new_user()
    socket = await connect(app, user)
    created = await app.api.notify(user, title="Payment Received", message="John paid",
                                   data={"amount": 5}, actionUrl="/payment-history")
    frame = await socket.receive()
    assert frame == {"type": "notification", "payload": created}
    assert set(created) == {"id", "type", "title", "message", "timestamp", "priority", "read",
                            "data", "actionUrl"}
    unread = await socket.receive()
    assert unread == {"type": "unread_count", "count": 1,
                      "byPriority": {"low": 0, "medium": 0, "high": 1, "critical": 0}}


@bounded
async def test_unsubscribed_type_is_not_delivered(start_app):
    app = await start_app()
    user = new_user()
    socket = await connect(app, user)
    await socket.send({"type": "unsubscribe", "channels": ["call_completed"]})
    subscribed = await socket.expect("subscribed")
    assert "call_completed" not in subscribed["channels"]
    assert "payment_received" in subscribed["channels"]
    await app.api.notify(user, type="call_completed")
    kept = await app.api.notify(user, type="payment_received")
    frame = await socket.expect("notification")
    assert frame["payload"]["id"] == kept["id"]


@bounded
async def test_subscribe_after_unsubscribing_all_delivers_only_chosen_types(start_app):
    app = await start_app()
    user = new_user()
    socket = await connect(app, user)
    await socket.send({"type": "unsubscribe", "channels": ["all"]})
    assert (await socket.expect("subscribed"))["channels"] == []
    await socket.send({"type": "subscribe", "channels": ["call_escalation", "agent_alert"]})
    assert (await socket.expect("subscribed"))["channels"] == ["agent_alert", "call_escalation"]
    await app.api.notify(user, type="payment_received")
    wanted = await app.api.notify(user, type="agent_alert")
    assert (await socket.expect("notification"))["payload"]["id"] == wanted["id"]
    await socket.send({"type": "subscribe", "channels": ["all"]})
    assert (await socket.expect("subscribed"))["channels"] == ["all"]


@bounded
async def test_unknown_channel_is_an_error_naming_it(start_app):
    app = await start_app()
    socket = await connect(app, new_user())
    await socket.send({"type": "subscribe", "channels": ["payment_received", "lottery_won"]})
    error = await socket.expect("error")
    assert error["code"] == "unknown_channel"
    assert "lottery_won" in error["message"]


@bounded
async def test_mark_read_syncs_every_tab_of_the_user(start_app):
    app = await start_app()
    user = new_user()
    first = await connect(app, user)
    second = await connect(app, user)
    created = await app.api.notify(user)
    for tab in (first, second):
        assert (await tab.expect("notification"))["payload"]["id"] == created["id"]
        await tab.expect("unread_count")
    await first.send({"type": "mark_read", "notificationId": created["id"]})
    for tab in (first, second):
        assert await tab.receive() == {"type": "notification_read", "notificationId": created["id"]}
        unread = await tab.receive()
        assert unread["type"] == "unread_count" and unread["count"] == 0
    status, page = await app.api.get("/api/notifications", token(user))
    assert page["notifications"][0]["read"] is True


@bounded
async def test_mark_all_read_syncs_every_tab(start_app):
    app = await start_app()
    user = new_user()
    for _ in range(3):
        await app.api.notify(user)
    first = await connect(app, user)
    second = await connect(app, user)
    await first.send({"type": "mark_all_read"})
    for tab in (first, second):
        assert await tab.receive() == {"type": "notification_read", "notificationId": None, "all": True}
        assert (await tab.receive())["count"] == 0


@bounded
async def test_mark_read_of_another_users_notification_is_not_found(start_app):
    app = await start_app()
    owner, intruder = new_user(), new_user()
    created = await app.api.notify(owner)
    socket = await connect(app, intruder)
    await socket.send({"type": "mark_read", "notificationId": created["id"]})
    error = await socket.expect("error")
    assert error["code"] == "not_found"
    status, page = await app.api.get("/api/notifications", token(owner))
    assert page["notifications"][0]["read"] is False


@bounded
async def test_get_history_pages_newest_first(start_app):
    app = await start_app()
    user = new_user()
    created = [await app.api.notify(user, message=f"n{i}") for i in range(5)]
    socket = await connect(app, user)
    await socket.send({"type": "get_history", "limit": 2, "offset": 1})
    history = await socket.expect("history")
    assert [n["id"] for n in history["notifications"]] == [created[3]["id"], created[2]["id"]]
    assert history["total"] == 5 and history["hasMore"] is True


@pytest.mark.parametrize("frame, code", [
    ({"type": "get_history", "limit": 0}, "invalid_request"),
    ({"type": "get_history", "limit": 101}, "invalid_request"),
    ({"type": "get_history", "offset": -1}, "invalid_request"),
    ({"type": "get_history", "limit": "10"}, "invalid_request"),
    ({"type": "subscribe", "channels": "payment_received"}, "invalid_request"),
    ({"type": "mark_read", "notificationId": 42}, "invalid_request"),
    ({"type": "mark_read", "notificationId": "not-an-id"}, "not_found"),
    ({"type": "resume", "since": None}, "invalid_request"),
    ({"type": "refresh_token"}, "invalid_request"),
    ({"type": "teleport"}, "unknown_type"),
    ({"kind": "ping"}, "invalid_message"),
    ([1, 2, 3], "invalid_message"),
    ("{not json", "invalid_json"),
])
@bounded
async def test_bad_frame_gets_an_error_and_the_socket_stays_open(start_app, frame, code):
    app = await start_app()
    socket = await connect(app, new_user())
    await socket.send(frame if not isinstance(frame, str) else frame)
    error = await socket.receive()
    assert error["type"] == "error" and error["code"] == code and error["message"]
    await socket.send({"type": "ping"})
    assert (await socket.receive())["type"] == "pong"


@bounded
async def test_oversized_frame_closes_with_1009(start_app):
    app = await start_app(**{"server.max_message_bytes": 1024})
    socket = await connect(app, new_user())
    await socket.send({"type": "ping", "padding": "x" * 4096})
    assert await socket.closed() == 1009


# -- fan-out ----------------------------------------------------------------------------------------

@bounded
async def test_no_notification_reaches_another_user(start_app):
    app = await start_app(**{"rate_limits.notifications_per_minute": 0})
    users = [new_user() for _ in range(8)]
    sockets = {user: [await connect(app, user) for _ in range(2)] for user in users}
    rng = random.Random(7)
    sent: dict[str, list[str]] = {user: [] for user in users}
    for _ in range(60):
        user = rng.choice(users)
        created = await app.service.create({"userId": user, "type": "payment_received",
                                            "title": "t", "message": user})
        sent[user].append(created["id"])
    for user, tabs in sockets.items():
        for tab in tabs:
            received = []
            while len(received) < len(sent[user]):
                frame = await tab.expect("notification")
                assert frame["payload"]["message"] == user
                received.append(frame["payload"]["id"])
            assert received == sent[user]
            assert [f for f in await tab.quiet(0.2) if f["type"] == "notification"] == []


# -- unread counts ---------------------------------------------------------------------------------

@bounded
async def test_unread_count_follows_every_change(start_app):
    app = await start_app()
    user = new_user()
    socket = await connect(app, user)
    user_token = token(user)
    first = await app.api.notify(user, priority="critical")
    assert (await socket.expect("unread_count"))["byPriority"]["critical"] == 1
    second = await app.api.notify(user, priority="low")
    assert (await socket.expect("unread_count"))["count"] == 2
    await app.api.post(f"/api/notifications/{first['id']}/read", user_token)
    unread = await socket.expect("unread_count")
    assert unread["count"] == 1 and unread["byPriority"]["critical"] == 0
    await app.api.delete(f"/api/notifications/{second['id']}", user_token)
    assert (await socket.expect("notification_deleted"))["notificationId"] == second["id"]
    assert (await socket.expect("unread_count"))["count"] == 0


@bounded
async def test_a_live_socket_keeps_nothing_of_its_handshake_but_the_path(start_app):
    app = await start_app()
    user = new_user()
    socket = await connect(app, user)
    [handler] = app.heartbeat.sockets()
    assert handler.request.uri == handler.request.path == "/ws/notifications"
    assert not handler.request.query_arguments and not handler.request.arguments
    assert not handler.request.headers, "the token and the other headers are not kept"
    await socket.send({"type": "ping"})
    await socket.expect("pong")


# -- token lifetime --------------------------------------------------------------------------------

@bounded
async def test_token_expiry_warns_then_closes_with_4003(start_app):
    app = await start_app(**{"websocket.token_expiry_warning_seconds": 1})
    user = new_user()
    socket = await Socket.open(app, token(user, ttl=2))
    await socket.expect("connected")
    warning = await socket.expect("token_expiring", timeout=3)
    assert warning["expiresAt"].endswith("Z")
    assert await socket.closed(timeout=4) == 4003


@bounded
async def test_refreshed_token_keeps_the_socket_open(start_app):
    app = await start_app(**{"websocket.token_expiry_warning_seconds": 1})
    user = new_user()
    socket = await Socket.open(app, token(user, ttl=2))
    await socket.expect("connected")
    await socket.expect("token_expiring", timeout=3)
    await socket.send({"type": "refresh_token", "token": token(user, ttl=60)})
    refreshed = await socket.expect("token_refreshed")
    assert refreshed["expiresAt"].endswith("Z")
    await asyncio.sleep(2)
    await socket.send({"type": "ping"})
    assert (await socket.expect("pong"))["type"] == "pong"
    assert socket.close_code is None


@bounded
async def test_refresh_with_another_users_token_closes_with_4002(start_app):
    app = await start_app()
    socket = await connect(app, new_user())
    await socket.send({"type": "refresh_token", "token": token(new_user())})
    assert await socket.closed() == 4002


@bounded
async def test_refresh_with_invalid_token_is_an_error_and_keeps_the_socket(start_app):
    app = await start_app()
    user = new_user()
    socket = await connect(app, user)
    await socket.send({"type": "refresh_token", "token": token(user, secret="x" * 40)})
    error = await socket.expect("error")
    assert error["code"] == "token_invalid"
    await socket.send({"type": "ping"})
    await socket.expect("pong")


# -- keepalive, slow consumers, shutdown -----------------------------------------------------------

@bounded
async def test_dead_client_is_dropped_by_keepalive(start_app):
    app = await start_app(**{"websocket.ping_interval_seconds": 1, "websocket.ping_timeout_seconds": 1})
    user = new_user()
    reader, writer = await raw_websocket(app, user)
    await wait_until(lambda: app.hub.connections_of(user) == 1, 5)
    await wait_until(lambda: app.hub.connections_of(user) == 0, 8)
    writer.close()


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One unmasked frame from the server: (opcode, payload)."""
    head = await reader.readexactly(2)
    length = head[1] & 0x7F
    if length == 126:
        length = struct.unpack("!H", await reader.readexactly(2))[0]
    elif length == 127:
        length = struct.unpack("!Q", await reader.readexactly(8))[0]
    return head[0] & 0x0F, await reader.readexactly(length)


def masked_pong(payload: bytes) -> bytes:
    mask = os.urandom(4)
    return bytes([0x8A, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


@bounded
async def test_a_client_answering_pings_is_pinged_each_interval_and_kept(start_app):
    app = await start_app(**{"websocket.ping_interval_seconds": 1, "websocket.ping_timeout_seconds": 1})
    user = new_user()
    reader, writer = await raw_websocket(app, user)
    await reader.readuntil(b"\r\n\r\n")
    loop = asyncio.get_running_loop()
    started, pings, answering = loop.time(), [], [True]
    closed = loop.create_future()

    async def client() -> None:
        while True:
            opcode, payload = await read_frame(reader)
            if opcode == 0x9:
                pings.append(loop.time() - started)
                if answering[0]:
                    writer.write(masked_pong(payload))
            elif opcode == 0x8:
                closed.set_result((loop.time(), payload))
                return

    reading = asyncio.ensure_future(client())
    await asyncio.sleep(4.6)
    assert 3 <= len(pings) <= 5, pings  # one a second, the first a second after going live
    assert all(0.7 <= later - earlier <= 1.3 for earlier, later in zip(pings, pings[1:])), pings
    assert app.hub.connections_of(user) == 1
    answering[0], stopped = False, loop.time()
    closed_at, payload = await asyncio.wait_for(closed, 6)
    assert closed_at - stopped <= 2.6, "the next ping, then its timeout"
    assert payload[2:] == b"ping timed out"
    writer.close()
    await wait_until(lambda: app.hub.connections_of(user) == 0, 6)
    assert len(app.heartbeat) == 0
    await reading


@bounded
async def test_slow_consumer_is_closed_while_others_keep_receiving(start_app, caplog):
    app = await start_app(**{"rate_limits.notifications_per_minute": 0,
                             "websocket.max_queued_messages": 50,
                             "websocket.max_buffered_bytes": 200_000})
    slow, healthy = new_user(), new_user()
    reader, writer = await raw_websocket(app, slow)
    await wait_until(lambda: app.hub.connections_of(slow) == 1, 5)
    other = await connect(app, healthy)
    padding = {"blob": "x" * 15_000}
    for index in range(600):
        await app.service.create({"userId": slow, "type": "payment_received", "title": "t",
                                  "message": f"m{index}", "data": padding})
        if app.hub.connections_of(slow) == 0:
            break
    assert app.hub.connections_of(slow) == 0, "the slow consumer was never dropped"
    for index in range(20):
        await app.service.create({"userId": slow, "type": "payment_received", "title": "t",
                                  "message": f"after {index}", "data": padding})
    assert sum("slow consumer" in record.getMessage() for record in caplog.records) == 1
    created = await app.api.notify(healthy)
    assert (await other.expect("notification"))["payload"]["id"] == created["id"]
    writer.close()


@bounded
async def test_shutdown_closes_sockets_with_1001(start_app):
    app = await start_app()
    socket = await connect(app, new_user())
    await app.stop()
    assert await socket.closed() == 1001


@bounded
async def test_token_expired_within_the_leeway_is_refused_at_connect_with_4002(start_app):
    app = await start_app(**{"auth.leeway_seconds": 60})
    socket = await Socket.open(app, token(new_user(), ttl=-5))
    assert await socket.closed() == 4002


@bounded
async def test_marking_an_already_read_notification_is_still_acknowledged(start_app):
    app = await start_app()
    user = new_user()
    created = await app.api.notify(user)
    await app.api.post(f"/api/notifications/{created['id']}/read", token(user))
    socket = await connect(app, user)
    await socket.send({"type": "mark_read", "notificationId": created["id"]})
    assert await socket.receive() == {"type": "notification_read", "notificationId": created["id"]}
    assert (await socket.receive())["count"] == 0
    await socket.send({"type": "mark_all_read"})
    assert (await socket.receive())["all"] is True


@bounded
async def test_socket_token_never_reaches_the_access_log(start_app, caplog):
    app = await start_app()
    secret_token = token(new_user())
    with caplog.at_level("INFO"):
        socket = await Socket.open(app, secret_token)
        await socket.expect("connected")
        socket.close()
        await app.api.get(f"/healthz?token={secret_token}")
        await asyncio.sleep(0.2)
    lines = [record.getMessage() for record in caplog.records]
    assert any(line.startswith("GET /healthz 200") for line in lines), lines
    assert any(line.startswith("WS /ws/notifications 101") for line in lines), lines
    assert not any(secret_token in line for line in lines)


@bounded
async def test_an_alert_to_many_sockets_reaches_each_once_in_order_across_flushes(start_app):
    """200 sockets (two tabs each of 100 users) are flushed in groups of 32 during one
    fan-out: each still gets its own notification and count, in order, once, for two alerts."""
    app = await start_app(**{"rate_limits.notifications_per_minute": 0})
    users = [new_user("ops") for _ in range(100)]
    sockets = {}
    for user in users:
        sockets[user] = [await connect(app, user) for _ in range(2)]
    answers = []
    for run in range(2):
        status, body = await post_event(app, "system.alert", {
            "userIds": users, "severity": "warning", "message": f"Queue backlog {run}"})
        assert status == 202, body
        answers.append(body["notifications"])
    for index, user in enumerate(users):
        for tab in sockets[user]:
            frames = [await tab.receive() for _ in range(4)]
            assert [(frame["type"], frame.get("payload", {}).get("id"), frame.get("count"))
                    for frame in frames] == [
                ("notification", answers[0][index], None), ("unread_count", None, 1),
                ("notification", answers[1][index], None), ("unread_count", None, 2)]

    async def nothing_more(tab: Socket) -> None:
        with pytest.raises(TimeoutError):
            await tab.receive(timeout=0.3)
        tab.connection.close()

    await asyncio.gather(*(nothing_more(tab) for tabs in sockets.values() for tab in tabs))


@bounded
async def test_a_closed_socket_is_freed_without_waiting_for_the_cycle_collector(start_app):
    """Found by the soak: the handler and its session referred to each other, so every closed
    socket (its request, headers, session and outbox) waited for a full cycle collection,
    which the server's tuned collector makes rare: a churning worker held thousands."""
    import gc

    from mojavox_notify.handlers.websocket import NotificationSocket

    app = await start_app()
    gc.collect()
    gc.disable()
    try:
        user = new_user()
        for _ in range(10):
            socket = await connect(app, user)
            socket.close()
            await socket.closed()
        await asyncio.sleep(0.3)  # the server's on_close for the last one
        left = [o for o in gc.get_objects() if isinstance(o, NotificationSocket) and o.ws_connection is None]
        assert left == [], f"{len(left)} closed sockets wait for the cycle collector"
    finally:
        gc.enable()
