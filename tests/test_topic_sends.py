"""A draft to a topic: one notification per member, each filtered by that member's settings,
exactly once to each member's sockets (on one instance and across two on one Redis), and once
per Idempotency-Key or event id however often it is retried."""

from __future__ import annotations

import asyncio

import pytest

from mojavox_notify import service as service_module, tenants
from mojavox_notify.store import MAX_TOPIC_MEMBERS
from tests.support.engines import both_engines
from tests.support.sockets import Socket
from tests.support.tokens import new_user, token

bounded = pytest.mark.timeout(90)
SERVICE = token("topic-sender", ["service"])


async def members(app, topic: str, users: list[str], tenant: str = tenants.DEFAULT) -> None:
    await app.store.update_topic(tenants.key(tenant, topic), [tenants.key(tenant, u) for u in users],
                                 [], MAX_TOPIC_MEMBERS)


def draft(topic: str, **fields) -> dict:
    return {"topic": topic, "type": "system_alert", "title": "Dialer 7 is down",
            "message": "Calls on dialer 7 are failing", **fields}


async def connected(app, user: str, **claims) -> Socket:
    socket = await Socket.open(app, token(user, **claims))
    await socket.expect("connected")
    return socket


async def notifications(socket: Socket, seconds: float = 0.5) -> list[str]:
    return [frame["payload"]["id"] for frame in await socket.quiet(seconds)
            if frame["type"] == "notification"]


@both_engines
@bounded
async def test_one_notification_per_member_filtered_by_each_members_settings(start_app):
    app = await start_app()
    team = [new_user("supervisor") for _ in range(4)]
    await members(app, "north-supervisors", team)
    status, _ = await app.api.put("/api/notifications/settings", token(team[0]),
                                  {"channels": {"system_alert": {"enabled": False}}})
    assert status == 200
    sockets = [await connected(app, user) for user in team]
    outsider = await connected(app, new_user("collector"))

    status, answer = await app.api.post("/api/notifications", SERVICE, draft("north-supervisors"))
    assert status == 202 and answer == {"topic": "north-supervisors", "created": 3, "muted": 1}
    received = [await notifications(socket) for socket in sockets]
    assert [len(ids) for ids in received] == [0, 1, 1, 1]
    assert len({ids[0] for ids in received[1:]}) == 3  # one notification each, of their own
    assert await notifications(outsider, 0.2) == []

    status, answer = await app.api.post("/api/notifications", SERVICE,
                                        draft("north-supervisors", priority="critical"))
    assert answer == {"topic": "north-supervisors", "created": 4, "muted": 0}  # never muted
    for socket in sockets + [outsider]:
        socket.close()


@bounded
async def test_an_unknown_or_empty_topic_creates_nothing_and_says_so(start_app):
    app = await start_app()
    status, answer = await app.api.post("/api/notifications", SERVICE, draft("nobody-here"))
    assert status == 202 and answer == {"topic": "nobody-here", "created": 0, "muted": 0}
    for bad, field in (({"topic": "-bad"}, "topic"), ({"topic": "t", "userId": "u"}, "userId"),
                       ({}, "userId")):
        body = {key: value for key, value in draft("x").items() if key != "topic"} | bad
        status, error = await app.api.post("/api/notifications", SERVICE, body)
        assert status == 400 and error["error"]["message"].startswith(field), error


@both_engines
@bounded
async def test_a_retried_topic_send_creates_nothing_twice(start_app):
    app = await start_app()
    team = [new_user("supervisor") for _ in range(3)]
    await members(app, "escalations", team)
    headers = {"Idempotency-Key": "send-escalations-1"}
    first = await app.api.post("/api/notifications", SERVICE, draft("escalations"), headers=headers)
    again = await app.api.post("/api/notifications", SERVICE, draft("escalations"), headers=headers)
    assert first == (202, {"topic": "escalations", "created": 3, "muted": 0})
    assert again == (202, {"topic": "escalations", "created": 3, "muted": None})
    assert app.api.last_headers.get("Idempotent-Replayed") == "true"
    event = {"type": "system.alert", "id": "dialer-7-down",
             "data": {"topic": "escalations", "severity": "critical", "message": "Dialer 7 is down"}}
    created = await app.api.post("/api/events", SERVICE, event)
    repeated = await app.api.post("/api/events", SERVICE, event)
    assert created[0] == repeated[0] == 202 and len(created[1]["notifications"]) == 3
    assert repeated[1] == created[1]
    for user in team:
        status, page = await app.api.get("/api/notifications", token(user))
        assert page["total"] == 2  # one of the REST send, one of the event


@bounded
async def test_topics_are_per_tenant(start_app):
    app = await start_app()
    await members(app, "supervisors", ["alice"], tenant="north")
    await members(app, "supervisors", ["alice", "bob"], tenant="south")
    north_alice = await connected(app, "alice", tenant="north")
    south_alice = await connected(app, "alice", tenant="south")
    status, answer = await app.api.post("/api/notifications", token("svc", ["service"], tenant="north"),
                                        draft("supervisors"))
    assert answer["created"] == 1
    assert len(await notifications(north_alice)) == 1 and await notifications(south_alice, 0.2) == []
    status, answer = await app.api.post("/api/notifications", SERVICE,
                                        draft("supervisors", tenant="south"))
    assert answer["created"] == 2
    assert len(await notifications(south_alice)) == 1 and await notifications(north_alice, 0.2) == []
    north_alice.close()
    south_alice.close()


@bounded
async def test_a_topic_send_reaches_each_member_once_across_two_instances(start_app, redis_overrides):
    unlimited = {"rate_limits.notifications_per_minute": 0, "rate_limits.requests_per_minute": 0}
    first = await start_app(**redis_overrides, **unlimited)
    second = await start_app(**redis_overrides, **unlimited)
    team = [new_user("supervisor") for _ in range(6)]
    await members(first, "floor", team)
    sockets = [await connected(first if index % 2 else second, user) for index, user in enumerate(team)]
    sockets += [await connected(second if index % 2 else first, user) for index, user in enumerate(team)]
    for _ in range(3):
        status, answer = await first.api.post("/api/notifications", SERVICE, draft("floor"))
        assert answer["created"] == 6
    await asyncio.sleep(0.3)
    for index, socket in enumerate(sockets):
        ids = await notifications(socket, 1.0)
        status, page = await first.api.get("/api/notifications?limit=100", token(team[index % 6]))
        assert sorted(ids) == sorted(n["id"] for n in page["notifications"]) and len(ids) == 3
        socket.close()


@both_engines
@bounded
async def test_a_topic_send_without_a_key_goes_in_chunks_each_member_once(start_app, monkeypatch):
    monkeypatch.setattr(service_module, "TOPIC_CHUNK", 2)
    app = await start_app()
    team = [new_user("agent") for _ in range(5)]
    await members(app, "night-shift", team)
    sockets = [await connected(app, user) for user in team]
    status, answer = await app.api.post("/api/notifications", SERVICE, draft("night-shift"))
    assert answer == {"topic": "night-shift", "created": 5, "muted": 0}
    for user, socket in zip(team, sockets):
        ids = await notifications(socket)
        status, page = await app.api.get("/api/notifications", token(user))
        assert len(ids) == 1 and ids == [n["id"] for n in page["notifications"]]
        socket.close()
