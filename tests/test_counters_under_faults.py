"""The unread counters stay exact when a write fails halfway, on the MongoDB engine.

The audit's reproduction: a counter update timed out once after its notification changed,
and the counter said 1 unread with none unread, for good. Every change of a notification and
its counters is now one transaction: a failure leaves both as they were. Failures are injected
at the driver boundary (a collection operation that raises as a timed-out round trip does).
"""

from __future__ import annotations

import asyncio

import pytest
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import NetworkTimeout

from mojavox_notify.errors import StorageUnavailableError
from mojavox_notify.model import PRIORITIES, Draft
from mojavox_notify.store import NotificationStore, build_store

from .support.engines import both_engines
from .support.sockets import Socket
from .support.tokens import new_user, token

bounded = pytest.mark.timeout(60)
mongo_only = pytest.mark.parametrize("storage_engine", ["mongo"], indirect=True)


@pytest.fixture
async def store(make_settings):
    opened = build_store(make_settings())
    await opened.open()
    yield opened
    await opened.close()


def fail_once(monkeypatch, collection: str, method: str, before: bool = True) -> list:
    """The next `method` call on `collection` raises NetworkTimeout, before running (or after)."""
    original = getattr(AsyncCollection, method)
    failed = []

    async def failing(self, *args, **kwargs):
        if self.name == collection and not failed:
            failed.append(method)
            if before:
                raise NetworkTimeout(f"{collection}.{method} timed out (injected)")
            await original(self, *args, **kwargs)
            raise NetworkTimeout(f"{collection}.{method} answer lost (injected)")
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(AsyncCollection, method, failing)
    return failed


def payment(user: str, priority: str = "high") -> Draft:
    return Draft(user_id=user, type="payment_received", title="Paid", message="$10",
                 priority=priority)


async def assert_exact(store: NotificationStore, user: str) -> None:
    stored = await store.after(user, 0, 1000)
    unread = {p: sum(1 for d in stored if not d["read"] and d["priority"] == p) for p in PRIORITIES}
    state = await store.state(user)
    assert (state.total, dict(state.unread)) == (len(stored), unread)


@mongo_only
@bounded
@pytest.mark.parametrize("before", [True, False], ids=["failed", "applied-then-lost"])
async def test_a_counter_update_that_fails_during_mark_read_leaves_counts_exact(
        store, monkeypatch, before):
    user = new_user()
    [created] = await store.insert_many([payment(user)])
    failed = fail_once(monkeypatch, "user_state", "find_one_and_update", before=before)
    with pytest.raises(StorageUnavailableError):
        await store.mark_read(user, created.document["_id"])
    assert failed
    await assert_exact(store, user)
    await store.mark_read(user, created.document["_id"])
    await assert_exact(store, user)
    assert (await store.state(user)).unread_total == 0


@mongo_only
@bounded
async def test_a_counter_update_that_fails_during_an_insertion_stores_nothing_uncounted(
        store, monkeypatch):
    user = new_user()
    await store.insert_many([payment(user)])
    failed = fail_once(monkeypatch, "user_state", "bulk_write")
    with pytest.raises(StorageUnavailableError):
        await store.insert_many([payment(user), payment(new_user())])
    assert failed
    await assert_exact(store, user)
    [later] = await store.insert_many([payment(user)])
    assert later.document["seq"] == 2, "the failed insertion took no sequence number"
    await assert_exact(store, user)


@mongo_only
@bounded
async def test_failures_inside_delete_and_mark_all_read_leave_counts_exact(store, monkeypatch):
    user = new_user()
    created = await store.insert_many([payment(user, p) for p in PRIORITIES])
    fail_once(monkeypatch, "user_state", "find_one_and_update")
    with pytest.raises(StorageUnavailableError):
        await store.delete(user, created[0].document["_id"])
    await assert_exact(store, user)
    monkeypatch.undo()
    fail_once(monkeypatch, "user_state", "find_one_and_update", before=False)
    with pytest.raises(StorageUnavailableError):
        await store.mark_all_read(user)
    await assert_exact(store, user)
    assert (await store.state(user)).unread_total == 4, "nothing was marked read"


@both_engines
@bounded
async def test_mark_all_read_racing_creations_never_publishes_a_negative_count(start_app):
    app = await start_app(**{"rate_limits.notifications_per_minute": 0,
                             "rate_limits.requests_per_minute": 0})
    user = new_user()
    tab = await Socket.open(app, token(user))
    await tab.expect("connected")

    async def create(index: int) -> None:
        await app.api.notify(user, message=f"#{index}")

    async def read_all() -> None:
        status, _ = await app.api.post("/api/notifications/read-all", token(user))
        assert status == 200

    await asyncio.gather(*(create(i) if i % 3 else read_all() for i in range(60)))
    await tab.quiet(1.0)
    counts = [frame for frame in tab.frames if frame["type"] == "unread_count"]
    assert counts and all(frame["count"] >= 0 for frame in counts)
    assert all(value >= 0 for frame in counts for value in frame["byPriority"].values())
    await assert_exact(app.store, user)
