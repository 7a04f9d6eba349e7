"""Issue 26's kill test: two real `serve` processes consume one Redis stream while one of them is
killed with SIGKILL mid-stream and started again. Every event's notification is stored once and
reaches its user's socket once: 0 lost, 0 doubled.

On the embedded engine (both processes share one SQLite file, as processes on one host may):
10,000 events over the MongoDB engine's test server (nx-27017) take minutes, and the
exactly-once mechanism under test (claims in one write, stored under them) passes the same
store contract tests on both engines (tests/test_store_contract.py).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import uuid
from types import SimpleNamespace

import pytest
import redis.asyncio as aioredis

from .support.servers import ServeProcess
from .support.sockets import SocketTally
from .support.tokens import new_user

EVENTS = 10_000
USERS = 20
KILL_AFTER = 3_000  # entries read by the group when one process is killed


def payment(user: str, event_id: str) -> str:
    return json.dumps({"type": "payment.received", "id": event_id,
                       "data": {"userId": user, "amount": 100, "accountId": "AC-1",
                                "debtorName": "John Smith"}})


async def group_state(producer, stream: str) -> dict:
    groups = await producer.xinfo_groups(stream)
    return groups[0] if groups else {"entries-read": 0, "lag": None, "pending": None}


@pytest.mark.timeout(150)
async def test_ten_thousand_events_with_one_of_two_consumers_killed_are_each_delivered_once(
        tmp_path, redis_server):
    stream = f"test:{uuid.uuid4().hex[:12]}:events"
    shared = {"storage.url": f"sqlite:///{tmp_path / 'notify.db'}",
              "redis.url": redis_server.url, "redis.key_prefix": f"test-{uuid.uuid4().hex[:12]}",
              "rate_limits.notifications_per_minute": 0,
              "ingest.redis_streams": [{"stream": stream, "batch": 200, "block_ms": 200,
                                        "claim_idle_seconds": 1}]}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    survivor = ServeProcess(tmp_path / "a", **shared)
    victim = ServeProcess(tmp_path / "b", **shared)
    await asyncio.to_thread(survivor.start)
    await asyncio.to_thread(victim.start)
    producer = aioredis.Redis.from_url(redis_server.url)
    try:
        users = [new_user() for _ in range(USERS)]
        place = SimpleNamespace(port=survivor.port,
                                settings=SimpleNamespace(server=SimpleNamespace(
                                    ws_path="/ws/notifications")))
        tally = SocketTally()  # every notification id each user's socket receives
        await tally.open(place, users)
        received = tally.seen

        # All 10,000 at once (faster than two consumers read them), the victim killed once
        # the group has read KILL_AFTER: the rest is still to read, some of it in its hands.
        async with producer.pipeline(transaction=False) as pipeline:
            for n in range(EVENTS):
                pipeline.xadd(stream, {"event": payment(users[n % USERS], f"{stream}-{n}")})
            await pipeline.execute()
        deadline = time.monotonic() + 30
        while (await group_state(producer, stream))["entries-read"] < KILL_AFTER:
            assert time.monotonic() < deadline, "the consumers never read 3,000 entries"
            await asyncio.sleep(0.02)
        victim.kill()
        before = await group_state(producer, stream)
        assert before["lag"] > 0, "killed mid-stream, not after it"
        await asyncio.sleep(1)
        await asyncio.to_thread(victim.start)

        deadline = time.monotonic() + 90
        while True:
            state = await group_state(producer, stream)
            if state["lag"] == 0 and state["pending"] == 0:
                break
            assert time.monotonic() < deadline, f"not consumed in time: {state}"
            await asyncio.sleep(0.2)

        await tally.sentinels_through(survivor)  # what each socket missed, fetched

        assert await producer.xlen(f"{stream}:dead") == 0, "nothing was given up"
        with sqlite3.connect(tmp_path / "notify.db") as connection:
            rows = connection.execute(
                "SELECT event_id, user_id, id FROM notifications WHERE event_id IS NOT NULL"
            ).fetchall()
        event_ids = [event_id for event_id, _, _ in rows]
        assert len(event_ids) == len(set(event_ids)), "0 doubled in storage"
        assert set(event_ids) == {f"event:{stream}-{n}" for n in range(EVENTS)}, "0 lost in storage"
        for user in users:
            stored = {notification_id for _, owner, notification_id in rows if owner == user}
            assert len(received[user]) == len(set(received[user])), f"{user}: doubled on the socket"
            assert set(received[user]) == stored, f"{user}: the socket got what is stored"
        tally.close()
    finally:
        await producer.aclose()
        survivor.stop()
        victim.stop()
