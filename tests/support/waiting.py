"""Polling until a condition holds: `wait_for` from plain (blocking) test code, `wait_until` on
the event loop."""

from __future__ import annotations

import asyncio
import time


def wait_for(predicate, timeout: float, interval: float = 0.1) -> bool:
    """Whether `predicate()` became true within `timeout` seconds (it blocks the thread)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


async def wait_until(condition, timeout: float) -> None:
    """Wait on the loop until `condition()` is true; an AssertionError after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)
