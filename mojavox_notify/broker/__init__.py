"""Fan-out between the service and every process's hub.

`messages` defines what travels (one class per kind, with its wire form), `base` the interface,
`local` the single-process broker, `pubsub` what every multi-process backend shares, and
`redis` the Redis one.
"""

from __future__ import annotations

from ..redis_link import RedisLink
from ..supervision import Supervisor
from .base import Broker, Receiver
from .local import InProcessBroker
from .redis import RedisBroker

__all__ = ["Broker", "InProcessBroker", "Receiver", "RedisBroker", "build_broker"]


def build_broker(link: RedisLink | None, supervisor: Supervisor | None = None) -> Broker:
    return InProcessBroker() if link is None else RedisBroker(link, supervisor)
