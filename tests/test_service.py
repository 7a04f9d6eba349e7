"""The service on its own: what it stores and what it publishes for each use case, with the
embedded storage and a broker whose receiver is a list (no HTTP, no socket)."""

from __future__ import annotations

import time

import pytest

from mojavox_notify.app import NotifyApp
from mojavox_notify.broker.messages import (AllRead, BroadcastPosted, NotificationCreated,
                                            NotificationDeleted, NotificationRead)
from mojavox_notify.errors import NotFoundError, ValidationError

pytestmark = pytest.mark.parametrize("storage_engine", ["sqlite"], indirect=True)


@pytest.fixture
async def published(make_settings):
    """(the service, the messages it published, in order)."""
    app = NotifyApp(make_settings())
    await app.open_storage()
    heard: list = []
    await app.broker.start(heard.append)
    yield app.service, heard
    await app.broker.stop()
    await app.store.close()


def _draft(user_id="alice", **fields):
    return {"userId": user_id, "type": "payment_received", "title": "Payment received",
            "message": "$50.00 from account 4411", **fields}


async def test_a_creation_is_stored_then_published_with_its_seq_and_counts(published):
    service, heard = published
    before = time.time()
    first = await service.create(_draft(priority="critical"))
    second = await service.create(_draft(title="<b>Second</b> payment"))
    assert second["title"] == "Second payment"  # markup removed
    assert [type(message) for message in heard] == [NotificationCreated] * 2
    assert [(m.user_id, m.seq, m.notification["id"]) for m in heard] == [
        ("alice", 1, first["id"]), ("alice", 2, second["id"])]
    assert heard[-1].unread["count"] == 2 and heard[-1].unread["byPriority"]["critical"] == 1
    assert all(before <= message.at <= time.time() for message in heard)
    assert await service.get("alice", first["id"]) == first  # what was published reads back


async def test_a_muted_type_is_not_created_unless_it_is_critical(published):
    service, heard = published
    await service.update_preferences("alice", {"channels": {"payment_received": {"enabled": False}}})
    assert await service.create(_draft()) is None
    assert heard == []
    assert (await service.create(_draft(priority="critical")))["priority"] == "critical"
    assert len(heard) == 1


async def test_reads_and_deletions_publish_their_change_with_the_counts_after_it(published):
    service, heard = published
    created = [await service.create(_draft()) for _ in range(3)]
    heard.clear()
    await service.mark_read("alice", created[0]["id"])
    await service.delete("alice", created[1]["id"])
    assert await service.mark_all_read("alice") == 1
    assert [type(message) for message in heard] == [NotificationRead, NotificationDeleted, AllRead]
    assert [getattr(message, "notification_id", None) for message in heard] == [
        created[0]["id"], created[1]["id"], None]
    assert [message.unread["count"] for message in heard] == [2, 1, 0]
    with pytest.raises(NotFoundError):
        await service.mark_read("bob", created[2]["id"])  # not bob's
    assert len(heard) == 3


async def test_a_broadcast_is_stored_once_and_published_for_every_socket(published):
    service, heard = published
    payload = await service.broadcast({"title": "Dialer restarts at 22:00",
                                       "message": "Calls pause for five minutes", "ttlSeconds": 60})
    assert heard == [BroadcastPosted(payload, heard[0].at)]
    assert heard[0].addressees is None
    assert await service.active_broadcasts() == [payload]


async def test_an_alerts_drafts_are_checked_each_and_refused_naming_the_field(published):
    service, _ = published
    shared = _draft()
    drafts = service.validate([{**shared, "userId": user} for user in ("a", "b", "c")])
    assert [draft.user_id for draft in drafts] == ["a", "b", "c"]
    with pytest.raises(ValidationError) as refused:  # the second takes the recipient-only check
        service.validate([{**shared, "userId": user} for user in ("a", " b")])
    assert refused.value.field == "userId"
    with pytest.raises(ValidationError) as refused:
        service.validate([_draft(colour="red")])
    assert refused.value.field == "colour" and "unknown field" in refused.value.message
