"""Fan-out between the service and every process's hub.

The service publishes a message addressed to one user after it has persisted the change; every
instance's hub receives it and hands it to that user's sockets. The hub only knows the `Broker`
interface: the in-process broker serves a single instance, a Redis one serves several.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Any, Callable

log = logging.getLogger(__name__)

Message = dict[str, Any]
Receiver = Callable[[Message], None]


class Broker(ABC):
    """Publish user-addressed messages; deliver every published message to the receiver."""

    name = "broker"

    @abstractmethod
    async def start(self, receiver: Receiver) -> None:
        """Begin delivering published messages to `receiver` (which must not block)."""

    @abstractmethod
    async def publish(self, message: Message) -> None:
        """Send `message` (a JSON-able dict with a `user_id`) to every instance's receiver."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop delivering; pending messages may be dropped."""

    @property
    def healthy(self) -> bool:
        return True


class InProcessBroker(Broker):
    """Delivers straight to this process's receiver: one instance, no network hop."""

    name = "in-process"

    def __init__(self) -> None:
        self._receiver: Receiver | None = None

    async def start(self, receiver: Receiver) -> None:
        self._receiver = receiver

    async def publish(self, message: Message) -> None:
        if self._receiver is None:
            return
        try:
            self._receiver(message)
        except Exception:  # a broken receiver must not fail the publisher's request
            log.exception("delivering a %s message failed", message.get("kind"))

    async def stop(self) -> None:
        self._receiver = None
