"""The storage contract: every engine behind `NotificationStore` passes these, unchanged.

Each test runs on the embedded SQLite engine and on the MongoDB engine (over the wire against a
real nx-27017). The counters are checked against a recount of what is stored, after every kind
of change, since every hot path trusts them.
"""

from __future__ import annotations

import asyncio
import random
from datetime import datetime, timedelta, timezone

import pytest
from bson import ObjectId

from mojavox_notify import tenants
from mojavox_notify.errors import NotFoundError
from mojavox_notify.model import PRIORITIES, ChannelPreference, Draft, PushSubscription, utcnow
from mojavox_notify.store import (ClaimLostError, DueShare, EscalationChange, EventClaim, NotificationStore, TopicFullError,
                                  UserState, build_store)
from mojavox_notify.store.mongo import MongoStore
from mojavox_notify.wire.escalation import shown_of

from .support.engines import both_engines
from .support.tokens import new_user

pytestmark = both_engines
bounded = pytest.mark.timeout(60)


@pytest.fixture
async def open_store(make_settings):
    """`await open_store()` → an opened store on the test's storage; closed after the test."""
    opened: list[NotificationStore] = []

    async def open_one(**overrides) -> NotificationStore:
        store = build_store(make_settings(**overrides))
        await store.open()
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        await store.close()


def draft(user: str, priority: str = "high", expires_in: float | None = None, **fields) -> Draft:
    expires_at = utcnow() + timedelta(seconds=expires_in) if expires_in is not None else None
    values = {"type": "payment_received", "title": "Payment Received", "message": "paid",
              "data": {"amount": 1}, "action_url": "/payment-history", **fields}
    return Draft(user_id=user, priority=priority, expires_at=expires_at, **values)


async def claimed(store: NotificationStore, key: str) -> EventClaim:
    """A fresh claim on `key`, held."""
    claim = EventClaim(key, new_user("owner"))
    assert await store.claim_event(key, "payment.received", claim.owner) is None
    return claim


async def recount(store: NotificationStore, user: str) -> UserState:
    """The user's counters computed from the stored, unexpired notifications themselves."""
    documents = await store.after(user, 0, 10_000)
    unread = {priority: 0 for priority in PRIORITIES}
    for document in documents:
        if not document["read"]:
            unread[document["priority"]] += 1
    return UserState(seq=max((d["seq"] for d in documents), default=0), total=len(documents),
                     unread=unread)


async def assert_counters_exact(store: NotificationStore, user: str) -> UserState:
    state = await store.state(user)
    truth = await recount(store, user)
    assert (state.total, dict(state.unread)) == (truth.total, truth.unread)
    assert state.seq >= truth.seq
    return state


@bounded
async def test_sequence_numbers_start_at_one_per_user_and_have_no_gaps(open_store):
    store = await open_store()
    alice, bob = new_user(), new_user()
    for _ in range(3):
        await store.insert(draft(alice))
    created = await store.insert(draft(bob))
    assert created.document["seq"] == 1 and created.state.seq == 1
    assert [d["seq"] for d in await store.after(alice, 0, 10)] == [1, 2, 3]
    assert (await store.state(alice)).seq == 3


@bounded
async def test_insert_many_keeps_order_and_returns_each_users_state(open_store):
    store = await open_store()
    users = [new_user() for _ in range(5)]
    drafts = [draft(user, priority=PRIORITIES[i % 4]) for i, user in enumerate(users)]
    drafts += [draft(users[0], priority="critical"), draft(users[0], priority="low")]
    claim = await claimed(store, "event:evt-1")
    created = await store.insert_many(drafts, claim=claim)
    assert [c.document["user_id"] for c in created] == [d.user_id for d in drafts]
    assert [c.document["seq"] for c in created if c.document["user_id"] == users[0]] == [1, 2, 3]
    assert all(c.document["event_id"] == claim.key for c in created)
    first = await store.state(users[0])
    assert first.seq == 3 and first.total == 3
    assert first.unread == {"low": 2, "medium": 0, "high": 0, "critical": 1}
    for user in users:
        await assert_counters_exact(store, user)
    record = await store.event(claim.key)
    assert record["state"] == "done", "the claim is completed in the transaction that stored them"
    assert record["notifications"] == [str(c.document["_id"]) for c in created]


@bounded
async def test_a_stored_document_reads_back_as_it_was_written(open_store):
    store = await open_store()
    user = new_user()
    created = (await store.insert(draft(user, data={"n": [1, 2, {"x": "é"}]}, expires_in=3600))).document
    got = await store.get(user, created["_id"])
    for key in ("_id", "user_id", "seq", "type", "title", "message", "priority", "data",
                "action_url", "read", "created_at", "expires_at"):
        assert got[key] == created[key], key
    assert got["created_at"].tzinfo is not None


@bounded
async def test_list_is_newest_first_with_totals_from_the_counters(open_store):
    store = await open_store()
    user = new_user()
    ids = [str((await store.insert(draft(user, priority="low"))).document["_id"]) for _ in range(7)]
    await store.mark_read(user, ObjectId(ids[0]))
    page, total = await store.list(user, limit=3, offset=0, unread_only=False)
    assert [str(d["_id"]) for d in page] == ids[::-1][:3] and total == 7
    page, total = await store.list(user, limit=3, offset=6, unread_only=False)
    assert [str(d["_id"]) for d in page] == [ids[0]]
    page, total = await store.list(user, limit=10, offset=0, unread_only=True)
    assert [str(d["_id"]) for d in page] == ids[:0:-1] and total == 6


@bounded
async def test_after_and_newest_between_select_by_sequence(open_store):
    store = await open_store()
    user = new_user()
    for _ in range(6):
        await store.insert(draft(user))
    assert [d["seq"] for d in await store.after(user, 2, 3)] == [3, 4, 5]
    assert [d["seq"] for d in await store.newest_between(user, 1, 5, 2)] == [5, 4]
    assert await store.after(new_user(), 0, 10) == []


@bounded
async def test_another_users_notification_is_not_found_anywhere(open_store):
    store = await open_store()
    owner, other = new_user(), new_user()
    created = (await store.insert(draft(owner))).document
    with pytest.raises(NotFoundError):
        await store.get(other, created["_id"])
    with pytest.raises(NotFoundError):
        await store.mark_read(other, created["_id"])
    with pytest.raises(NotFoundError):
        await store.delete(other, created["_id"])
    with pytest.raises(NotFoundError):
        await store.get(owner, ObjectId())
    assert (await store.state(owner)).unread_total == 1


@bounded
async def test_mark_read_mark_all_read_and_delete_keep_the_counters_exact(open_store):
    store = await open_store()
    user = new_user()
    created = [(await store.insert(draft(user, priority=p))).document for p in PRIORITIES * 2]
    changed, state = await store.mark_read(user, created[0]["_id"])
    assert changed and state.unread["low"] == 1 and state.total == 8
    changed, state = await store.mark_read(user, created[0]["_id"])
    assert not changed and state.unread["low"] == 1
    state = await store.delete(user, created[1]["_id"])
    assert state.total == 7 and state.unread["medium"] == 1
    state = await store.delete(user, created[0]["_id"])
    assert state.total == 6 and state.unread["low"] == 1, "deleting a read one leaves unread alone"
    await assert_counters_exact(store, user)
    changed, state = await store.mark_all_read(user)
    assert changed == 6 and state.unread_total == 0 and state.total == 6
    changed, state = await store.mark_all_read(user)
    assert changed == 0
    await assert_counters_exact(store, user)


@bounded
async def test_expired_notifications_leave_reads_and_counters_when_they_expire(open_store):
    store = await open_store()
    user = new_user()
    await store.insert(draft(user, priority="low", expires_in=0.4))
    kept = (await store.insert(draft(user, priority="high"))).document
    assert (await store.state(user)).unread_total == 2
    await asyncio.sleep(0.6)
    state = await store.state(user)
    assert state.total == 1 and state.unread == {"low": 0, "medium": 0, "high": 1, "critical": 0}
    page, total = await store.list(user, 10, 0, False)
    assert [d["_id"] for d in page] == [kept["_id"]] and total == 1
    assert [d["_id"] for d in await store.after(user, 0, 10)] == [kept["_id"]]
    await assert_counters_exact(store, user)


@bounded
async def test_delete_expired_removes_expired_and_past_retention_with_exact_counters(open_store):
    store = await open_store()
    alice, bob = new_user(), new_user()
    await store.insert(draft(alice, priority="low", expires_in=0.3))
    read = (await store.insert(draft(alice, priority="critical", expires_in=0.3))).document
    await store.mark_read(alice, read["_id"])
    await store.insert(draft(alice))
    await store.insert(draft(bob, priority="medium", expires_in=0.3))
    await asyncio.sleep(0.5)
    assert await store.delete_expired(retention_days=90) == 3
    assert await store.delete_expired(retention_days=90) == 0
    for user in (alice, bob):
        await assert_counters_exact(store, user)
    assert (await store.state(alice)).total == 1
    assert (await store.state(bob)).unread_total == 0


@bounded
async def test_retention_keeps_recent_notifications(open_store):
    store = await open_store()
    user = new_user()
    await store.insert(draft(user))
    assert await store.delete_expired(retention_days=1) == 0
    assert (await store.state(user)).total == 1


@bounded
async def test_counters_match_a_recount_after_a_random_mix_of_changes(open_store):
    store = await open_store()
    users = [new_user() for _ in range(3)]
    rng = random.Random(7)
    live: dict[str, list] = {user: [] for user in users}
    for _ in range(120):
        user = rng.choice(users)
        action = rng.random()
        if action < 0.5 or not live[user]:
            batch = [draft(rng.choice(users), priority=rng.choice(PRIORITIES)) for _ in range(rng.randint(1, 4))]
            for created in await store.insert_many(batch):
                live[created.document["user_id"]].append(created.document["_id"])
        elif action < 0.7:
            await store.mark_read(user, rng.choice(live[user]))
        elif action < 0.85:
            victim = live[user].pop(rng.randrange(len(live[user])))
            await store.delete(user, victim)
        else:
            await store.mark_all_read(user)
    for user in users:
        state = await assert_counters_exact(store, user)
        assert state.total == len(live[user])


@bounded
async def test_two_writers_on_one_storage_interleave_without_gaps(open_store):
    """Two store objects (two connections, as two processes would have) writing for one user."""
    first, second = await open_store(), await open_store()
    user = new_user()

    async def write(store, count):
        for _ in range(count):
            await store.insert_many([draft(user), draft(new_user())])

    await asyncio.gather(write(first, 30), write(second, 30))
    assert [d["seq"] for d in await first.after(user, 0, 100)] == list(range(1, 61))
    state = await assert_counters_exact(second, user)
    assert state.seq == 60 and state.total == 60


@bounded
async def test_preferences_are_read_for_many_users_at_once_and_keep_only_what_was_chosen(open_store):
    store = await open_store()
    alice, bob, carol = new_user(), new_user(), new_user()
    await store.update_preferences(alice, {"call_completed": {"enabled": False}})
    await store.update_preferences(alice, {"call_completed": {"push": False},
                                           "agent_alert": {"push": False}})
    await store.update_preferences(bob, {"system_alert": {"enabled": False, "push": False}})
    found = await store.preferences_of_many([alice, bob, carol])
    assert found[alice] == {"call_completed": ChannelPreference(enabled=False, push=False),
                            "agent_alert": ChannelPreference(enabled=None, push=False)}
    assert found[bob] == {"system_alert": ChannelPreference(enabled=False, push=False)}
    assert carol not in found
    assert await store.preferences_of(carol) == {}


@bounded
async def test_a_push_endpoint_stays_with_the_user_who_registered_it(open_store):
    store = await open_store()
    alice, bob = new_user(), new_user()
    endpoint = f"https://push.example.com/{new_user()}"
    assert await store.save_push_subscription(alice, PushSubscription(endpoint, "p1", "a1"), keep=20)
    assert not await store.save_push_subscription(bob, PushSubscription(endpoint, "p2", "a2"), keep=20)
    assert await store.push_subscriptions_of(bob) == []
    [saved] = await store.push_subscriptions_of(alice)
    assert saved["endpoint"] == endpoint and saved["keys"] == {"p256dh": "p1", "auth": "a1"}
    assert saved["user_id"] == alice
    assert await store.save_push_subscription(alice, PushSubscription(endpoint, "p3", "a3"), keep=20)
    [renewed] = await store.push_subscriptions_of(alice)
    assert renewed["keys"] == {"p256dh": "p3", "auth": "a3"}
    with pytest.raises(NotFoundError):
        await store.remove_push_subscription(bob, endpoint)
    await store.remove_push_subscription(alice, endpoint)
    assert await store.push_subscriptions_of(alice) == []


@bounded
async def test_a_new_push_subscription_past_the_limit_replaces_the_least_recently_registered(open_store):
    store = await open_store()
    user, other = new_user(), new_user()
    endpoints = [f"https://push.example.com/{user}/{number}" for number in range(5)]
    for endpoint in endpoints[:3]:
        assert await store.save_push_subscription(user, PushSubscription(endpoint, "p", "a"), keep=3)
    await store.save_push_subscription(
        other, PushSubscription(f"https://push.example.com/{other}", "p", "a"), keep=3)
    await store.save_push_subscription(user, PushSubscription(endpoints[0], "p", "a"), keep=3)  # again
    for endpoint in endpoints[3:]:
        await store.save_push_subscription(user, PushSubscription(endpoint, "p", "a"), keep=3)
    kept = {subscription["endpoint"] for subscription in await store.push_subscriptions_of(user)}
    assert kept == {endpoints[0], endpoints[3], endpoints[4]}
    assert len(await store.push_subscriptions_of(other)) == 1, "another user's are not touched"


@bounded
async def test_pushes_are_queued_for_stored_notifications_of_subscribed_users_only(open_store):
    store = await open_store()
    subscribed, unsubscribed = new_user("subscribed"), new_user("unsubscribed")
    await store.save_push_subscription(
        subscribed, PushSubscription(f"https://push.example.com/{subscribed}", "p", "a"), keep=3)
    first = await store.insert(draft(subscribed, priority="critical"))
    second = await store.insert(draft(unsubscribed, priority="critical"))
    assert await store.queue_pushes([]) == 0
    queued = await store.queue_pushes([
        (subscribed, str(first.document["_id"]), "critical"),
        (unsubscribed, str(second.document["_id"]), "critical")])
    assert queued == 1
    jobs = [job for job in await store.claim_pushes(1000, 0.5)
            if job.user_id in (subscribed, unsubscribed)]
    [job] = jobs
    assert (job.user_id, job.notification_id, job.priority) == (
        subscribed, str(first.document["_id"]), "critical")
    assert (job.attempts, job.done) == (0, ())
    assert abs((utcnow() - job.created_at).total_seconds()) < 5, "due now, aged from now"
    await store.finish_push(job.id)


@bounded
async def test_an_event_id_is_claimed_once_completed_and_released_only_by_its_owner(open_store):
    store = await open_store()
    key = new_user("event")
    first, second = EventClaim(key, "owner-1"), EventClaim(key, "owner-2")
    assert await store.claim_event(key, "payment.received", first.owner) is None
    earlier = await store.claim_event(key, "payment.received", second.owner)
    assert earlier["state"] == "pending" and earlier["type"] == "payment.received"
    assert earlier["owner"] == first.owner and earlier["created_at"].tzinfo is not None
    await store.release_event(second)
    assert (await store.event(key))["owner"] == first.owner, "only its owner releases a claim"
    await store.release_event(first)
    assert await store.event(key) is None
    assert await store.claim_event(key, "payment.received", second.owner) is None
    await store.complete_event(first, ["x"])
    assert (await store.event(key))["state"] == "pending", "only its owner completes a claim"
    await store.complete_event(second, ["a", "b"])
    record = await store.event(key)
    assert record["state"] == "done" and record["notifications"] == ["a", "b"]
    await store.release_event(second)
    assert (await store.event(key))["state"] == "done", "a completed event is never released"


@bounded
async def test_a_write_under_a_released_or_taken_over_claim_stores_nothing(open_store):
    store = await open_store()
    user = new_user()
    released = await claimed(store, new_user("event"))
    await store.release_event(released)
    with pytest.raises(ClaimLostError):
        await store.insert_many([draft(user)], claim=released)
    stale = await claimed(store, new_user("event"))
    assert await store.take_over_event(stale.key, stale.owner, "successor")
    assert not await store.take_over_event(stale.key, stale.owner, "third"), "once only"
    with pytest.raises(ClaimLostError):
        await store.insert_many([draft(user)], claim=stale)
    assert await store.after(user, 0, 10) == [] and (await store.state(user)).total == 0
    successor = EventClaim(stale.key, "successor")
    [record] = await store.insert_many([draft(user)], claim=successor)
    assert (await store.event(stale.key))["notifications"] == [str(record.document["_id"])]


@bounded
async def test_event_records_older_than_the_window_are_forgotten(open_store):
    store = await open_store()
    old = await claimed(store, new_user("event"))
    await store.complete_event(old, [])
    removed = await store.delete_expired_events(utcnow() + timedelta(seconds=1))
    assert removed >= 1 and await store.event(old.key) is None
    recent = await claimed(store, new_user("event"))
    assert await store.delete_expired_events(utcnow() - timedelta(hours=1)) == 0
    assert (await store.event(recent.key))["state"] == "pending"


@bounded
async def test_ping_answers_and_an_unknown_user_has_empty_state(open_store):
    store = await open_store()
    assert await store.ping() is True
    assert await store.state(new_user()) == UserState()
    assert await store.list(new_user(), 10, 0, False) == ([], 0)


@bounded
async def test_concurrent_insertions_each_get_their_own_records_in_one_gap_free_sequence(open_store):
    store = await open_store()
    alice, bob = new_user(), new_user()
    calls = [[draft(alice, message=f"a{index}"), draft(bob, message=f"b{index}")] for index in range(30)]
    claims = [await claimed(store, new_user("event")) for _ in calls]
    results = await asyncio.gather(*(store.insert_many(drafts, claim=claim)
                                     for claim, drafts in zip(claims, calls)))
    for index, records in enumerate(results):
        assert [record.document["message"] for record in records] == [f"a{index}", f"b{index}"]
        assert all(record.document["event_id"] == claims[index].key for record in records)
    for user in (alice, bob):
        stored = await store.after(user, 0, 100)
        assert [document["seq"] for document in stored] == list(range(1, 31))
        assert sorted(record.document["seq"] for records in results for record in records
                      if record.document["user_id"] == user) == list(range(1, 31))
        assert await store.state(user) == await recount(store, user)


def broadcast_document(title: str, seconds: float, created_ago: float = 0.0,
                       audience: str | None = tenants.DEFAULT) -> dict:
    """`audience` None: a document as stored before audiences existed (no such field)."""
    created_at = utcnow() - timedelta(seconds=created_ago)
    document = {"_id": ObjectId(), "title": title, "message": f"{title} message", "priority": "high",
                "data": {"window": [22, 23], "note": "ñ"}, "action_url": "/status",
                "created_at": created_at.replace(microsecond=created_at.microsecond // 1000 * 1000),
                "expires_at": created_at + timedelta(seconds=seconds)}
    if audience is not None:
        document["audience"] = audience
    return document


async def test_broadcasts_read_back_newest_first_until_they_expire_and_cleanup_removes_those(
        open_store):
    store = await open_store()
    older = broadcast_document("older", 3600, created_ago=2)
    newer = broadcast_document("newer", 3600, created_ago=1)
    expired = broadcast_document("expired", 1, created_ago=5)
    for document in (older, expired, newer):
        await store.insert_broadcast(document)

    active = await store.active_broadcasts(10)
    assert [document["title"] for document in active] == ["newer", "older"]
    assert active[1] == {**older, "expires_at": active[1]["expires_at"]}
    assert abs(active[1]["expires_at"] - older["expires_at"]) < timedelta(milliseconds=1)
    assert [document["title"] for document in await store.active_broadcasts(1)] == ["newer"]

    assert await store.delete_expired_broadcasts() == 1
    assert await store.delete_expired_broadcasts() == 0
    assert [document["title"] for document in await store.active_broadcasts(10)] == ["newer", "older"]


def titles(documents: list[dict]) -> list[str]:
    return [document["title"] for document in documents]


@bounded
async def test_a_tenant_reads_its_own_and_everyones_broadcasts_and_no_other_tenants(open_store):
    store = await open_store()
    acme, globex = new_user("acme"), new_user("globex")
    for document in (broadcast_document("acme old", 3600, 5, acme),
                     broadcast_document("globex", 3600, 4, globex),
                     broadcast_document("everyone", 3600, 3, tenants.EVERYONE),
                     broadcast_document("default", 3600, 2, tenants.DEFAULT),
                     broadcast_document("acme expired", 1, 1.5, acme),
                     broadcast_document("acme new", 3600, 1, acme)):
        await store.insert_broadcast(document)

    acme_sees = await store.active_broadcasts(10, acme)
    assert titles(acme_sees) == ["acme new", "everyone", "acme old"]
    assert [document["audience"] for document in acme_sees] == [acme, tenants.EVERYONE, acme]
    assert titles(await store.active_broadcasts(10, globex)) == ["everyone", "globex"]
    assert titles(await store.active_broadcasts(10, tenants.DEFAULT)) == ["default", "everyone"]
    assert titles(await store.active_broadcasts(10, new_user("tenant"))) == ["everyone"]
    assert titles(await store.active_broadcasts(2, acme)) == ["acme new", "everyone"], \
        "the limit counts everyone's too"


@bounded
async def test_with_no_tenant_the_newest_of_each_audience_are_read_newest_first(open_store):
    store = await open_store()
    acme, globex = new_user("acme"), new_user("globex")
    for index, audience in enumerate([acme, acme, acme, globex, tenants.EVERYONE, globex, acme]):
        await store.insert_broadcast(broadcast_document(f"{index}", 3600, 10 - index, audience))
    await store.insert_broadcast(broadcast_document("expired", 1, 3, globex))

    board = await store.active_broadcasts(2)
    assert titles(board) == ["6", "5", "4", "3", "2"], "two of acme's, two of globex's, everyone's"
    assert titles(await store.active_broadcasts(1)) == ["6", "5", "4"]
    assert [document["audience"] for document in board] == [acme, globex, tenants.EVERYONE,
                                                            globex, acme]


@bounded
async def test_a_broadcast_stored_without_an_audience_is_the_default_tenants(open_store):
    store = await open_store()
    tenant = new_user("acme")
    old = broadcast_document("before audiences", 3600, 3, audience=None)
    await store.insert_broadcast(old)
    if isinstance(store, MongoStore):  # as the previous release left it: no field at all
        assert "audience" not in await store.broadcasts.find_one({"_id": old["_id"]})
    await store.insert_broadcast(broadcast_document("tenant's", 3600, 2, tenant))

    [read] = await store.active_broadcasts(10, tenants.DEFAULT)
    assert read == {**old, "audience": tenants.DEFAULT, "expires_at": read["expires_at"]}
    assert titles(await store.active_broadcasts(10, tenant)) == ["tenant's"]
    assert titles(await store.active_broadcasts(10)) == ["tenant's", "before audiences"]

    await store.insert_broadcast(broadcast_document("default's, newer", 3600, 1))
    newest = await store.active_broadcasts(1)
    assert titles(newest) == ["default's, newer", "tenant's"], \
        "one audience with the default's stored since"
    assert {document["audience"] for document in newest} == {tenants.DEFAULT, tenant}


def topic_key(tenant: str = "acme") -> str:
    return tenants.key(tenant, new_user("topic"))


def members_of(tenant: str, count: int) -> list[str]:
    """`count` user keys of `tenant`, in ascending order."""
    return sorted(tenants.key(tenant, new_user()) for _ in range(count))


@bounded
async def test_topic_members_are_added_once_removed_and_counted(open_store):
    store = await open_store()
    topic, other = topic_key(), topic_key()
    members = members_of("acme", 6)
    assert await store.update_topic(topic, members[:4], [], max_members=100) == 4
    assert await store.update_topic(topic, members[2:] + members[2:3], [], max_members=100) == 6, \
        "members already in (and one named twice) count once"
    assert await store.update_topic(topic, members, [], max_members=100) == 6
    assert await store.update_topic(other, members[:2], [], max_members=100) == 2
    stranger = tenants.key("acme", new_user())
    assert await store.update_topic(topic, [], [members[0], members[5], stranger], 100) == 4
    assert await store.topic_size(topic) == 4
    assert await store.topic_members(topic, 10) == members[1:5]
    assert await store.topic_members(other, 10) == members[:2], "another topic is left alone"
    assert await store.update_topic(topic, [members[0]], [members[0]], 100) == 4, \
        "added, then removed"
    assert await store.topic_members(topic, 10) == members[1:5]
    assert await store.topic_size(topic_key()) == 0
    assert await store.topic_members(topic_key(), 10) == []


@bounded
async def test_topic_members_page_in_ascending_order_after_a_member(open_store):
    store = await open_store()
    topic = topic_key()
    members = members_of("acme", 250)
    shuffled = random.Random(3).sample(members, len(members))
    assert await store.update_topic(topic, shuffled[:200], [], 1000) == 200
    assert await store.update_topic(topic, shuffled[200:], [], 1000) == 250
    await store.update_topic(topic_key(), members_of("acme", 5), [], 1000)  # a neighbour

    pages, after = [], None
    while page := await store.topic_members(topic, 100, after):
        pages.append(page)
        after = page[-1]
    assert [len(page) for page in pages] == [100, 100, 50]
    assert [member for page in pages for member in page] == members
    assert await store.topic_members(topic, 3, members[10]) == members[11:14]
    assert await store.topic_members(topic, 3, tenants.key("acme", "")) == members[:3], \
        "after any key, not only a member's"
    assert await store.topic_members(topic, 10, members[-1]) == []


@bounded
async def test_topics_of_a_member_and_deleting_a_topic(open_store):
    store = await open_store()
    first, second, third = sorted(topic_key() for _ in range(3))
    member, neighbour = members_of("acme", 2)
    for topic in (second, first):
        await store.update_topic(topic, [member, neighbour], [], 100)
    await store.update_topic(third, [neighbour], [], 100)
    assert await store.topics_of(member) == [first, second]
    assert await store.topics_of(neighbour) == [first, second, third]
    assert await store.topics_of(tenants.key("acme", new_user())) == []

    assert await store.delete_topic(first) is True
    assert await store.delete_topic(first) is False
    assert await store.delete_topic(topic_key()) is False
    assert await store.topic_size(first) == 0 and await store.topic_members(first, 10) == []
    assert await store.topics_of(member) == [second]
    assert await store.topic_members(second, 10) == [member, neighbour]
    assert await store.update_topic(first, [member], [], 100) == 1, "a deleted topic starts anew"


@bounded
async def test_an_update_past_the_topics_limit_is_refused_whole(open_store):
    store = await open_store()
    topic = topic_key()
    members = members_of("acme", 8)
    assert await store.update_topic(topic, members[:4], [], max_members=5) == 4
    with pytest.raises(TopicFullError) as refused:
        await store.update_topic(topic, members[4:7], [members[0]], max_members=5)
    assert (refused.value.size, refused.value.limit) == (6, 5)
    assert await store.topic_members(topic, 10) == members[:4], "nothing added or removed"
    assert await store.topic_size(topic) == 4
    assert await store.topics_of(members[4]) == []

    assert await store.update_topic(topic, members[4:6], [members[0]], max_members=5) == 5
    assert await store.update_topic(topic, members[1:6], [], max_members=5) == 5, \
        "members already in add nothing"
    with pytest.raises(TopicFullError):
        await store.update_topic(topic, [members[7]], [], max_members=5)
    assert await store.topic_members(topic, 10) == members[1:6]


@bounded
async def test_a_topic_past_a_lowered_limit_may_shrink_but_not_grow(open_store):
    store = await open_store()
    topic = topic_key()
    members = members_of("acme", 6)
    await store.update_topic(topic, members[:5], [], max_members=10)
    assert await store.update_topic(topic, [members[5]], members[:2], max_members=3) == 4
    with pytest.raises(TopicFullError) as refused:
        await store.update_topic(topic, members[:2], [members[5]], max_members=3)
    assert (refused.value.size, refused.value.limit) == (5, 3)
    assert await store.topic_members(topic, 10) == members[2:]


# -- escalations ---------------------------------------------------------------------------------

def _escalation(key: str, **fields) -> dict:
    from mojavox_notify.escalations import record
    from mojavox_notify.escalations.policy import Policy, Step
    document = record.new_escalation(draft(new_user(), "critical", type="call_escalation"), key,
                                     Policy(steps=(Step(30, users=("manager",)),)), 1_000_000)
    return {**document, **fields}


@bounded
async def test_one_unresolved_escalation_per_key_and_a_new_one_once_it_is_resolved(open_store):
    from mojavox_notify.escalations import record
    store = await open_store()
    key = tenants.key(tenants.DEFAULT, "call:contract-1")
    first, opened = await store.open_escalation(_escalation(key))
    assert opened
    again, opened = await store.open_escalation(_escalation(key))
    assert not opened and again["_id"] == first["_id"] and again == first
    assert await store.unresolved_escalation(key) == first
    closed = record.resolved(first, "call ended", 2_000_000)
    assert await changed(store, (closed, first["version"])) == [True]
    assert await store.unresolved_escalation(key) is None
    assert await store.escalation(first["_id"]) == closed
    second, opened = await store.open_escalation(_escalation(key))
    assert opened and second["_id"] != first["_id"]


@bounded
async def test_an_escalation_changes_only_over_the_version_it_was_read_at(open_store):
    from mojavox_notify.escalations import record
    store = await open_store()
    document, _ = await store.open_escalation(_escalation(tenants.key(tenants.DEFAULT, "call:c-2")))
    taken = record.acknowledged(document, "bob", 1_500_000)
    resolved = record.resolved(document, "call ended", 1_500_001)
    assert await changed(store, (taken, document["version"]),
                         (resolved, document["version"])) == [True, False]
    stored = await store.escalation(document["_id"])
    assert stored["state"] == "acknowledged" and stored["version"] == document["version"] + 1
    # Two processes at once: one of them wins.
    later = [record.resolved(stored, f"by {who}", 1_600_000) for who in ("one", "two")]
    results = await asyncio.gather(*(changed(store, (change, stored["version"]))
                                     for change in later))
    assert sorted(outcome for [outcome] in results) == [False, True]


@bounded
async def test_escalation_notifications_are_its_recipients_and_carry_its_state(open_store):
    from mojavox_notify.escalations import record
    store = await open_store()
    document, _ = await store.open_escalation(_escalation(tenants.key(tenants.DEFAULT, "call:c-3")))
    users = [new_user("supervisor") for _ in range(2)]
    created = await store.insert_many([
        draft(user, "critical", type="call_escalation",
              escalation=record.notification_part(document, step, 0))
        for user, step in zip(users, (0, 1))])
    recipients = (await store.escalation_recipients([document["_id"], "6b0f00000000000000000000"]))
    assert [(r["user_id"], r["step"]) for r in recipients[document["_id"]]] == list(zip(users, (0, 1)))
    assert recipients["6b0f00000000000000000000"] == []
    taken = record.acknowledged(document, users[1], 1_700_000)
    assert await changed(store, (taken, document["version"])) == [True]
    for user, stored in zip(users, created):
        reread = await store.get(user, stored.document["_id"])
        assert shown_of(reread["escalation"])["acknowledgedBy"] == users[1]
        assert reread["escalation"]["step"] == stored.document["escalation"]["step"]
        [listed] = (await store.list(user, 10, 0, False))[0]
        assert shown_of(listed["escalation"])["state"] == "acknowledged"
    assert [e["_id"] for e in await store.escalations_of(users[0], ["acknowledged"], 10)] == [document["_id"]]
    assert await store.escalations_of(users[0], ["open"], 10) == []


@bounded
async def test_escalation_events_keep_their_order_and_a_once_key_once(open_store):
    store = await open_store()
    escalation_id = "6b0f00000000000000000001"
    lines = [{"escalation_id": escalation_id, "at": 10, "event": "created", "step": 0},
             {"escalation_id": escalation_id, "at": 20, "event": "delivered", "user_id": "u",
              "step": 0, "once": "delivered:n1"}]
    await store.add_escalation_events(lines)
    await store.add_escalation_events([{**lines[1], "at": 30}, {
        "escalation_id": escalation_id, "at": 40, "event": "acknowledged", "user_id": "u",
        "step": 0}])
    assert [(e["event"], e["at"]) for e in await store.escalation_events(escalation_id)] == [
        ("created", 10), ("delivered", 20), ("acknowledged", 40)]


@bounded
async def test_due_escalations_come_earliest_first_and_finished_ones_are_forgotten(open_store):
    from mojavox_notify.escalations import record
    store = await open_store()
    due_at = [5_000, 3_000, 9_000]
    opened = [(await store.open_escalation(_escalation(
        tenants.key(tenants.DEFAULT, f"call:due-{index}"), due_at=at)))[0]
        for index, at in enumerate(due_at)]
    assert [d["due_at"] for d in await store.due_escalations(6_000, 10)] == [3_000, 5_000]
    [first] = await store.due_escalations(6_000, 1)
    assert first["due_at"] == 3_000
    assert [d["_id"] for d in await store.due_escalations(6_000, 10, (3_000, first["_id"]))] == [
        opened[0]["_id"]]  # a scan goes on past where the last batch ended
    assert await store.due_escalations(6_000, 10, (5_000, opened[0]["_id"])) == []
    # A worker's share: its residue of due_at, and everyone's once late enough.
    assert [d["due_at"] for d in await store.due_escalations(6_000, 10, None,
                                                             DueShare(1, 2, 0))] == []
    assert [d["due_at"] for d in await store.due_escalations(6_000, 10, None,
                                                             DueShare(0, 2, 0))] == [3_000, 5_000]
    assert [d["due_at"] for d in await store.due_escalations(
        6_000, 10, None, DueShare(0, 3, 4_000))] == [3_000]  # 5,000 is neither
    assert [d["due_at"] for d in await store.due_escalations(
        6_000, 10, None, DueShare(2, 3, 4_000))] == [3_000, 5_000]  # 3,000 is late: anyone's
    closed = record.resolved(opened[0], "call ended", 100)
    user = new_user("supervisor")
    [told] = await store.insert_many([draft(user, "critical", type="call_escalation",
                                            escalation=record.notification_part(opened[0], 0, 0))])
    await changed(store, (closed, opened[0]["version"]))
    await store.add_escalation_events([{"escalation_id": closed["_id"], "at": 100,
                                        "event": "resolved", "step": 0}])
    assert await store.delete_finished_escalations(200) == 1
    assert await store.escalation(closed["_id"]) is None
    kept = await store.get(user, told.document["_id"])  # as it ended, once forgotten
    assert shown_of(kept["escalation"])["resolution"] == "call ended"
    assert await store.escalation_events(closed["_id"]) == []
    assert await store.escalation(opened[1]["_id"]) is not None


async def changed(store, *changes: tuple[dict, int]) -> list[bool]:
    """`change_escalations` of (document, expected version) pairs: which were stored."""
    results = await store.change_escalations(
        [EscalationChange(document, expected) for document, expected in changes])
    return [result is not None for result in results]


@bounded
async def test_a_steps_notifications_and_lines_are_stored_with_its_change_or_not_at_all(open_store):
    from mojavox_notify.escalations import record
    from mojavox_notify.escalations.policy import Action
    store = await open_store()
    documents = [(await store.open_escalation(
        _escalation(tenants.key(tenants.DEFAULT, f"call:step-{index}"))))[0] for index in range(2)]
    taken = record.acknowledged(documents[1], "bob", 1_900_000)  # before its step: it wins
    assert await changed(store, (taken, documents[1]["version"])) == [True]
    managers = [new_user("manager") for _ in range(2)]
    steps = [record.step_started(document, Action(0, 1), 2_000_000) for document in documents]
    requests = [EscalationChange(
        step, document["version"], drafts=[draft(manager, "critical", type="call_escalation",
                      escalation=record.notification_part(step, 1, 0))],
        push=[False], events=[{"escalation_id": step["_id"], "at": 2_000_000,
                               "event": "escalated", "step": 1}])
        for step, document, manager in zip(steps, documents, managers)]
    at = datetime(2026, 12, 2, 8, 0, tzinfo=timezone.utc)
    won, refused = await store.change_escalations(requests, created_at=at)
    assert refused is None, "its version moved on: neither the change nor its notifications"
    [record_] = won
    assert record_.document["user_id"] == managers[0] and record_.document["created_at"] == at
    assert record_.state.seq == 1 and record_.state.unread["critical"] == 1
    stored = await store.get(managers[0], record_.document["_id"])
    assert stored["escalation"]["step"] == 1 and shown_of(stored["escalation"])["step"] == 1
    assert (await store.escalation(documents[0]["_id"]))["step"] == 1
    assert [e["event"] for e in await store.escalation_events(documents[0]["_id"])] == ["escalated"]
    assert (await store.list(managers[1], 10, 0, False))[0] == []
    assert await store.escalation_events(documents[1]["_id"]) == []
    assert (await store.escalation(documents[1]["_id"]))["state"] == "acknowledged"


@bounded
async def test_a_batch_giving_way_stores_each_change_with_its_own_across_its_parts(open_store):
    """The timers' batches (`giving_way`): the SQLite engine commits them in parts of 25, so
    a create may go between two; each change still wins or loses with all that is its own."""
    from mojavox_notify.escalations import record
    from mojavox_notify.escalations.policy import Action
    store = await open_store()
    documents = [(await store.open_escalation(
        _escalation(tenants.key(tenants.DEFAULT, f"call:batch-{index}"))))[0] for index in range(60)]
    taken = record.acknowledged(documents[37], "bob", 1_900_000)  # in the second part: it wins
    assert await changed(store, (taken, documents[37]["version"])) == [True]
    manager = new_user("manager")
    requests = []
    for document in documents:
        step = record.step_started(document, Action(0, 1), 2_000_000)
        requests.append(EscalationChange(
            step, document["version"], push=[False],
            drafts=[draft(manager, "critical", type="call_escalation",
                          escalation=record.notification_part(step, 1, 0))],
            events=[{"escalation_id": step["_id"], "at": 2_000_000, "event": "escalated",
                     "step": 1}]))
    results = await store.change_escalations(requests, giving_way=True)
    assert [index for index, result in enumerate(results) if result is None] == [37]
    assert [r.state.seq for result in results if result for r in result] == list(range(1, 60))
    page, total = await store.list(manager, 100, 0, False)
    assert total == 59 and {n["escalation"]["id"] for n in page} == {
        d["_id"] for index, d in enumerate(documents) if index != 37}
    assert (await store.escalation(documents[37]["_id"]))["state"] == "acknowledged"
    assert await store.escalation_events(documents[37]["_id"]) == []
    assert [e["event"] for e in await store.escalation_events(documents[59]["_id"])] == ["escalated"]


@bounded
async def test_several_event_ids_are_claimed_in_one_call_and_taken_ones_answer_with_their_record(
        open_store):
    store = await open_store()
    done = await claimed(store, new_user("event"))
    await store.complete_event(done, ["n-1"])
    pending = await claimed(store, new_user("event"))
    fresh = [new_user("event") for _ in range(3)]
    asked = [(fresh[0], "payment.received", "me"), (done.key, "payment.received", "me"),
             (fresh[1], "call.completed", "me"), (pending.key, "payment.received", "me"),
             (fresh[2], "payment.received", "me")]
    earlier = await store.claim_events(asked)
    assert [record is None for record in earlier] == [True, False, True, False, True]
    assert earlier[1]["state"] == "done" and earlier[1]["notifications"] == ["n-1"]
    assert earlier[3]["state"] == "pending" and earlier[3]["owner"] == pending.owner
    for key in fresh:
        assert (await store.event(key))["owner"] == "me"
    assert (await store.event(fresh[1]))["type"] == "call.completed"
    assert await store.claim_events([]) == []


@bounded
async def test_groups_are_stored_each_under_its_claim_and_a_lost_claim_stores_only_nothing_of_its_own(
        open_store):
    store = await open_store()
    alice, bob = new_user(), new_user()
    kept = [await claimed(store, new_user("event")) for _ in range(3)]
    lost = await claimed(store, new_user("event"))
    await store.release_event(lost)
    groups = [([draft(alice, message="a0"), draft(bob, message="b0")], kept[0], ()),
              ([draft(alice, message="lost")], lost, ()),
              ([], kept[1], ()),
              ([draft(bob, message="b1")], kept[2], (True,)),
              ([draft(alice, message="a1")], None, ())]
    results = await store.insert_groups(groups)
    assert isinstance(results[1], ClaimLostError)
    assert results[2] == []
    assert [r.document["message"] for r in results[0]] == ["a0", "b0"]
    assert [r.document["message"] for r in results[3]] == ["b1"]
    assert [r.document["message"] for r in results[4]] == ["a1"]
    assert all(r.document["event_id"] == kept[0].key for r in results[0])
    assert results[4][0].document.get("event_id") is None
    assert (await store.event(kept[0].key))["notifications"] == [
        str(r.document["_id"]) for r in results[0]]
    assert (await store.event(kept[2].key))["state"] == "done"
    assert (await store.event(kept[1].key))["state"] == "pending", "an empty group is left out"
    assert [d["message"] for d in await store.after(alice, 0, 10)] == ["a0", "a1"]
    assert [d["seq"] for d in await store.after(bob, 0, 10)] == [1, 2]
    for user in (alice, bob):
        assert await store.state(user) == await recount(store, user)
