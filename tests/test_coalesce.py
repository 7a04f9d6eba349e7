"""Coalescing: calls queued while one batch is served are served together, each its own answer."""

from __future__ import annotations

import asyncio

import pytest

from mojavox_notify.coalesce import Coalescer

bounded = pytest.mark.timeout(10)


class Server:
    """Serves batches of numbers (doubling them), one at a time, recording each batch."""

    def __init__(self, fail_on: int | None = None):
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        self.fail_on = fail_on

    async def serve(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        await self.release.wait()
        if self.fail_on in items:
            raise RuntimeError(f"cannot serve {self.fail_on}")
        return [item * 2 for item in items]


@bounded
async def test_a_lone_call_is_served_at_once_and_calls_queued_meanwhile_together_next():
    server = Server()
    coalesce = Coalescer(server.serve, limit=100)
    first = asyncio.ensure_future(coalesce(1))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert server.batches == [[1]]
    queued = [asyncio.ensure_future(coalesce(item)) for item in (2, 3, 4)]
    server.release.set()
    assert await first == 2
    assert [await call for call in queued] == [4, 6, 8]
    assert server.batches == [[1], [2, 3, 4]]


@bounded
async def test_a_batch_holds_at_most_limit_by_weight_and_a_heavy_item_goes_alone():
    server = Server()
    server.release.set()
    coalesce = Coalescer(server.serve, limit=10, weight=lambda item: item)
    results = await asyncio.gather(*(coalesce(item) for item in (4, 4, 4, 25, 1)))
    assert results == [8, 8, 8, 50, 2]
    assert server.batches == [[4, 4], [4], [25], [1]]


@bounded
async def test_a_failed_batch_fails_each_of_its_callers_and_the_next_batch_is_still_served():
    server = Server(fail_on=3)
    coalesce = Coalescer(server.serve, limit=100)
    first = asyncio.ensure_future(coalesce(1))
    await asyncio.sleep(0)
    failing = [asyncio.ensure_future(coalesce(item)) for item in (2, 3)]
    server.release.set()
    assert await first == 2
    for call in failing:
        with pytest.raises(RuntimeError, match="cannot serve 3"):
            await call
    assert await coalesce(5) == 10


@bounded
async def test_a_call_whose_caller_gave_up_while_queued_is_never_served():
    server = Server()
    coalesce = Coalescer(server.serve, limit=100)
    first = asyncio.ensure_future(coalesce(1))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert server.batches == [[1]]
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await coalesce(2)
    kept = asyncio.ensure_future(coalesce(3))
    await asyncio.sleep(0)
    server.release.set()
    assert (await first, await kept) == (2, 6)
    assert server.batches == [[1], [3]], "the abandoned call was not served late"


@bounded
async def test_a_batch_of_callers_who_all_gave_up_ends_the_serving_task():
    server = Server()
    server.release.set()
    coalesce = Coalescer(server.serve, limit=100)
    waiting = asyncio.ensure_future(coalesce(1))
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    await asyncio.sleep(0.01)
    assert server.batches == [] and coalesce._serving is None
    assert await coalesce(4) == 8
