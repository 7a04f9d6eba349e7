"""How the MongoDB engine runs its operations: a driver failure becomes StorageUnavailableError
(and is reported), start-up and background work run without the operation timeout, and this
process runs its transactions one at a time (see the package docstring for why).
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from typing import Any, Awaitable, Callable

import pymongo
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from ...errors import StorageUnavailableError


def _storage_errors(method):
    """Any driver failure (a timeout included) becomes a 503 `storage_unavailable` for the
    caller and is reported to the storage watchdog."""
    @functools.wraps(method)
    async def translated(self, *args, **kwargs):
        try:
            return await method(self, *args, **kwargs)
        except PyMongoError as error:
            failure = StorageUnavailableError(f"MongoDB failed: {error}")
            self._report_failure(failure)
            raise failure from error
    return translated


def _unhurried(method):
    """Start-up and background work: no operation timeout (they may touch many documents)."""
    @functools.wraps(method)
    async def without_timeout(self, *args, **kwargs):
        with pymongo.timeout(None):
            return await method(self, *args, **kwargs)
    return without_timeout


async def in_turn(client: AsyncMongoClient, work: Callable[[Any], Awaitable[Any]],
                  timeout: float | None, unavailable: Callable[[str], StorageUnavailableError]) -> Any:
    """`await work(session)` in one transaction, in this process's turn, within `timeout` as a
    whole (None: no limit); `unavailable` makes the error for a turn that did not come in time."""
    turn = _turn_of(asyncio.get_running_loop())
    try:
        async with asyncio.timeout(timeout):
            await turn.acquire()
    except TimeoutError:
        raise unavailable(f"MongoDB: no turn to write within {timeout:g} s") from None
    try:
        with pymongo.timeout(timeout):
            async with client.start_session() as session:
                return await session.with_transaction(work)
    finally:
        turn.release()


_turns: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock]" = weakref.WeakKeyDictionary()


def _turn_of(loop: asyncio.AbstractEventLoop) -> asyncio.Lock:
    """This process's turn to run a transaction (one per event loop, shared by every store)."""
    turn = _turns.get(loop)
    if turn is None:
        turn = _turns[loop] = asyncio.Lock()
    return turn
