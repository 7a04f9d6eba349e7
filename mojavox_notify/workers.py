"""`serve --workers N`: N server processes on one port of one host.

Each worker is a full server process (its own event loop, hub, storage connection and Redis
subscription) listening on the same port with SO_REUSEPORT, so the kernel spreads new
connections evenly over them; a notification created on one reaches sockets on the others
through the Redis broker. The parent only supervises: it starts the workers one after another
(the first one alone creates the storage schema), forwards SIGTERM/SIGINT, restarts a worker
that crashed, and stops everything when one cannot start or lost its storage.

With `escalation_timers.own_process` one more child, started last and supervised alike, fires
the escalation steps for all of them at a lower CPU priority, and the workers fire none: a
burst of 10,000 steps then has a core (and a GIL) of its own, and requests keep theirs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import select
import signal
import sys
import time
import traceback
from typing import Callable

import tornado.netutil

from .settings import Settings, SettingsError

log = logging.getLogger(__name__)

READY_TIMEOUT_SECONDS = 120
STOP_TIMEOUT_SECONDS = 30
#: A worker restarted this often within RESTART_WINDOW_SECONDS stops the whole server instead.
MAX_RESTARTS = 5
RESTART_WINDOW_SECONDS = 60
#: Exit statuses of a worker that restarting would not cure: bad settings or start-up (2),
#: storage lost past storage.exit_after_seconds (3: the supervisor above us restarts it all).
FATAL_STATUSES = (2, 3)

#: The escalation timers' own process yields the cores to the serving ones (nice), which
#: still leaves it a core of two whenever they do not need both.
TIMERS_NICENESS = 5

#: child(settings, index, ready) → exit status; calls ready() once it is listening.
Child = Callable[[Settings, int, Callable[[], None]], int]


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def worker_count(settings: Settings) -> int:
    """`server.workers` resolved (0 = one per core); more than one needs Redis."""
    count = settings.server.workers or available_cores()
    if count > 1 and not settings.redis.url:
        raise SettingsError("server.workers", f"{count} workers need the Redis broker to reach "
                            "each other's sockets: set redis.url (REDIS_URL), or use 1 worker")
    return count


def timers_process(settings: Settings) -> bool:
    """`escalation_timers.own_process`, checked: that process reaches the sockets through Redis."""
    if settings.escalation_timers.own_process and not settings.redis.url:
        raise SettingsError("escalation_timers.own_process", "the escalation timers' own process "
                            "reaches the serving processes' sockets through the Redis broker: set "
                            "redis.url (REDIS_URL), or set it false")
    return settings.escalation_timers.own_process


def lower_cpu_priority() -> None:
    """For the escalation timers' own process (TIMERS_NICENESS)."""
    try:
        os.nice(TIMERS_NICENESS)
    except OSError:
        log.warning("could not lower the escalation timers' CPU priority")


def reserve_port(settings: Settings) -> Settings:
    """Check the address is free (one clear error instead of one per worker) and resolve port
    0 to a real port every worker then binds with SO_REUSEPORT."""
    server = settings.server
    sockets = tornado.netutil.bind_sockets(server.port, server.host, reuse_port=True)
    port = sockets[0].getsockname()[1]
    for bound in sockets:
        bound.close()
    return dataclasses.replace(settings, server=dataclasses.replace(server, port=port))


def run_workers(settings: Settings, count: int, child: Child, timers: Child | None = None) -> int:
    """`count` workers running `child`, and with `timers` one more process (index `count`)."""
    return Supervisor(settings, count, child, timers).run()


class Supervisor:
    def __init__(self, settings: Settings, count: int, child: Child, timers: Child | None = None):
        self.settings = settings
        self.count = count
        self.child = child
        self.timers = timers
        self.workers: dict[int, int] = {}  # pid → index (the timers' process: `count`)
        self.restarts: list[float] = []
        self.stopping = False
        self.status = 0

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        for index in range(self.count + (self.timers is not None)):
            if self.stopping or not self._start(index):
                return self._stop_all()
        pids = {index: pid for pid, index in self.workers.items()}
        log.info("%d workers serving on %s:%d (pids %s)%s", self.count, self.settings.server.host,
                 self.settings.server.port, ", ".join(str(pids[i]) for i in range(self.count)),
                 "" if self.timers is None else f"; escalation timers in pid {pids[self.count]}")
        while self.workers:
            try:
                pid, wait_status = os.wait()
            except ChildProcessError:
                break
            index = self.workers.pop(pid, None)
            if index is None or self.stopping:
                continue
            code = os.waitstatus_to_exitcode(wait_status)
            name = self._name(index)
            if code in FATAL_STATUSES:
                log.error("%s (pid %d) exited with status %d: stopping all workers",
                          name, pid, code)
                self.status = code
                return self._stop_all()
            if not self._may_restart():
                log.error("%s (pid %d) exited with status %d; more than %d restarts in %d s: "
                          "stopping all workers", name, pid, code, MAX_RESTARTS, RESTART_WINDOW_SECONDS)
                self.status = 1
                return self._stop_all()
            log.error("%s (pid %d) exited with status %d: restarting it", name, pid, code)
            if not self._start(index):
                return self._stop_all()
        return self.status

    def _name(self, index: int) -> str:
        return "the escalation timers' process" if index == self.count else f"worker {index}"

    def _on_signal(self, signum, frame) -> None:
        if not self.stopping:
            log.info("stopping %d processes", len(self.workers))
        self.stopping = True
        for pid in list(self.workers):
            _kill(pid, signal.SIGTERM)

    def _may_restart(self) -> bool:
        now = time.monotonic()
        self.restarts = [at for at in self.restarts if now - at < RESTART_WINDOW_SECONDS]
        self.restarts.append(now)
        return len(self.restarts) <= MAX_RESTARTS

    def _start(self, index: int) -> bool:
        """Fork worker `index` and wait until it listens; False (status set) if it exited."""
        read_end, write_end = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            self._child_main(index, write_end)
        os.close(write_end)
        self.workers[pid] = index
        try:
            return self._wait_ready(pid, index, read_end)
        finally:
            os.close(read_end)

    def _child_main(self, index: int, ready_fd: int) -> None:
        code = 1
        try:
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, signal.SIG_DFL)

            def ready() -> None:
                os.write(ready_fd, b"1")

            child = self.timers if index == self.count else self.child
            code = child(self.settings, index, ready)
        except KeyboardInterrupt:
            code = 130
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def _wait_ready(self, pid: int, index: int, read_end: int) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            readable, _, _ = select.select([read_end], [], [], 0.1)
            if readable and os.read(read_end, 1):
                return True
            if self.stopping:
                return False
            done, wait_status = os.waitpid(pid, os.WNOHANG)
            if done:
                self.workers.pop(pid, None)
                code = os.waitstatus_to_exitcode(wait_status)
                self.status = code if code > 0 else 1
                return False
        log.error("%s (pid %d) did not start within %d s", self._name(index), pid,
                  READY_TIMEOUT_SECONDS)
        self.status = 1
        return False

    def _stop_all(self) -> int:
        self.stopping = True
        for pid in list(self.workers):
            _kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        while self.workers and time.monotonic() < deadline:
            for pid in list(self.workers):
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    done = pid
                if done:
                    self.workers.pop(pid, None)
            time.sleep(0.05)
        for pid, index in list(self.workers.items()):
            log.error("%s (pid %d) did not stop within %d s: killing it", self._name(index), pid,
                      STOP_TIMEOUT_SECONDS)
            _kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        return self.status


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
