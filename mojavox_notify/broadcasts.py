"""This process's board of active broadcasts: what every socket is shown, with no storage read.

A broadcast is an announcement to every connected dashboard user (maintenance tonight, the
dialer is down), stored once rather than per user. Sockets get each one as it is published and,
when they connect later, the ones still active right after `connected`. The board is filled by
the broker's `broadcast` messages and from storage at start and after the broker was away; a
broadcast leaves it when it expires.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any, Callable

from .wire.broadcast import MAX_ACTIVE



class BroadcastBoard:
    def __init__(self, clock: Callable[[], float] = time.time):
        self._clock = clock
        self._active: dict[str, tuple[float, dict[str, Any]]] = {}  # id → (expiry, payload)

    def remember(self, payload: dict[str, Any]) -> bool:
        """Put a broadcast on the board; whether it is new there and not expired (only then is
        it for the sockets: one the board holds has reached them already)."""
        if payload["id"] in self._active:
            return False
        expires = datetime.fromisoformat(payload["expiresAt"]).timestamp()
        if expires <= self._clock():
            return False
        self._active[payload["id"]] = (expires, payload)
        if len(self._active) > MAX_ACTIVE:
            oldest = min(self._active, key=lambda key: _order(self._active[key][1]))
            del self._active[oldest]
            return oldest != payload["id"]
        return True

    def active(self) -> list[dict[str, Any]]:
        """The broadcasts not yet expired, oldest first (as they were published)."""
        now = self._clock()
        for key in [key for key, (expires, _) in self._active.items() if expires <= now]:
            del self._active[key]
        return sorted((payload for _, payload in self._active.values()), key=_order)

    def __len__(self) -> int:
        return len(self._active)


def _order(payload: dict[str, Any]) -> tuple[str, str]:
    """Publication order: the time, then the id (ObjectIds of one process grow)."""
    return payload["timestamp"], payload["id"]
