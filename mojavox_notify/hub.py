"""This process's live sockets, by user: constant-time routing of broker messages to them.

The hub never touches storage and never blocks: a connection's `deliver` only queues.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterator, Protocol

from .broker import Message


class Connection(Protocol):
    user_id: str
    remote_ip: str

    def deliver(self, message: Message) -> None:
        """Queue a broker message for this socket; must not block."""

    def shutdown(self, code: int, reason: str) -> None:
        """Send what is queued, then close with a WebSocket close code."""


class Hub:
    def __init__(self) -> None:
        self._by_user: dict[str, set[Connection]] = {}
        self._by_address: Counter[str] = Counter()

    def attach(self, connection: Connection) -> None:
        self._by_user.setdefault(connection.user_id, set()).add(connection)
        self._by_address[connection.remote_ip] += 1

    def detach(self, connection: Connection) -> None:
        connections = self._by_user.get(connection.user_id)
        if connections is None or connection not in connections:
            return
        connections.discard(connection)
        if not connections:
            del self._by_user[connection.user_id]
        self._by_address[connection.remote_ip] -= 1
        if not self._by_address[connection.remote_ip]:
            del self._by_address[connection.remote_ip]

    def dispatch(self, message: Message) -> None:
        """Hand `message` to every socket of its user on this process (a copy of the set, since
        delivering may close and detach a socket)."""
        for connection in tuple(self._by_user.get(message.get("user_id"), ())):
            connection.deliver(message)

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
