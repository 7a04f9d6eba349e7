"""This process's live sockets, by user: constant-time routing of broker messages to them.

The hub never touches storage and never blocks: what it calls on a connection only queues.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, Callable, Iterator, Protocol

from . import tenants
from .broadcasts import BroadcastBoard
from .broker.messages import (AllRead, BroadcastPosted, EscalationChanged, Message,
                              NotificationCreated, NotificationDeleted, NotificationRead, Resync)


class Connection(Protocol):
    """What the hub needs of a socket; every call only queues and must not block."""

    user_id: str  # a user key (tenants.key)
    tenant: str
    remote_ip: str

    def notify(self, message: NotificationCreated) -> None:
        """A new notification of this socket's user."""

    def notification_read(self, message: NotificationRead) -> None: ...

    def all_read(self, message: AllRead) -> None: ...

    def notification_deleted(self, message: NotificationDeleted) -> None: ...

    def broadcast(self, payload: dict[str, Any]) -> None:
        """An announcement for every socket."""

    def escalation(self, payload: dict[str, Any]) -> None:
        """An escalation this socket's user receives changed (its payload as it is now)."""

    def resync(self) -> None:
        """Live messages may have been missed: fill the gap from storage."""

    def shutdown(self, code: int, reason: str) -> None:
        """Send what is queued, then close with a WebSocket close code."""


def broadcast_each(connections: list[Connection], payload: dict[str, Any]) -> None:
    for connection in connections:
        connection.broadcast(payload)


class Hub:
    """The one place that tells the broker's message kinds apart."""

    def __init__(self, deliver_to_all: Callable[[list[Connection], dict[str, Any]], None]
                 = broadcast_each) -> None:
        """`deliver_to_all(connections, payload)` hands a broadcast to every connection (the
        socket layer may do it in bulk)."""
        self._deliver_to_all = deliver_to_all
        # A list per user, not a set: most users have one socket (a list of one is 72 bytes, a
        # set 216), and at most websocket.max_sockets_per_user.
        self._by_user: dict[str, list[Connection]] = {}
        self._by_address: Counter[str] = Counter()
        #: Told of every attach (`joined(connection)`) and detach (`left(connection)`), e.g.
        #: presence across instances; they must not block.
        self.observers: list = []
        #: The broadcasts still active: a connecting socket is shown them after `connected`.
        self.broadcasts = BroadcastBoard()
        #: Told how long each broadcast's fan-out took (seconds), e.g. for /metrics.
        self.on_fan_out: Callable[[float], None] = lambda seconds: None
        #: Told when every socket resyncs: broadcasts published meanwhile may be in storage only.
        self.on_resync_all: Callable[[], None] = lambda: None

    def attach(self, connection: Connection) -> None:
        connections = self._by_user.setdefault(connection.user_id, [])
        if connection in connections:
            return
        connections.append(connection)
        self._by_address[connection.remote_ip] += 1
        for observer in self.observers:
            observer.joined(connection)

    def detach(self, connection: Connection) -> None:
        connections = self._by_user.get(connection.user_id)
        if connections is None or connection not in connections:
            return
        connections.remove(connection)
        if not connections:
            del self._by_user[connection.user_id]
        self._by_address[connection.remote_ip] -= 1
        if not self._by_address[connection.remote_ip]:
            del self._by_address[connection.remote_ip]
        for observer in self.observers:
            observer.left(connection)

    def dispatch(self, message: Message) -> None:
        """Hand `message` to the sockets it is for on this process (a copy of the list, since
        delivering may close and detach a socket). A broadcast goes to every socket, once: only
        when it is new on the board."""
        match message:
            case NotificationCreated():
                for connection in self._of(message.user_id):
                    connection.notify(message)
            case NotificationRead():
                for connection in self._of(message.user_id):
                    connection.notification_read(message)
            case AllRead():
                for connection in self._of(message.user_id):
                    connection.all_read(message)
            case NotificationDeleted():
                for connection in self._of(message.user_id):
                    connection.notification_deleted(message)
            case BroadcastPosted():
                if self.broadcasts.remember(message.broadcast, message.audience):
                    started = time.perf_counter()
                    self._deliver_to_all(self._audience(message.audience), message.broadcast)
                    self.on_fan_out(time.perf_counter() - started)
            case EscalationChanged():
                for user_id in message.recipients:
                    for connection in self._of(user_id):
                        connection.escalation(message.escalation)
            case Resync():
                self.resync(message.users)
                if message.users is None:
                    self.on_resync_all()

    def _of(self, user_id: str) -> tuple[Connection, ...]:
        return tuple(self._by_user.get(user_id, ()))

    def _audience(self, audience: str) -> list[Connection]:
        if audience == tenants.EVERYONE:
            return list(self.connections())
        return [connection for connection in self.connections() if connection.tenant == audience]

    def resync(self, users: list[str] | None = None) -> None:
        if users is None:
            targets = list(self.connections())
        else:
            targets = [c for user in users for c in self._of(user)]
        for connection in targets:
            connection.resync()

    def connections(self) -> Iterator[Connection]:
        for connections in tuple(self._by_user.values()):
            yield from tuple(connections)

    def connections_of(self, user_id: str) -> int:
        return len(self._by_user.get(user_id, ()))

    def connections_from(self, address: str) -> int:
        return self._by_address.get(address, 0)

    @property
    def users(self) -> int:
        return len(self._by_user)

    def __len__(self) -> int:
        return sum(len(connections) for connections in self._by_user.values())

    def shutdown_all(self, code: int, reason: str) -> None:
        for connection in self.connections():
            connection.shutdown(code, reason)
