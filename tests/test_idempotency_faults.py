"""Retries after a write that failed late: what was stored decides, never whether a call raised.

The audit's reproduction: an insert stalled past the write timeout (a disk stall, another
process holding the lock) answers 503, commits afterwards, and the client's retry must then
replay the first result instead of creating the whole alert again. Faults are injected at the
storage boundary: a stall inside the embedded engine's write transaction, on its writer thread;
for MongoDB, the driver's answer lost after the server applied a write.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import NetworkTimeout

from mojavox_notify.store.sqlite import insertion as sqlite_engine

from .support.api import notifications_of, post_event
from .support.tokens import SERVICE, new_user, token

bounded = pytest.mark.timeout(60)
STALL_SECONDS = 2.0
# A write gives up after operation_timeout + busy_timeout: 1 s, well before the stall ends.
QUICK_TIMEOUTS = {"storage.operation_timeout_seconds": 0.5, "storage.busy_timeout_seconds": 0.5,
                  "rate_limits.notifications_per_minute": 0}


class StalledWrite:
    """The next write transaction of the embedded engine on its writer thread stalls inside the
    transaction, after it began and before it wrote, for STALL_SECONDS; `over` is set when it
    has gone on."""

    def __init__(self, monkeypatch) -> None:
        self.over = threading.Event()
        self._armed = True
        original = sqlite_engine._insert_rows

        def stalling(connection, *args):
            if self._armed and threading.current_thread() is not threading.main_thread():
                self._armed = False
                time.sleep(STALL_SECONDS)
                try:
                    return original(connection, *args)
                finally:
                    self.over.set()
            return original(connection, *args)

        monkeypatch.setattr(sqlite_engine, "_insert_rows", stalling)

    async def ended(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.over.wait, 10)
        await asyncio.sleep(0.2)  # its commit, right after


def alert(users: list[str]) -> dict:
    return {"userIds": users, "severity": "critical", "message": "Dialer down on floor 3"}


@bounded
async def test_an_alert_that_commits_after_its_503_is_replayed_by_the_retry_not_duplicated(
        start_app, monkeypatch):
    app = await start_app(**QUICK_TIMEOUTS)
    users = [new_user("ops") for _ in range(100)]
    stall = StalledWrite(monkeypatch)
    status, body = await post_event(app, "system.alert", alert(users), "alert-42")
    assert status == 503 and body["error"]["code"] == "storage_unavailable"
    await stall.ended()

    again, replay = await post_event(app, "system.alert", alert(users), "alert-42")
    assert again == 202
    assert len(replay["notifications"]) == 100
    stored = [[n["id"] for n in await notifications_of(app, user)] for user in users]
    assert [len(ids) for ids in stored] == [1] * 100, "each user has the alert once"
    assert sorted(ids[0] for ids in stored) == sorted(replay["notifications"])


@bounded
async def test_an_idempotency_key_create_that_commits_after_its_503_is_replayed(
        start_app, monkeypatch):
    app = await start_app(**QUICK_TIMEOUTS, **{"storage.sqlite_inline_limit": 0})
    user = new_user()
    draft = {"userId": user, "type": "payment_received", "title": "Paid", "message": "$10"}
    headers = {"Idempotency-Key": f"key-{uuid.uuid4().hex}"}
    stall = StalledWrite(monkeypatch)
    status, _ = await app.api.post("/api/notifications", token(SERVICE, ["service"]), draft,
                                   headers=headers)
    assert status == 503
    await stall.ended()
    status, created = await app.api.post("/api/notifications", token(SERVICE, ["service"]), draft,
                                         headers=headers)
    assert status == 201 and app.api.last_headers.get("Idempotent-Replayed") == "true"
    assert [n["id"] for n in await notifications_of(app, user)] == [created["id"]]


@bounded
async def test_a_caller_that_gave_up_while_its_write_was_queued_stores_nothing(
        start_app, monkeypatch):
    app = await start_app(**QUICK_TIMEOUTS)
    users = [new_user("ops") for _ in range(80)]
    stall = StalledWrite(monkeypatch)
    first = asyncio.ensure_future(post_event(app, "system.alert", alert(users), "alert-1"))
    await asyncio.sleep(0.1)  # the first one stalls on the writer thread; this one queues
    late = [new_user("late") for _ in range(80)]
    status, _ = await post_event(app, "system.alert", alert(late), "alert-2")
    assert status == 503
    assert (await first)[0] == 503
    await stall.ended()
    await asyncio.sleep(0.5)
    assert [await notifications_of(app, user) for user in late[:5]] == [[]] * 5, \
        "the queued write of a caller who had its 503 is never served"
    status, replay = await post_event(app, "system.alert", alert(users), "alert-1")
    assert status == 202 and len(replay["notifications"]) == 80


# -- MongoDB: the server applied it, the client never heard -------------------------------------

def lose_answers(monkeypatch, cls, method: str, times: int = 1) -> list[int]:
    """`cls.method` runs for real, then raises as a timed-out round trip would, `times` times."""
    original = getattr(cls, method)
    lost = []

    async def applied_then_lost(self, *args, **kwargs):
        result = await original(self, *args, **kwargs)
        if len(lost) < times:
            lost.append(1)
            raise NetworkTimeout("timed out after the server applied it (injected)")
        return result

    monkeypatch.setattr(cls, method, applied_then_lost)
    return lost


@pytest.mark.parametrize("storage_engine", ["mongo"], indirect=True)
@bounded
async def test_mongodb_an_insert_applied_but_answered_with_a_timeout_is_not_duplicated(
        start_app, monkeypatch):
    app = await start_app(**QUICK_TIMEOUTS)
    users = [new_user("ops") for _ in range(20)]
    original = AsyncCollection.insert_many
    lost = []

    async def applied_then_lost(self, *args, **kwargs):
        result = await original(self, *args, **kwargs)
        if self.name == "notifications" and not lost:
            lost.append(1)
            raise NetworkTimeout("timed out after the server applied it (injected)")
        return result

    monkeypatch.setattr(AsyncCollection, "insert_many", applied_then_lost)
    status, _ = await post_event(app, "system.alert", alert(users), "alert-7")
    assert status == 503 and lost
    status, body = await post_event(app, "system.alert", alert(users), "alert-7")
    assert status == 202 and len(body["notifications"]) == 20
    assert [len(await notifications_of(app, user)) for user in users] == [1] * 20


@pytest.mark.parametrize("storage_engine", ["mongo"], indirect=True)
@bounded
async def test_mongodb_a_commit_applied_but_answered_with_a_timeout_is_replayed(
        start_app, monkeypatch):
    app = await start_app(**QUICK_TIMEOUTS)
    users = [new_user("ops") for _ in range(5)]
    lost = lose_answers(monkeypatch, AsyncClientSession, "commit_transaction", times=10)
    status, _ = await post_event(app, "system.alert", alert(users), "alert-8")
    assert status == 503 and lost
    monkeypatch.undo()
    status, body = await post_event(app, "system.alert", alert(users), "alert-8")
    assert status == 202 and len(body["notifications"]) == 5
    assert [len(await notifications_of(app, user)) for user in users] == [1] * 5
