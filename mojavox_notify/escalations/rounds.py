"""The escalation timers' rounds: due steps read and prepared ahead of their time, and the
rounds held until they are due (escalations/timers.py stores them then)."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from dataclasses import dataclass
from typing import Any

from ..service import Prepared
from .service import now_ms


@dataclass
class Round:
    """Due escalations read and prepared (`EscalationTimers._take`), to store once the last of
    them is due (`fire_at`); what depends on the moment it is stored is set then."""

    changes: list[tuple[dict[str, Any], dict[str, Any]]]  # (as read, as changed)
    told: list[dict[str, Any]]  # the changes clients see
    recipients: dict[str, list[dict[str, Any]]]
    shown: dict[str, dict[str, Any]]
    prepared: Prepared
    of_escalation: dict[str, list[int]]  # escalation id -> its drafts among prepared.wanted
    fire_at: int

    @property
    def ids(self) -> list[str]:
        return [changed["_id"] for _, changed in self.changes]


class HeldRounds:
    """The rounds prepared ahead, earliest `fire_at` first, and the escalations they hold (a
    scan skips those: they are prepared already)."""

    def __init__(self):
        self._heap: list[tuple[int, int, Round]] = []
        self._order = itertools.count()
        self._ids: set[str] = set()
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, escalation_id: str) -> bool:
        return escalation_id in self._ids

    def add(self, rounds: list[Round]) -> None:
        for taken in rounds:
            heapq.heappush(self._heap, (taken.fire_at, next(self._order), taken))
            self._ids.update(taken.ids)
        if rounds:
            self._changed.set()

    def release(self, rounds: list[Round]) -> None:
        for taken in rounds:
            self._ids.difference_update(taken.ids)

    def late(self, before_ms: int) -> bool:
        """Whether a round due before `before_ms` is still waiting to be stored."""
        return bool(self._heap) and self._heap[0][0] < before_ms

    async def due(self, limit: int) -> list[Round]:
        """Once the earliest round is due: the rounds due now, at most `limit` escalations
        (and at least one round)."""
        while True:
            now = now_ms()
            if self._heap and self._heap[0][0] <= now:
                rounds, count = [], 0
                while self._heap and self._heap[0][0] <= now and (
                        not rounds or count + len(self._heap[0][2].changes) <= limit):
                    taken = heapq.heappop(self._heap)[2]
                    rounds.append(taken)
                    count += len(taken.changes)
                return rounds
            self._changed.clear()
            try:
                async with asyncio.timeout((self._heap[0][0] - now) / 1000 if self._heap else None):
                    await self._changed.wait()
            except TimeoutError:
                pass
