"""This process's board of active broadcasts: what every socket is shown, with no storage read.

A broadcast is an announcement to every connected dashboard user of its audience (a tenant, or
every tenant: maintenance tonight, the dialer is down), stored once rather than per user.
Sockets get each one as it is published and, when they connect later, the ones still active
right after `connected`. The board is filled by the broker's `broadcast` messages and from
storage at start and after the broker was away; a broadcast leaves it when it expires.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any, Callable

from . import tenants
from .wire.broadcast import MAX_ACTIVE


class BroadcastBoard:
    def __init__(self, clock: Callable[[], float] = time.time):
        self._clock = clock
        # audience → id → (expiry, payload)
        self._active: dict[str, dict[str, tuple[float, dict[str, Any]]]] = {}

    def remember(self, payload: dict[str, Any], audience: str = tenants.DEFAULT) -> bool:
        """Put a broadcast on the board; whether it is new there and not expired (only then is
        it for the sockets: one the board holds has reached them already). Each audience keeps
        its newest MAX_ACTIVE."""
        shown = self._active.setdefault(audience, {})
        if payload["id"] in shown:
            return False
        expires = datetime.fromisoformat(payload["expiresAt"]).timestamp()
        if expires <= self._clock():
            return False
        shown[payload["id"]] = (expires, payload)
        if len(shown) > MAX_ACTIVE:
            oldest = min(shown, key=lambda key: _order(shown[key][1]))
            del shown[oldest]
            return oldest != payload["id"]
        return True

    def active(self, tenant: str = tenants.DEFAULT) -> list[dict[str, Any]]:
        """The broadcasts a socket of `tenant` is shown (its own and everyone's), not yet
        expired, oldest first (as they were published)."""
        now = self._clock()
        for shown in self._active.values():
            for key in [key for key, (expires, _) in shown.items() if expires <= now]:
                del shown[key]
        mine = [*self._active.get(tenant, {}).values(), *self._active.get(tenants.EVERYONE, {}).values()]
        return sorted((payload for _, payload in mine), key=_order)[-MAX_ACTIVE:]

    def __len__(self) -> int:
        return sum(len(shown) for shown in self._active.values())


def _order(payload: dict[str, Any]) -> tuple[str, str]:
    """Publication order: the time, then the id (ObjectIds of one process grow)."""
    return payload["timestamp"], payload["id"]
