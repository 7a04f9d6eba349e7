"""Keepalive for live sockets: a ping every `ping_interval_seconds`, and a socket whose pong has
not come `ping_timeout_seconds` after its ping is closed (a dead peer, a lost network).

One timer for the whole process instead of tornado's pinging, which gives every socket a task,
its coroutine, a sleeping future and a timer handle (about 1 KB of each idle socket). Sockets
wait in a wheel of TICK-second slots, each socket in one slot at a time: due for its next ping,
or due to have answered the last one.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

log = logging.getLogger(__name__)

TICK = 0.25  # seconds: how precisely pings and timeouts keep their times


class Pinged(Protocol):
    heartbeat_slot: int

    def send_ping(self) -> bool:
        """Send a ping; False when the socket is already closed."""

    def close(self, code: int | None = None, reason: str | None = None) -> None: ...


class Heartbeat:
    def __init__(self, interval: float, timeout: float):
        self._interval = max(1, round(interval / TICK))  # in ticks
        self._timeout = max(1, round(timeout / TICK))
        self._slots: dict[int, set[Pinged]] = {}
        self._pinged: dict[Pinged, int] = {}  # awaiting a pong: the tick their ping went at
        self._done = 0  # the last tick processed
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._done = self._tick_now()
        self._schedule()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def add(self, socket: Pinged) -> None:
        """A socket that went live: its first ping one interval from now."""
        self._put(socket, self._done + self._interval)

    def remove(self, socket: Pinged) -> None:
        self._take_out(socket)
        self._pinged.pop(socket, None)

    def ponged(self, socket: Pinged) -> None:
        """Its pong came: the next ping one interval after the last one."""
        pinged_at = self._pinged.pop(socket, None)
        if pinged_at is None:  # a pong nobody asked for (RFC 6455 allows them)
            return
        self._take_out(socket)
        self._put(socket, max(pinged_at + self._interval, self._done + 1))

    def __len__(self) -> int:
        return sum(len(slot) for slot in self._slots.values())

    def sockets(self) -> list[Pinged]:
        """Every live socket it keeps alive (the handlers themselves, not their sessions)."""
        return [socket for slot in self._slots.values() for socket in slot]

    def _put(self, socket: Pinged, tick: int) -> None:
        socket.heartbeat_slot = tick
        slot = self._slots.get(tick)
        if slot is None:
            slot = self._slots[tick] = set()
        slot.add(socket)

    def _take_out(self, socket: Pinged) -> None:
        slot = self._slots.get(getattr(socket, "heartbeat_slot", None))
        if slot is not None:
            slot.discard(socket)

    def _tick_now(self) -> int:
        return int(asyncio.get_running_loop().time() / TICK)

    def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at((self._done + 1) * TICK, self._run)

    def _run(self) -> None:
        """Every slot due since the last run (a loop held up for a while catches up)."""
        now = self._tick_now()
        while self._done < now:
            self._done += 1
            for socket in self._slots.pop(self._done, ()):
                try:
                    self._beat(socket)
                except Exception:  # one socket's failure must not stop every socket's keepalive
                    log.exception("keepalive of a socket failed")
                    self._pinged.pop(socket, None)
        self._schedule()

    def _beat(self, socket: Pinged) -> None:
        if self._pinged.pop(socket, None) is not None:  # its pong was due by now
            socket.close(None, "ping timed out")
            return
        if socket.send_ping():
            self._pinged[socket] = self._done
            self._put(socket, self._done + self._timeout)
