"""What the service tells every process's hub, one class per kind, and their wire form.

A message is published only after the change it reports is stored. Each class's fields, in
order, are its wire form: `[kind, field, ...]`, without the trailing empty ones, so no key
names travel. A field added later goes last, with a default, and older messages still decode.

`recipients` are the users whose sockets a message is for; None means every socket (a
broadcast). The hub is the one place that tells the kinds apart.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, ClassVar, Union

import orjson

from .. import tenants

#: Bumped when a kind's fields change other than by one added at the end: a process of another
#: wire version ignores the batch (and says so) instead of misreading it.
WIRE_VERSION = 2


class _ForUser:
    """A message for the sockets of its `user_id`."""

    __slots__ = ()

    @property
    def addressees(self) -> tuple[str, ...] | None:
        return (self.user_id,)  # type: ignore[attr-defined]


class _ForUsers:
    """A message for the sockets of each of its `recipients`."""

    __slots__ = ()

    @property
    def addressees(self) -> tuple[str, ...] | None:
        return tuple(self.recipients)  # type: ignore[attr-defined]


class _ForEveryone:
    """A message for every socket (of its audience)."""

    __slots__ = ()

    @property
    def addressees(self) -> tuple[str, ...] | None:
        return None


@dataclass(frozen=True, slots=True)
class NotificationCreated(_ForUser):
    """A notification was stored for `user_id` as its `seq`-th; `unread` are the counts after it."""

    KIND: ClassVar[str] = "notification"
    user_id: str
    seq: int
    notification: dict[str, Any]
    unread: dict[str, Any]
    at: float | None = None  # when it was published (epoch seconds): the receivers' broker lag


@dataclass(frozen=True, slots=True)
class NotificationRead(_ForUser):
    KIND: ClassVar[str] = "read"
    user_id: str
    notification_id: str
    unread: dict[str, Any]
    at: float | None = None


@dataclass(frozen=True, slots=True)
class AllRead(_ForUser):
    KIND: ClassVar[str] = "read_all"
    user_id: str
    unread: dict[str, Any]
    at: float | None = None


@dataclass(frozen=True, slots=True)
class NotificationDeleted(_ForUser):
    KIND: ClassVar[str] = "deleted"
    user_id: str
    notification_id: str
    unread: dict[str, Any]
    at: float | None = None


@dataclass(frozen=True, slots=True)
class BroadcastPosted(_ForEveryone):
    """An announcement for every socket of its `audience`, a tenant or `tenants.EVERYONE` (its
    payload, as the socket's `broadcast` frame shows it)."""

    KIND: ClassVar[str] = "broadcast"
    broadcast: dict[str, Any]
    at: float | None = None
    audience: str = tenants.DEFAULT


@dataclass(frozen=True, slots=True)
class EscalationChanged(_ForUsers):
    """An escalation changed (acknowledged, escalated, resolved, unanswered): for the sockets
    of every one of its `recipients` (user keys), its `escalation` payload as it is now."""

    KIND: ClassVar[str] = "escalation"
    escalation: dict[str, Any]
    recipients: list[str]
    at: float | None = None


@dataclass(frozen=True, slots=True)
class Resync(_ForEveryone):
    """Live messages may have been missed (the broker was away): the sockets of `users` (None:
    every socket, and the process's broadcasts) fill their gap from storage."""

    KIND: ClassVar[str] = "resync"
    users: list[str] | None = None


Message = Union[NotificationCreated, NotificationRead, AllRead, NotificationDeleted,
                BroadcastPosted, EscalationChanged, Resync]
UserChange = Union[NotificationRead, AllRead, NotificationDeleted]

KINDS: dict[str, type] = {kind.KIND: kind for kind in (
    NotificationCreated, NotificationRead, AllRead, NotificationDeleted, BroadcastPosted,
    EscalationChanged, Resync)}
_FIELDS: dict[type, tuple[str, ...]] = {
    kind: tuple(field.name for field in dataclasses.fields(kind)) for kind in KINDS.values()}


class NotOurs(ValueError):
    """Bytes that are not a batch of this release's messages."""


def encode(origin: str, messages: list[Message]) -> bytes:
    """`<origin>|[version, [kind, field, ...], ...]` (orjson; the standard library for integers
    past 64 bits in a notification's data). The origin comes first so a process skips its own
    batches without decoding them."""
    wire: list[Any] = [WIRE_VERSION]
    for message in messages:
        fields = [message.KIND, *(getattr(message, name) for name in _FIELDS[type(message)])]
        while fields[-1] is None:
            fields.pop()
        wire.append(fields)
    try:
        body = orjson.dumps(wire)
    except orjson.JSONEncodeError:
        body = json.dumps(wire, separators=(",", ":"), ensure_ascii=False).encode()
    return origin.encode() + b"|" + body


def decode(data: bytes) -> tuple[str, list[Message]]:
    """(origin, messages) of `encode`'s output; NotOurs when it is not one."""
    origin, separator, body = data.partition(b"|")
    if not separator:
        raise NotOurs("not a MOJAVOX Notify broker message")
    try:
        wire = orjson.loads(body)
    except orjson.JSONDecodeError:
        try:
            wire = json.loads(body)  # integers past 64 bits
        except ValueError:
            raise NotOurs("not JSON") from None
    if not isinstance(wire, list) or not wire:
        raise NotOurs("not a MOJAVOX Notify broker message")
    if wire[0] != WIRE_VERSION:
        raise NotOurs(f"wire version {wire[0]!r}, this process speaks {WIRE_VERSION}: is a "
                      "process of another release publishing on the same Redis?")
    messages = []
    for fields in wire[1:]:
        kind = KINDS.get(fields[0]) if isinstance(fields, list) and fields else None
        if kind is None:
            raise NotOurs(f"unknown message {str(fields)[:80]}")
        try:
            messages.append(kind(*fields[1:]))
        except TypeError:
            raise NotOurs(f"a {fields[0]} message of {len(fields) - 1} fields") from None
    return origin.decode(), messages
