"""The interface the service publishes through and the hub receives from.

The service publishes messages after it has persisted the change; every instance's hub receives
them and hands them to the sockets concerned. The hub only knows `Broker`: the in-process one
serves a single instance, the pub/sub ones (Redis) several processes and hosts.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Any, Callable

from .messages import Message

log = logging.getLogger(__name__)

Receiver = Callable[[Message], None]


class Broker(ABC):
    """Publish messages; deliver every published message to the receiver."""

    name = "broker"

    @abstractmethod
    async def start(self, receiver: Receiver) -> None:
        """Begin delivering published messages to `receiver` (which must not block)."""

    async def publish(self, message: Message) -> None:
        """Send `message` to every instance's receiver."""
        await self.publish_many([message])

    @abstractmethod
    async def publish_many(self, messages: list[Message]) -> None:
        """Send several messages, in order (one round trip where the backend allows)."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop delivering; pending messages may be dropped."""

    @property
    def healthy(self) -> bool:
        return True

    def report(self) -> dict[str, Any]:
        """For /healthz: `ok`, `backend` and, when not ok, the error (cached state, no I/O)."""
        return {"ok": self.healthy, "backend": self.name}


def deliver(receiver: Receiver | None, message: Message) -> None:
    if receiver is None:
        return
    try:
        receiver(message)
    except Exception:  # a broken receiver must not fail the publisher's request
        log.exception("delivering a %s message failed", message.KIND)
