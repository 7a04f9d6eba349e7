"""No lost and no repeated notification across reconnects, even while notifications are created,
on both storage engines."""

from __future__ import annotations

import asyncio

import pytest

from mojavox_notify.errors import StorageUnavailableError

from .support.engines import both_engines
from .support.sockets import Socket
from .support.tokens import new_user, token

bounded = pytest.mark.timeout(90)
pytestmark = both_engines


async def notifications_until_resumed(socket: Socket) -> tuple[list[dict], dict]:
    received = []
    while True:
        frame = await socket.receive()
        assert frame is not None, "socket closed during recovery"
        if frame["type"] == "notification":
            received.append(frame["payload"])
        elif frame["type"] == "resumed":
            return received, frame


@bounded
async def test_reconnect_with_since_gets_exactly_the_missed_ones_in_order(start_app):
    app = await start_app()
    user = new_user()
    socket = await Socket.open(app, token(user))
    await socket.expect("connected")
    seen = await app.api.notify(user, message="seen")
    assert (await socket.expect("notification"))["payload"]["id"] == seen["id"]
    socket.close()
    missed = [await app.api.notify(user, message=f"missed {i}") for i in range(3)]

    again = await Socket.open(app, token(user), since=seen["id"])
    assert (await again.receive())["type"] == "connected"
    received, resumed = await notifications_until_resumed(again)
    assert [n["id"] for n in received] == [n["id"] for n in missed]
    assert resumed == {"type": "resumed", "count": 3, "hasMore": False, "lastId": missed[-1]["id"]}
    live = await app.api.notify(user, message="live")
    assert (await again.expect("notification"))["payload"]["id"] == live["id"]
    assert [f for f in await again.quiet(0.3) if f["type"] == "notification"] == []


async def produce(app, user: str, count: int, pause: float, created: list[str],
                  mark_read: bool = False) -> None:
    """Create `count` notifications for `user`, `pause` seconds apart, appending each id to
    `created` as it is stored; with `mark_read`, each is read at once (change messages in
    between)."""
    for index in range(count):
        payload = await app.service.create({"userId": user, "type": "agent_alert",
                                            "title": "t", "message": f"#{index}"})
        created.append(payload["id"])
        if mark_read:
            await app.service.mark_read(user, payload["id"])
        await asyncio.sleep(pause)


@bounded
async def test_nothing_is_lost_or_repeated_while_notifications_are_created_during_reconnects(start_app):
    app = await start_app(**{"rate_limits.notifications_per_minute": 0})
    user = new_user()
    anchor = await app.api.notify(user, message="anchor")
    created: list[str] = []
    producing = asyncio.ensure_future(produce(app, user, 120, 0.003, created))
    received: list[str] = []
    last_seen = anchor["id"]
    reconnects = 0
    while not (producing.done() and len(received) >= len(created)):
        socket = await Socket.open(app, token(user), since=last_seen)
        reconnects += 1
        deadline = asyncio.get_running_loop().time() + 0.1
        while asyncio.get_running_loop().time() < deadline:
            try:
                frame = await socket.receive(timeout=0.02)
            except asyncio.TimeoutError:
                continue
            assert frame is not None and frame["type"] != "error", frame
            if frame["type"] == "notification":
                received.append(frame["payload"]["id"])
                last_seen = frame["payload"]["id"]
        socket.close()
    await producing
    assert reconnects > 3
    assert received == created


@bounded
async def test_sockets_opened_while_notifications_are_created_get_every_later_one_once(start_app):
    app = await start_app(**{"rate_limits.notifications_per_minute": 0})
    user = new_user()
    created: list[str] = []
    producing = asyncio.ensure_future(produce(app, user, 80, 0.005, created, mark_read=True))
    sockets = []
    while not producing.done() and len(sockets) < 15:  # websocket.max_sockets_per_user: 20
        socket = await Socket.open(app, token(user))
        first = await socket.receive()
        assert first["type"] == "connected", first  # before any other frame
        sockets.append(socket)
        await asyncio.sleep(0.01)
    await producing
    assert len(sockets) > 3
    for socket in sockets:
        ids = [f["payload"]["id"] for f in await socket.quiet(0.3) if f["type"] == "notification"]
        assert ids == created[len(created) - len(ids):], "each socket gets every later one, once"
        socket.close()


@bounded
async def test_resume_message_replays_what_was_missed(start_app):
    app = await start_app()
    user = new_user()
    first = await app.api.notify(user)
    missed = [await app.api.notify(user, message=f"m{i}") for i in range(2)]
    socket = await Socket.open(app, token(user))
    await socket.expect("connected")
    await socket.send({"type": "resume", "since": first["id"]})
    received, resumed = await notifications_until_resumed(socket)
    assert [n["id"] for n in received] == [n["id"] for n in missed]
    assert resumed["count"] == 2


@bounded
async def test_since_of_another_user_is_refused_without_leaking(start_app):
    app = await start_app()
    owner, other = new_user(), new_user()
    foreign = await app.api.notify(owner)
    socket = await Socket.open(app, token(other), since=foreign["id"])
    await socket.expect("connected")
    error = await socket.expect("error")
    assert error["code"] == "since_not_found"
    assert [f for f in await socket.quiet(0.3) if f["type"] == "notification"] == []


@bounded
async def test_recovery_is_capped_to_the_newest_with_has_more(start_app):
    app = await start_app(**{"websocket.resume_limit": 3, "rate_limits.notifications_per_minute": 0})
    user = new_user()
    seen = await app.api.notify(user)
    missed = [await app.api.notify(user, message=f"m{i}") for i in range(5)]
    socket = await Socket.open(app, token(user), since=seen["id"])
    await socket.expect("connected")
    received, resumed = await notifications_until_resumed(socket)
    assert [n["id"] for n in received] == [n["id"] for n in missed[-3:]]
    assert resumed["hasMore"] is True


@bounded
async def test_two_instances_writing_for_one_user_keep_a_gap_free_sequence(start_app, make_settings):
    settings = make_settings(**{"rate_limits.notifications_per_minute": 0})
    first = await start_app(settings=settings)
    second = await start_app(settings=settings)
    user = new_user()

    async def create(app, count):
        return [await app.service.create({"userId": user, "type": "agent_alert", "title": "t",
                                          "message": "m"}) for _ in range(count)]

    await asyncio.gather(create(first, 25), create(second, 25))
    documents = await first.store.after(user, 0, 100)
    assert [d["seq"] for d in documents] == list(range(1, 51))
    assert (await first.store.state(user)).seq == 50

    # A socket on the first instance also gets what the second one created: sequence gaps in
    # its live stream are filled from storage.
    socket = await Socket.open(first, token(user))
    await socket.expect("connected")
    from_second = await second.service.create({"userId": user, "type": "agent_alert",
                                               "title": "t", "message": "from second"})
    from_first = await first.service.create({"userId": user, "type": "agent_alert",
                                             "title": "t", "message": "from first"})
    got = [(await socket.expect("notification"))["payload"]["id"] for _ in range(2)]
    assert got == [from_second["id"], from_first["id"]]


@bounded
async def test_protocol_walkthrough_from_the_readme(start_app):
    """The socket protocol page's example session (docs/socket-protocol.md): filter, receive,
    read in one tab, miss three, recover."""
    app = await start_app()
    user = new_user("supervisor")
    tab_one = await Socket.open(app, token(user))
    tab_two = await Socket.open(app, token(user))
    for tab in (tab_one, tab_two):
        await tab.expect("connected")
    await tab_one.send({"type": "unsubscribe", "channels": ["call_completed"]})
    await tab_one.expect("subscribed")
    escalation = await app.api.notify(user, type="call_escalation", priority="critical")
    for tab in (tab_one, tab_two):
        assert (await tab.expect("notification"))["payload"]["id"] == escalation["id"]
    await tab_one.send({"type": "mark_read", "notificationId": escalation["id"]})
    assert (await tab_two.expect("notification_read"))["notificationId"] == escalation["id"]
    tab_one.close()
    tab_two.close()
    missed = [await app.api.notify(user, message=f"missed {i}") for i in range(3)]
    back = await Socket.open(app, token(user), since=escalation["id"])
    await back.expect("connected")
    received, _ = await notifications_until_resumed(back)
    assert [n["id"] for n in received] == [n["id"] for n in missed]


@bounded
async def test_resume_with_unknown_since_is_since_not_found(start_app):
    app = await start_app()
    user = new_user()
    foreign = await app.api.notify(new_user())
    socket = await Socket.open(app, token(user))
    await socket.expect("connected")
    for since in (foreign["id"], "0" * 24, "garbage"):
        await socket.send({"type": "resume", "since": since})
        error = await socket.expect("error")
        assert error["code"] == "since_not_found"


@bounded
async def test_a_storage_failure_while_looking_up_since_closes_1013_instead_of_skipping_the_backlog(
        start_app):
    app = await start_app()
    user = new_user()
    seen = await app.api.notify(user)
    missed = await app.api.notify(user)
    real_get = app.store.get
    failing = [StorageUnavailableError("storage did not answer within 1 s (injected)")]

    async def get(*args, **kwargs):
        if failing:
            raise failing.pop()
        return await real_get(*args, **kwargs)

    app.store.get = get
    refused = await Socket.open(app, token(user), since=seen["id"])
    assert await refused.closed() == 1013, "retry later, not live past what it missed"
    resumed = await Socket.open(app, token(user), since=seen["id"])
    received, _ = await notifications_until_resumed(resumed)
    assert [n["id"] for n in received] == [missed["id"]]
