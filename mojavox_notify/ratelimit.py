"""Token buckets per key (a user id): a burst of up to `per_minute`, refilled evenly."""

from __future__ import annotations

import time
from collections import Counter
from typing import Callable, Iterable

from .errors import RateLimitedError

PRUNE_THRESHOLD = 10_000


class RateLimiter:
    """In-memory, per process. `per_minute == 0` means unlimited."""

    def __init__(self, per_minute: int, what: str, clock: Callable[[], float] = time.monotonic):
        self.per_minute = per_minute
        self.what = what
        self._rate = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self.refused = 0  # for metrics

    def take(self, keys: Iterable[str]) -> None:
        """Take one token per key occurrence, all or none; RateLimitedError names the wait."""
        if not self.per_minute:
            return
        wanted = Counter(keys)
        now = self._clock()
        levels = {key: self._level(key, now) for key in wanted}
        for key, count in wanted.items():
            if levels[key] < count:
                self.refused += 1
                wait = (count - levels[key]) / self._rate
                raise RateLimitedError(f"too many {self.what} for {key}: at most "
                                       f"{self.per_minute} a minute; retry in {wait:.1f}s",
                                       retry_after=wait)
        for key, count in wanted.items():
            self._buckets[key] = (levels[key] - count, now)
        if len(self._buckets) > PRUNE_THRESHOLD:
            self._prune(now)

    def check(self, key: str) -> None:
        """Raise RateLimitedError if `key` has no token left, taking none."""
        if self.per_minute and self._level(key, self._clock()) < 1:
            self.refused += 1
            raise RateLimitedError(f"too many {self.what} from {key}; retry in "
                                   f"{60 / self.per_minute:.1f}s", retry_after=60 / self.per_minute)

    def charge(self, key: str) -> None:
        """Take one token from `key` without refusing anything (counting failures)."""
        if self.per_minute:
            now = self._clock()
            self._buckets[key] = (max(0.0, self._level(key, now) - 1), now)

    def _level(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (float(self.per_minute), now))
        return min(float(self.per_minute), tokens + (now - at) * self._rate)

    def _prune(self, now: float) -> None:
        full = [key for key in self._buckets if self._level(key, now) >= self.per_minute]
        for key in full:
            del self._buckets[key]
