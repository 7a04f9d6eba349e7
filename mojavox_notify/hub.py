"""This process's live sockets, by user: constant-time routing of broker messages to them.

The hub never touches storage and never blocks: a connection's `deliver` only queues.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Iterator, Protocol

from .broadcasts import BroadcastBoard
from .broker import Message


class Connection(Protocol):
    user_id: str
    remote_ip: str

    def deliver(self, message: Message) -> None:
        """Queue a broker message for this socket; must not block."""

    def shutdown(self, code: int, reason: str) -> None:
        """Send what is queued, then close with a WebSocket close code."""

    def resync(self) -> None:
        """Live messages may have been missed: fill the gap from storage (must not block)."""


def deliver_each(connections: list[Connection], message: Message) -> None:
    for connection in connections:
        connection.deliver(message)


class Hub:
    def __init__(self,
                 deliver_to_all: Callable[[list[Connection], Message], None] = deliver_each) -> None:
        """`deliver_to_all(connections, message)` hands a broadcast to every connection (the
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
        """Hand `message` to every socket of its user on this process (a copy of the set, since
        delivering may close and detach a socket). A `resync` message makes the sockets of its
        `users` (None: all) fill what they missed from storage. A `broadcast` goes to every
        socket, once: only when it is new on the board."""
        kind = message.get("kind")
        if kind == "resync":
            self.resync(message.get("users"))
            return
        if kind == "broadcast":
            if self.broadcasts.remember(message["broadcast"]):
                self._deliver_to_all(list(self.connections()), message)
            return
        for connection in tuple(self._by_user.get(message.get("user_id"), ())):
            connection.deliver(message)

    def resync(self, users: list[str] | None = None) -> None:
        if users is None:
            targets = list(self.connections())
        else:
            targets = [c for user in users for c in tuple(self._by_user.get(user, ()))]
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
