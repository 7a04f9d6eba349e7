"""The records everything passes around, and their stored forms.

Notification types (a plugin registers them; each is a socket channel), a validated `Draft` and
`BroadcastDraft`, a user's `ChannelPreference`, a `PushSubscription`, a domain `Event`; and the
document the store keeps of a new notification or broadcast (snake_case). What clients send and
receive (camelCase JSON, its schemas and checks) is in `wire/`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

from . import tenants
from .ids import new_object_id

PRIORITIES = ("low", "medium", "high", "critical")
# Stored as the expiry of notifications that never expire, so every query is a plain range.
NEVER = datetime(9999, 12, 31, tzinfo=timezone.utc)
TYPE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


@dataclass(frozen=True)
class NotificationType:
    """A kind of notification a plugin registers: also a WebSocket channel name."""

    name: str
    default_priority: str
    description: str = ""
    plugin: str = ""


class NotificationTypes:
    """The registered types; filled from the plugins' `mojavox_register_types` hook."""

    def __init__(self, types: Iterable[NotificationType] = ()):
        self._types: dict[str, NotificationType] = {}
        self._all: frozenset[str] | None = None
        for notification_type in types:
            self.register(notification_type)

    @property
    def all(self) -> frozenset[str]:
        """Every type's name: the `all` channel, one set shared by every socket on it."""
        if self._all is None:
            self._all = frozenset(self._types)
        return self._all

    def register(self, notification_type: NotificationType) -> None:
        name = notification_type.name
        if not isinstance(name, str) or not TYPE_NAME.match(name):
            raise ValueError(f"notification type name {name!r} must match {TYPE_NAME.pattern}")
        if name == "all":
            raise ValueError("'all' is reserved for the channel of every type")
        if notification_type.default_priority not in PRIORITIES:
            raise ValueError(f"notification type {name}: default priority must be one of "
                             f"{', '.join(PRIORITIES)}")
        existing = self._types.get(name)
        if existing and _settings_of(existing) != _settings_of(notification_type):
            raise ValueError(f"notification type {name} is registered twice "
                             f"({existing.plugin or 'core'} and {notification_type.plugin or 'core'})")
        self._types[name] = notification_type
        self._all = None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._types

    def __iter__(self):
        return iter(self._types.values())

    def __len__(self) -> int:
        return len(self._types)

    def get(self, name: str) -> NotificationType:
        return self._types[name]

    @property
    def names(self) -> list[str]:
        return sorted(self._types)


def _settings_of(notification_type: NotificationType) -> tuple[str, str, str]:
    """What must agree when two plugins register one type (which plugin it is may differ)."""
    return (notification_type.name, notification_type.default_priority,
            notification_type.description)


@dataclass(slots=True)  # not frozen: made per notification, and frozen ones cost 3× to make
class Draft:
    """A validated, sanitized request to notify one user (`user_id`: a user key, tenants.key),
    or every member of a `topic` (a topic key; `user_id` is then empty until it is expanded).
    `escalation_key` names the business matter a draft of an escalating type is about
    (`call:<callId>`); `escalation` is set once the draft belongs to an escalation
    (`{id, step, round, shown}`, stored with the notification)."""

    user_id: str
    type: str
    title: str
    message: str
    priority: str
    data: dict[str, Any] = field(default_factory=dict)
    action_url: str | None = None
    expires_at: datetime | None = None
    topic: str | None = None
    escalation_key: str | None = None
    escalation: dict[str, Any] | None = None

    def to(self, user_id: str) -> "Draft":
        """The same notification for another (validated) recipient."""
        return Draft(user_id, self.type, self.title, self.message, self.priority, self.data,
                     self.action_url, self.expires_at, escalation_key=self.escalation_key,
                     escalation=self.escalation)


@dataclass(slots=True)
class BroadcastDraft:
    """A validated announcement to every connected dashboard user: not one user's notification
    (no seq, no unread count), shown while it lasts."""

    title: str
    message: str
    priority: str
    ttl_seconds: int
    data: dict[str, Any] = field(default_factory=dict)
    action_url: str | None = None
    audience: str = tenants.DEFAULT  # or tenants.EVERYONE


@dataclass(frozen=True)
class ChannelPreference:
    """A user's choice for one type: whether it is created at all, and whether it may be pushed
    to their browsers. As stored, None means "never chosen": the default applies."""

    enabled: bool | None = None
    push: bool | None = None

    def over(self, default: "ChannelPreference") -> "ChannelPreference":
        """This choice, with the default where none was made."""
        return ChannelPreference(
            enabled=default.enabled if self.enabled is None else self.enabled,
            push=default.push if self.push is None else self.push)


def default_preferences(types: NotificationTypes,
                        push_priorities: Iterable[str]) -> dict[str, ChannelPreference]:
    """Every type enabled; pushed when its default priority is one of `push_priorities`
    (settings: push.default_priorities, high and critical)."""
    pushed = set(push_priorities)
    return {t.name: ChannelPreference(enabled=True, push=t.default_priority in pushed)
            for t in types}


@dataclass(frozen=True)
class PushSubscription:
    endpoint: str
    p256dh: str
    auth: str


@dataclass(frozen=True)
class Event:
    """A domain event from a MOJAVOX service, as plugins receive it."""

    type: str
    data: dict[str, Any]
    id: str | None = None
    occurred_at: datetime | None = None
    tenant: str = tenants.DEFAULT  # whose users its notifications are for


def utcnow() -> datetime:
    """Now, in UTC, truncated to the millisecond that BSON dates keep."""
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return _iso(moment)


@functools.lru_cache(maxsize=256)
def _iso(moment: datetime) -> str:
    """Memoized: the notifications of one batch (a 1,000-user alert) share their time."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_document(draft: Draft, created_at: datetime, seq: int, event_id: str | None = None) -> dict:
    """The stored form of a new notification; `seq` orders one user's notifications."""
    document = {
        "_id": new_object_id(),
        "user_id": draft.user_id,
        "seq": seq,
        "type": draft.type,
        "title": draft.title,
        "message": draft.message,
        "priority": draft.priority,
        "data": draft.data,
        "action_url": draft.action_url,
        "read": False,
        "read_at": None,
        "created_at": created_at,
        "expires_at": draft.expires_at or NEVER,
    }
    if event_id is not None:
        document["event_id"] = event_id
    if draft.escalation is not None:
        document["escalation"] = draft.escalation
    return document


def to_broadcast_document(draft: BroadcastDraft, created_at: datetime) -> dict:
    """The stored form of a new broadcast: kept until `expires_at`."""
    return {
        "_id": new_object_id(),
        "title": draft.title,
        "message": draft.message,
        "priority": draft.priority,
        "data": draft.data,
        "action_url": draft.action_url,
        "created_at": created_at,
        "expires_at": created_at + timedelta(seconds=draft.ttl_seconds),
        "audience": draft.audience,
    }
