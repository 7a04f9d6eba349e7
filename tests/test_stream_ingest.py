"""Events from a Redis stream (issue 26), in process: a real redis-server, both storage engines.

Each test has a stream of its own (a fresh name on the shared redis-server) and an app that
consumes it; entries are added with XADD as a producer would.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
import redis.asyncio as aioredis

from mojavox_notify.streams import StreamEntry, StreamIntake

from .support.api import notifications_of
from .support.engines import both_engines
from .support.sockets import Socket
from .support.tokens import new_user, token

bounded = pytest.mark.timeout(60)
# Quick takeovers and retries, so a test waits seconds, not the production half-minute.
QUICK = {"claim_idle_seconds": 0.5, "block_ms": 100, "batch": 50}


def payment(user: str, event_id: str | None = None, amount: int = 2450) -> dict:
    event = {"type": "payment.received",
             "data": {"userId": user, "amount": amount, "accountId": "AC-2024-1234",
                      "debtorName": "John Smith"}}
    if event_id is not None:
        event["id"] = event_id
    return event


@pytest.fixture
def stream_name() -> str:
    return f"test:{uuid.uuid4().hex[:12]}:events"


@pytest.fixture
async def producer(redis_server):
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
def start_consumer(start_app, redis_overrides, stream_name):
    """`await start_consumer(**stream_options)` → an app consuming `stream_name`."""

    async def start(settings_overrides: dict | None = None, **options):
        stream = {"stream": stream_name, **QUICK, **options}
        return await start_app(**redis_overrides, **{
            "rate_limits.notifications_per_minute": 0, "ingest.redis_streams": [stream],
            **(settings_overrides or {})})

    return start


async def add(producer, stream: str, event: dict | str, **fields) -> str:
    body = event if isinstance(event, str) else json.dumps(event)
    return (await producer.xadd(stream, {"event": body, **fields})).decode()


async def eventually(condition, timeout: float = 15.0, interval: float = 0.05):
    """`await condition()` until it is truthy (its value), an AssertionError after `timeout`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await condition()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not met within {timeout:g} s (last: {value!r})")
        await asyncio.sleep(interval)


async def settled(producer, stream: str, group: str = "mojavox-notify") -> bool:
    """Whether the group has read every entry and acknowledged all it read."""
    groups = {g["name"].decode(): g for g in await producer.xinfo_groups(stream)}
    return group in groups and groups[group]["lag"] == 0 and groups[group]["pending"] == 0


def dead_letters(entries: list) -> list[dict]:
    return [{key.decode(): value.decode() for key, value in fields.items()} for _, fields in entries]


@bounded
@both_engines
async def test_an_entry_becomes_its_notifications_on_the_socket_and_is_acknowledged_after(
        start_consumer, producer, stream_name):
    app = await start_consumer()
    user = new_user()
    socket = await Socket.open(app, token(user))
    await socket.expect("connected")
    await add(producer, stream_name, payment(user, new_user("pay")))
    frame = await socket.expect("notification", timeout=10)
    assert frame["payload"]["message"] == "John Smith paid $2,450.00 on account #AC-2024-1234"
    await eventually(lambda: settled(producer, stream_name))
    assert len(await notifications_of(app, user)) == 1
    socket.close()


@bounded
@both_engines
async def test_an_entry_delivered_twice_creates_its_notifications_once(
        start_app, start_consumer, producer, stream_name):
    """The same event id twice in the stream, twice in one batch, and a retried XADD of an
    entry without id (the same entry handed in twice) are each handled once."""
    app = await start_consumer()
    user = new_user()
    event_id = new_user("pay")
    for _ in range(3):
        await add(producer, stream_name, payment(user, event_id))
    await eventually(lambda: settled(producer, stream_name))
    assert len(await notifications_of(app, user)) == 1
    intake = StreamIntake(app.ingest)
    entry = StreamEntry("1-0", json.dumps(payment(user, amount=5)), None, 1)
    first = await intake.handle("redis:elsewhere", [entry, entry])
    again = await intake.handle("redis:elsewhere", [entry])
    assert [verdict.kind for verdict in first + again] == ["stored"] * 3
    assert [n["data"]["amount"] for n in await notifications_of(app, user)] == [5, 2450]


@bounded
async def test_an_entry_without_id_is_idempotent_by_its_entry_id(start_consumer, producer,
                                                                 stream_name):
    app = await start_consumer()
    user = new_user()
    entry_id = await add(producer, stream_name, payment(user))
    await eventually(lambda: settled(producer, stream_name))
    record = await app.store.event(f"event:redis:{stream_name}/{entry_id}")
    assert record is not None and record["state"] == "done"
    assert record["notifications"] == [n["id"] for n in await notifications_of(app, user)]
