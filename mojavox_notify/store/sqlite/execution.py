"""How the embedded engine's functions reach the file: on the event loop or a storage thread, each
write in its turn among processes, the write-ahead log checkpointed behind the writes.

Writes run on one thread and reads on another, each with its own connection, so a long write
transaction (a 1,000-user alert) neither blocks the event loop nor holds up reads; a third
copies the write-ahead log back into the file (checkpoints), so no commit waits for that. Small
operations (a create's preference lookup and its insert, up to `storage.sqlite_inline_limit`
drafts or users) run on the event loop itself: they take tens of microseconds, while a trip
to a thread costs a hand-off and waiting for the GIL back, which under load was most of a
create's latency. While another process holds the write turn, a small insert is tried again
from the loop about every millisecond (a half-millisecond sleep, which the loop's epoll wait
rounds up to a whole millisecond; the loop serves everything else meanwhile, and never waits for
a lock); one that fails goes to its thread, which reports the failure.

Every write is one `BEGIN IMMEDIATE` transaction, which SQLite serializes across threads and
processes: a notification and its user's counters change together, and sequence number N+1 can
only be committed after N. Several processes on one host may share the file (WAL); a writer
waits up to `storage.busy_timeout_seconds` for another's lock, taking turns through `WriteTurn`.

A bulk write (10,000 escalation steps coming due at once) runs on a thread of its own and in
parts: between two, a write waiting for the turn (a create, an acknowledgement), of this process
or another one sharing the file, goes first (`GivingWay`), so a burst of steps holds a create up
for one part, not the burst.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import logging
import os
import sqlite3
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator

from ...errors import StorageUnavailableError
from ...settings import StorageSettings

log = logging.getLogger(__name__)

# The first write after a checkpoint has the checkpoint thread copy the write-ahead log back into
# the file this long after it (SQLite's own checkpoint runs inside the commit that passes 1,000
# pages). Not at once: the copy would compete with delivering what was just written; and a page
# written many times meanwhile (a user's counters, an index's newest page) is copied once. A
# second rather than a quarter took a tenth off the CPU of a 1,000-user alert at 1M stored.
CHECKPOINT_DELAY_SECONDS = 1.0
# A log a checkpoint cannot catch up with (writes back to back, e.g. an import) never starts
# over; past this many pages the committing write checkpoints itself, so the log restarts.
CHECKPOINT_IN_WRITE_PAGES = 16384
CHECKPOINT_NICENESS = 10

#: What `Execution.run_inline` answers for a write while another writer holds the turn.
TURN_TAKEN = object()
KEPT_WRITING = "another process kept writing past storage.busy_timeout_seconds"
#: A bulk write lets the writes waiting for the turn go first for at most this long at a time,
#: then takes the turn back (a steady stream of writes must not stop it).
GIVE_WAY_SECONDS = 0.05


@contextmanager
def transaction(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction, taking the write lock up front (no upgrade deadlocks)."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield connection
    except BaseException:
        if connection.in_transaction:
            connection.rollback()
        raise
    connection.commit()


class TurnWaiters:
    """The writes waiting for the write turn now, in every process sharing the file: a bulk
    write in progress lets them go first (GivingWay). This process's are counted here; while
    any waits, the process holds a read lock on `<file>-waiting.lock`, which a bulk write of
    any process sees (WaitingProbe), so escalation timers firing in a process of their own
    give way to the serving process's creates as to their own. Open-file-description locks
    (fcntl F_OFD_*): taking a read lock never waits, since nobody takes a write lock."""

    def __init__(self, database: Path):
        self._file = LockFile(database, "waiting")
        self._lock = threading.Lock()
        self._count = 0
        self._closed = False

    @contextmanager
    def waiting(self) -> Iterator[None]:
        with self._lock:
            self._count += 1
            if self._count == 1:
                self._mark(fcntl.F_RDLCK)
        try:
            yield
        finally:
            with self._lock:
                self._count -= 1
                if self._count == 0:
                    self._mark(fcntl.F_UNLCK)

    def _mark(self, lock_type: int) -> None:
        if self._closed:
            return
        try:
            _file_lock(self._file.fd(), fcntl.F_OFD_SETLK, lock_type)
        except OSError:  # the others then see only the turn: correct, merely not first
            pass

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._file.close()


class WaitingProbe:
    """Whether a write of any process sharing the file waits for the turn: asks for the
    read locks on `<file>-waiting.lock` (F_OFD_GETLK), taking none itself. A descriptor of its
    own, since such a lock belongs to the open file description: this process's own waiters
    are seen too."""

    def __init__(self, database: Path):
        self._file = LockFile(database, "waiting")

    def __call__(self) -> bool:
        try:
            return _file_lock(self._file.fd(), fcntl.F_OFD_GETLK, fcntl.F_WRLCK) != fcntl.F_UNLCK
        except OSError:
            return False

    def close(self) -> None:
        self._file.close()


#: Linux's `struct flock`: l_type, l_whence, l_start, l_len, l_pid (and padding).
FLOCK_LAYOUT = "hhqqi4x"


def _file_lock(fd: int, command: int, lock_type: int) -> int:
    """An open-file-description lock on the whole file set or asked for; the answer's
    l_type (F_UNLCK from F_OFD_GETLK: nothing conflicts)."""
    answer = fcntl.fcntl(fd, command, struct.pack(FLOCK_LAYOUT, lock_type, os.SEEK_SET, 0, 0, 0))
    return struct.unpack(FLOCK_LAYOUT, answer)[0]


class LockFile:
    """`<file>-<name>.lock` beside the database, opened on first use: a descriptor of its own,
    since the locks on it (flock, open-file-description locks) belong to the descriptor."""

    def __init__(self, database: Path, name: str):
        self.path = database.with_name(f"{database.name}-{name}.lock")
        self._fd: int | None = None

    def fd(self) -> int:
        """Raises OSError when the file cannot be opened."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class WriteTurn:
    """Whose turn it is to write among the processes sharing the file (`serve --workers`): an
    flock on `<file>-writer.lock`, tried every half millisecond until
    `storage.busy_timeout_seconds`. SQLite's own lock stays the guard of correctness; this only
    spares its busy handler, whose sleeps grow from 1 to 100 ms, so a waiting process no longer
    sleeps through the moments the other leaves the lock free (measured with two workers: lock
    waits of 80-110 ms at p99). A turn with `waiters` counts itself there while it waits."""

    POLL_SECONDS = 0.0005

    def __init__(self, database: Path, timeout: float, waiters: TurnWaiters | None = None):
        self._file = LockFile(database, "writer")
        self._timeout = timeout
        self._waiters = waiters

    def run(self, function: Callable, connection: sqlite3.Connection, *args: Any) -> Any:
        self.acquire()
        return self._in_turn(function, connection, args)

    def acquire(self) -> None:
        """The turn, waiting for it up to the timeout (then sqlite3.OperationalError)."""
        if self._take():
            return
        with self._waiters.waiting() if self._waiters is not None else nullcontext():
            deadline = time.monotonic() + self._timeout
            while not self._take():
                if time.monotonic() >= deadline:
                    raise sqlite3.OperationalError(f"database is locked: {KEPT_WRITING}")
                time.sleep(self.POLL_SECONDS)

    def release(self) -> None:
        fcntl.flock(self._file.fd(), fcntl.LOCK_UN)

    def run_now(self, function: Callable, connection: sqlite3.Connection,
                *args: Any) -> tuple[bool, Any]:
        """(True, result) when the turn was free at once, else (False, None) without waiting."""
        if not self._take():
            return False, None
        return True, self._in_turn(function, connection, args)

    def _take(self) -> bool:
        try:
            fcntl.flock(self._open(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _in_turn(self, function: Callable, connection: sqlite3.Connection, args: tuple) -> Any:
        try:
            return function(connection, *args)
        finally:
            self.release()

    def _open(self) -> int:
        try:
            return self._file.fd()
        except OSError as error:
            raise sqlite3.OperationalError(f"cannot open {self._file.path}: "
                                           f"{error.strerror or error}") from None

    def close(self) -> None:
        self._file.close()


class GivingWay:
    """What a bulk write (`Execution.bulk`) is handed: between two of its transactions,
    `wanted` says whether a write of any process sharing the file waits for the turn, and
    `give_way` lets the waiting ones go first, then takes the turn back."""

    def __init__(self, turn: WriteTurn, waiting: WaitingProbe):
        self._turn = turn
        self._waiting = waiting

    def wanted(self) -> bool:
        return self._waiting()

    def give_way(self) -> None:
        """Called with no transaction open."""
        self._turn.release()
        deadline = time.monotonic() + GIVE_WAY_SECONDS
        while self._waiting() and time.monotonic() < deadline:
            time.sleep(WriteTurn.POLL_SECONDS / 5)
        self._turn.acquire()


class Execution:
    """Runs functions that take a connection first against one file: on the event loop's own
    connection when small and free to start, else on the writer or reader thread; a write only
    in its turn, a checkpoint queued after it. A failure comes out as StorageUnavailableError,
    told to `report` first (the store's failure hook)."""

    def __init__(self, path: Path, settings: StorageSettings,
                 report: Callable[[BaseException], None]):
        self.path = path
        self._settings = settings
        self._report = report
        #: This process's writes waiting for the turn; a bulk write (of any process) gives
        #: way to them.
        self.waiters = TurnWaiters(path)
        self._waiting = WaitingProbe(path)
        self._turn = WriteTurn(path, settings.busy_timeout_seconds, self.waiters)
        self._bulk_turn = WriteTurn(path, settings.busy_timeout_seconds)
        # The event loop's own connection and turn (a lock file descriptor of its own, so its
        # turn excludes the writer thread's as it does other processes').
        self._inline_turn = WriteTurn(path, 0)
        self.inline: sqlite3.Connection | None = None
        #: An operation of at most this many drafts (or users) may run on the loop; 0: none does.
        self.inline_limit = settings.sqlite_inline_limit
        # Inline writes only where a commit does not wait for the disk (WAL, synchronous=NORMAL).
        self.inline_writes = settings.sqlite_synchronous == "normal"
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="sqlite-reader")
        self._bulk = ThreadPoolExecutor(1, thread_name_prefix="sqlite-bulk")
        self._checkpointer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-checkpoint",
                                                initializer=_lower_priority)
        self._checkpoint_queued = False
        self._closing = threading.Event()
        self._local = threading.local()

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = self._open_connection(
                self._settings.busy_timeout_seconds)
        return connection

    def _open_connection(self, busy_timeout: float) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, isolation_level=None, timeout=busy_timeout)
        connection.execute(f"PRAGMA synchronous = {self._settings.sqlite_synchronous.upper()}")
        connection.execute(f"PRAGMA cache_size = -{self._settings.sqlite_cache_mib * 1024}")  # KiB
        connection.execute("PRAGMA temp_store = MEMORY")
        # The checkpoint thread's work; past this many pages (64 MiB), writes keep up
        # without it, so the committing writer checkpoints as SQLite does by default.
        connection.execute(f"PRAGMA wal_autocheckpoint = {CHECKPOINT_IN_WRITE_PAGES}")
        return connection

    def run_inline(self, write: bool, function: Callable, *args: Any) -> tuple[bool, Any]:
        """On the event loop, if it can start at once: (True, result), or (False, None) when it
        failed (its thread then runs it, and reports a failure), and always with
        `storage.sqlite_inline_limit` 0; (False, TURN_TAKEN) for a write while another writer
        holds the turn."""
        if not self.inline_limit:
            return False, None
        try:
            if self.inline is None:
                self.inline = self._open_connection(busy_timeout=0)
            if not write:
                return True, function(self.inline, *args)
            done, result = self._inline_turn.run_now(function, self.inline, *args)
        except sqlite3.Error:  # busy, or failing: the thread's attempt answers for it
            self._close_inline()
            return False, None
        if not done:
            return False, TURN_TAKEN
        self._queue_checkpoint()
        return True, result

    def _close_inline(self) -> None:
        connection, self.inline = self.inline, None
        if connection is not None:
            try:
                connection.close()
            except sqlite3.Error:
                pass

    def _discard_connection(self) -> None:
        """After a failure, reopen on the next call (the file may have come back)."""
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is not None:
            try:
                connection.close()
            except sqlite3.Error:
                pass

    def _guarded(self, function: Callable, args: tuple) -> Any:
        try:
            return function(self._connection(), *args)
        except sqlite3.Error as error:
            self._discard_connection()
            raise StorageUnavailableError(f"embedded storage failed: {error}") from error

    def _written(self, function: Callable, connection: sqlite3.Connection, *args: Any) -> Any:
        """A write in its turn (on the writer thread); the first since the last checkpoint
        queues the next one, CHECKPOINT_DELAY_SECONDS later."""
        result = self._turn.run(function, connection, *args)
        self._queue_checkpoint()
        return result

    def _queue_checkpoint(self) -> None:
        if not self._checkpoint_queued:
            self._checkpoint_queued = True
            self._checkpointer.submit(self._checkpoint)

    def _checkpoint(self) -> None:
        """PASSIVE: copies what no reader still needs and never waits for a lock, so it cannot
        hold up a write; the writer starts the log over once all of it is copied. Closing the
        store ends the wait."""
        self._closing.wait(CHECKPOINT_DELAY_SECONDS)
        self._checkpoint_queued = False  # writes from now on are not in this copy: queue another
        try:
            self._connection().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as error:
            self._discard_connection()
            log.warning("checkpointing %s failed (a later write retries): %s", self.path, error)

    @property
    def write_timeout(self) -> float:
        """The operation timeout plus the time a write may wait for another process's lock."""
        return self._settings.operation_timeout_seconds + self._settings.busy_timeout_seconds

    async def write(self, function: Callable, *args: Any) -> Any:
        """On the writer thread; gives up (503) after `write_timeout`."""
        return await self._run(self._writer, functools.partial(self._written, function), args,
                               self.write_timeout)

    async def bulk(self, function: Callable, *args: Any) -> Any:
        """On the bulk thread, in its turn: `function(connection, way, *args)` commits its work
        in parts and, between two, gives way (a GivingWay) to the writes waiting for the turn,
        of this process or another; gives up (503) after `write_timeout`."""
        return await self._run(self._bulk, self._bulk_written, (function, *args),
                               self.write_timeout)

    def _bulk_written(self, connection: sqlite3.Connection, function: Callable,
                      *args: Any) -> Any:
        way = GivingWay(self._bulk_turn, self._waiting)
        result = self._bulk_turn.run(function, connection, way, *args)
        self._queue_checkpoint()
        return result

    async def read(self, function: Callable, *args: Any) -> Any:
        return await self._run(self._reader, function, args, self._settings.operation_timeout_seconds)

    async def background(self, function: Callable, *args: Any) -> Any:
        """A write with no time limit: start-up, cleanup, import."""
        return await self._run(self._writer, functools.partial(self._written, function), args,
                               None)

    async def _run(self, executor: ThreadPoolExecutor, function: Callable, args: tuple,
                   timeout: float | None) -> Any:
        running = asyncio.get_running_loop().run_in_executor(executor, self._guarded, function, args)
        try:
            async with asyncio.timeout(timeout):  # (wait_for may swallow a cancellation in 3.11)
                return await running
        except StorageUnavailableError as error:
            self._report(error)
            raise
        except asyncio.TimeoutError:
            error = StorageUnavailableError(f"embedded storage did not answer within {timeout:g} s")
            self._report(error)
            raise error from None

    async def free_bytes(self) -> int:
        """Free space on the file's disk, asked on the reader thread (a hung disk hangs it)."""
        return await asyncio.get_running_loop().run_in_executor(self._reader, _free_bytes,
                                                                self.path.parent)

    async def close(self) -> None:
        """Ends a waiting checkpoint, closes every connection and stops the threads."""
        self._closing.set()
        self._close_inline()
        self._inline_turn.close()
        loop = asyncio.get_running_loop()
        for executor in (self._writer, self._bulk, self._reader, self._checkpointer):
            await loop.run_in_executor(executor, self._discard_connection)
            executor.shutdown(wait=True)
        self._turn.close()
        self._bulk_turn.close()
        self.waiters.close()
        self._waiting.close()


def _lower_priority() -> None:
    """This thread yields the cores to the event loop and the writer: a checkpoint started
    right after a 1,000-user alert's commit must not slow the alert's fan-out."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), CHECKPOINT_NICENESS)
    except OSError:  # not allowed, or not Linux (where a thread has a priority of its own)
        pass


def _free_bytes(folder: Path) -> int:
    try:
        stats = os.statvfs(folder)
    except OSError:
        return 0
    return stats.f_bavail * stats.f_frsize
