"""The MongoDB engine's collections by role, and what its documents hold that callers do not see
as is: counters in flat integer fields, times as epoch milliseconds where they are compared.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Protocol

from pymongo.asynchronous.collection import AsyncCollection

from ...model import NEVER, PRIORITIES
from .. import UserState

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


#: MongoDB's error code for a write that broke a unique index.
DUPLICATE_KEY = 11000


class Collections(Protocol):
    """The engine's collections, as `MongoStore` holds them (`states` is `user_state`,
    `preferences` is `channel_settings`, `memberships` is `topic_members`); what insertion.py
    and schema.py are given."""

    notifications: AsyncCollection
    states: AsyncCollection
    preferences: AsyncCollection
    push_subscriptions: AsyncCollection
    events: AsyncCollection
    push_outbox: AsyncCollection
    meta: AsyncCollection
    broadcasts: AsyncCollection
    memberships: AsyncCollection
    escalation_records: AsyncCollection  # escalations
    escalation_lines: AsyncCollection  # escalation_events


def to_ms(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(milliseconds=1)


NEVER_MS = to_ms(NEVER)


def _state(document: dict | None) -> UserState:
    if document is None:
        return UserState()
    return UserState(seq=document.get("seq", 0), total=document.get("total", 0),
                     unread={p: document.get(f"unread_{p}", 0) for p in PRIORITIES})
