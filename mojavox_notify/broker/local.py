"""One instance, no network hop: published messages go straight to this process's hub."""

from __future__ import annotations

from .base import Broker, Receiver, deliver
from .messages import Message


class InProcessBroker(Broker):
    name = "in-process"

    def __init__(self) -> None:
        self._receiver: Receiver | None = None

    async def start(self, receiver: Receiver) -> None:
        self._receiver = receiver

    async def publish_many(self, messages: list[Message]) -> None:
        for message in messages:
            deliver(self._receiver, message)

    async def stop(self) -> None:
        self._receiver = None
