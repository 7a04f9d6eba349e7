"""Token buckets per key (a user id): a burst of up to `per_minute`, refilled evenly.

Two engines behind one interface, `await limiter.acquire(keys)`: `RateLimiter` counts in this
process; `RedisRateLimiter` counts in Redis (one Lua script, all keys at once), so several
instances together allow the setting, not N times it. While Redis does not answer, the Redis
engine counts in this process instead of failing or waiting on requests.

`InboundLimit` is the socket's flood control: frames of one client, of every kind, per second.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from typing import Callable, Iterable

from .errors import RateLimitedError
from .redis_link import REDIS_ERRORS, RedisLink

log = logging.getLogger(__name__)

DEFAULT_MAX_KEYS = 100_000


def _limited(what: str, key: str, per_minute: int, wait: float) -> RateLimitedError:
    return RateLimitedError(f"too many {what} for {key}: at most {per_minute} a minute; "
                            f"retry in {wait:.1f}s", retry_after=wait)


class RateLimiter:
    """In-memory, per process. `per_minute == 0` means unlimited.

    At most `max_keys` keys are tracked, whoever sends them (a bound, not only expiry by age:
    an attacker with many addresses fills any window). Past it the table is cut to three
    quarters of it: full buckets first (forgetting one loses nothing, an unknown key starts
    full), then the least recently used; so pruning costs O(1) a take, amortized."""

    def __init__(self, per_minute: int, what: str, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = DEFAULT_MAX_KEYS):
        self.per_minute = per_minute
        self.what = what
        self.max_keys = max_keys
        self._rate = per_minute / 60.0
        self._clock = clock
        # key → (tokens, when counted), least recently used first
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self.refused = 0  # for metrics

    def __len__(self) -> int:
        """Keys tracked."""
        return len(self._buckets)

    async def acquire(self, keys: Iterable[str]) -> None:
        """The engine-independent call: take one token per key occurrence, all or none."""
        self.take(keys)

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
                raise _limited(self.what, key, self.per_minute, (count - levels[key]) / self._rate)
        for key, count in wanted.items():
            self._buckets[key] = (levels[key] - count, now)
            self._buckets.move_to_end(key)
        if len(self._buckets) > self.max_keys:
            self._prune(now)

    def give_back(self, key: str) -> None:
        """Return one token taken from `key` that was not used (a reservation: see the base
        handler's authentication)."""
        if not self.per_minute or key not in self._buckets:
            return
        now = self._clock()
        level = self._level(key, now) + 1
        if level >= self.per_minute:
            del self._buckets[key]  # full: the same as never seen
        else:
            self._buckets[key] = (level, now)

    def _level(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (float(self.per_minute), now))
        return min(float(self.per_minute), tokens + (now - at) * self._rate)

    def _prune(self, now: float) -> None:
        keep = self.max_keys * 3 // 4
        for key in [key for key in self._buckets if self._level(key, now) >= self.per_minute]:
            del self._buckets[key]
        while len(self._buckets) > keep:
            self._buckets.popitem(last=False)


# KEYS: one bucket per key; ARGV: capacity, tokens per millisecond, then the count per key.
# Redis's own clock, so hosts with skewed clocks share one bucket fairly. Returns {1} when the
# tokens were taken, {0, wait_ms, index of the first key short of tokens} otherwise.
TAKE_SCRIPT = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local levels = {}
for i, key in ipairs(KEYS) do
  local bucket = redis.call('HMGET', key, 'tokens', 'at')
  local tokens, at = tonumber(bucket[1]), tonumber(bucket[2])
  if tokens == nil or at == nil then tokens, at = capacity, now end
  local level = math.min(capacity, tokens + math.max(0, now - at) * rate)
  local want = tonumber(ARGV[i + 2])
  if level < want then
    return {0, tostring((want - level) / rate), i}
  end
  levels[i] = level
end
local ttl = math.ceil(capacity / rate) + 1000
for i, key in ipairs(KEYS) do
  redis.call('HSET', key, 'tokens', tostring(levels[i] - tonumber(ARGV[i + 2])), 'at', now)
  redis.call('PEXPIRE', key, ttl)
end
return {1}
"""


class RedisRateLimiter:
    """Counted in Redis across every instance; per process while Redis is away."""

    def __init__(self, link: RedisLink, per_minute: int, what: str,
                 max_keys: int = DEFAULT_MAX_KEYS):
        self.per_minute = per_minute
        self.what = what
        self._link = link
        self._script = link.client.register_script(TAKE_SCRIPT)
        self._local = RateLimiter(per_minute, what, max_keys=max_keys)
        self._refused = 0

    @property
    def refused(self) -> int:
        """Requests refused by this process, counted in Redis or (while it is away) locally."""
        return self._refused + self._local.refused

    async def acquire(self, keys: Iterable[str]) -> None:
        if not self.per_minute:
            return
        wanted = Counter(keys)
        if not wanted:
            return
        if not self._link.available:
            self._local.take(wanted.elements())
            return
        names = list(wanted)
        try:
            answer = await self._script(
                keys=[self._link.key("rate", self.what, name) for name in names],
                args=[self.per_minute, self.per_minute / 60_000.0, *wanted.values()])
        except REDIS_ERRORS as error:
            self._link.down(error)
            self._local.take(wanted.elements())
            return
        if int(answer[0]) == 1:
            return
        wait = float(answer[1]) / 1000.0
        self._refused += 1
        raise _limited(self.what, names[int(answer[2]) - 1], self.per_minute, wait)


def build_rate_limiter(per_minute: int, what: str, link: RedisLink | None,
                       max_keys: int = DEFAULT_MAX_KEYS):
    """Counted in Redis when one is configured, in this process otherwise (at most `max_keys`
    keys tracked in this process)."""
    if link is None:
        return RateLimiter(per_minute, what, max_keys=max_keys)
    return RedisRateLimiter(link, per_minute, what, max_keys)


class InboundLimit:
    """Frames from one client, of every kind (pings and invalid frames too). Past
    `per_second` (a burst of twice that is allowed) a frame is refused unanswered but for one
    `rate_limited` error a second; past `close_above` frames within one second the client is
    flooding and is closed (1008). Either figure 0: no limit of that kind."""

    __slots__ = ("_per_second", "_burst", "_tokens", "_at", "_close_above", "_window",
                 "_in_window", "_told_at")

    def __init__(self, per_second: float, close_above: float):
        self._per_second = per_second
        self._burst = 2 * per_second
        self._tokens = self._burst
        self._close_above = close_above
        self._at = self._window = time.monotonic()
        self._in_window = 0
        self._told_at = float("-inf")

    def admit(self) -> str:
        """"accept", "refuse" (tell the client), "ignore" (refused, already told) or "close"."""
        now = time.monotonic()
        if now - self._window >= 1:
            self._window, self._in_window = now, 0
        self._in_window += 1
        if self._close_above and self._in_window > self._close_above:
            return "close"
        if not self._per_second:
            return "accept"
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._per_second)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return "accept"
        if now - self._told_at >= 1:
            self._told_at = now
            return "refuse"
        return "ignore"
