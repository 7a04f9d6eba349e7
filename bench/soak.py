"""`python -m bench soak`: a call center's day compressed into minutes, with the faults it meets.

Load: a real `mojavox-notify serve --workers 2` on a Redis of its own, with the embedded SQLite
storage in a temporary folder. `--users` users keep `--tabs` dashboard sockets each (a lean
WebSocket reader per socket, spread over loopback addresses 127.0.0.2-9), and every socket
churns: about every `--churn-seconds` it closes and reconnects with `since` = the last
notification it received, as a tab does after a network blip. Meanwhile `--creates`
notifications a second are created for random users, an alert (`system.alert` to
`--alert-recipients` random users) every two seconds, and a broadcast a minute.

Faults on a schedule (as fractions of the run): the youngest worker SIGKILLed (10%, 75%); Redis
killed and started again (25%, 65%); storage stalled longer than the write timeout, by another
process holding the write lock (40%, 80%); a hostile client from 127.0.0.66 (55%, 90%): the
audit's requests that froze the process (a 60 KB path of `eyJ`, a 60 KB JSON key after
authenticating) and bad tokens, while /healthz is timed every 20 ms.

At the end every socket is compared, as one logical tab across all its connections, with what
is stored for its user: notifications it never received (missing) and ones it received twice
(doubled). RSS and open file descriptors of every process are sampled every 5 s. It prints, per
minute: creations answered and refused, create→frame p50/p99, doubled and missing (by the
minute the notification was created), and each process's memory; then each process's RSS
growth after warm-up (the first 20% of the run; for a worker started during it, three churn
periods, the time its tabs take to spread over both workers again) to its last sample.
Bounded in time; stops by itself.

    .venv/bin/python -m bench soak --minutes 10
    .venv/bin/python -m bench soak --minutes 2 --users 100 --tabs 4
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "bench"))

import leanws  # noqa: E402  (bench/, beside this file)
from mojavox_notify.auth import mint_token  # noqa: E402

SECRET = "soak-benchmark-secret-of-at-least-32-bytes"
NOTIFICATION = b'{"type":"notification","payload":{"id":"'
OPERATION_TIMEOUT, BUSY_TIMEOUT = 1.0, 2.0  # a write gives up after their sum
STALL_SECONDS = OPERATION_TIMEOUT + BUSY_TIMEOUT + 1.0
TAB_ADDRESSES = [f"127.0.0.{n}" for n in range(2, 10)]
HOSTILE_ADDRESS = "127.0.0.66"
SAMPLE_SECONDS = 5.0
WARM_UP_SHARE = 0.2
# A worker started during the run gets its share of the sockets as tabs churn: after three
# churn periods about 95% of them have reconnected once, spread over both workers.
RESTARTED_WARM_UP_CHURNS = 3


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


# -- processes -------------------------------------------------------------------------------------

def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
    return sorted(found)


def started_at(pid: int) -> int:
    """When a process started, in clock ticks since boot (/proc/PID/stat, field 22)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def memory_of(pid: int) -> tuple[int, int, int] | None:
    """(RSS in KiB, of which anonymous (heap) KiB, open file descriptors) of a live process;
    None when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    try:
        return int(fields["VmRSS"].split()[0]), int(fields["RssAnon"].split()[0]), fds
    except (KeyError, ValueError):
        return None


class Redis:
    """A redis-server of the soak's own, which it kills and starts again on the same port."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind",
             "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.05)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


class Server:
    """`mojavox-notify serve --workers 2`, on Redis, embedded SQLite in `folder`."""

    def __init__(self, folder: Path, redis_url: str, workers: int, cache_mib: int):
        self.folder = folder
        self.port = free_port()
        self.workers = workers
        self.database = folder / "notify.db"
        settings = {
            "data_dir": str(folder / "data"),
            "server": {"host": "127.0.0.1", "port": self.port, "workers": workers},
            "auth": {"secret": SECRET},
            "storage": {"url": f"sqlite:///{self.database}",
                        "operation_timeout_seconds": OPERATION_TIMEOUT,
                        "busy_timeout_seconds": BUSY_TIMEOUT,
                        # Small page caches (4 connections x this per worker), full within the
                        # warm-up, so growth after it is not a cache filling up.
                        "sqlite_cache_mib": cache_mib},
            "redis": {"url": redis_url},
            "rate_limits": {"notifications_per_minute": 0, "requests_per_minute": 0},
            "retention": {"cleanup_interval_minutes": 0},
            # INFO, as deployed: every request's access line passes the log's redaction.
            "logging": {"level": "INFO"},
        }
        self.settings_path = folder / "settings.yaml"
        self.settings_path.write_text(json.dumps(settings), encoding="utf-8")  # JSON is YAML
        self.log_path = folder / "serve.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mojavox_notify", "serve", "--settings", str(self.settings_path)],
            cwd=self.folder, stdout=self.log, stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "JWT_SECRET")})

    def worker_pids(self) -> list[int]:
        return children_of(self.process.pid)

    async def ready(self) -> None:
        deadline = time.monotonic() + 60
        while len(self.worker_pids()) < self.workers or not await healthy(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"serve did not start; see {self.log_path}")
            await asyncio.sleep(0.1)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


async def broker_back(port: int) -> bool:
    """/healthz says `ok`: storage and the Redis broker both answer."""
    try:
        status, body = await request(port, "GET", "/healthz")
        return status == 200 and json.loads(body)["status"] == "ok"
    except (OSError, asyncio.IncompleteReadError, ValueError, KeyError):
        return False


async def healthy(port: int) -> bool:
    try:
        status, _ = await request(port, "GET", "/healthz")
    except (OSError, asyncio.IncompleteReadError, ValueError):
        return False
    return status == 200


async def request(port: int, method: str, path: str, body: bytes = b"", token: str | None = None,
                  local: str | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    """One HTTP/1.1 request on a connection of its own: (status, body)."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, local_addr=(local, 0) if local else None)
        try:
            head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                    f"Content-Length: {len(body)}\r\nContent-Type: application/json\r\n")
            if token:
                head += f"Authorization: Bearer {token}\r\n"
            writer.write(head.encode() + b"\r\n" + body)
            answer = await reader.read()
        finally:
            writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split(b" ", 2)[1]), rest.partition(b"\r\n\r\n")[2]


# -- dashboard tabs ------------------------------------------------------------------------------

@dataclass
class Tab:
    """One logical dashboard tab of a user, across all its connections."""

    user: str
    address: str
    token: str
    last_id: str | None = None
    received: collections.Counter = field(default_factory=collections.Counter)
    arrived: dict = field(default_factory=dict)  # id → first arrival (epoch seconds)
    connections: int = 0
    live: "leanws.LeanSocket | None" = None
    failure: str = ""  # why its last connection attempt failed
    phase: str = "new"  # what its keeper is doing, for a report of tabs that are not back
    connected_at: float = 0.0  # when its current connection went live (monotonic)
    dropped_at: float = 0.0  # when the server side last closed one of its connections


def _keeper_ended(tab: Tab, task: asyncio.Task) -> None:
    """A tab's keeper that failed leaves the tab for good: say why, loudly."""
    if not task.cancelled() and task.exception() is not None:
        tab.failure = f"keeper failed: {task.exception()!r}"
        print(f"  tab of {tab.user}: {tab.failure}", flush=True)


def _frame(tab: Tab, payload: bytes, connected: asyncio.Future) -> None:
    """A text frame of the tab's: a notification's id is all that is read (no JSON parse)."""
    if payload.startswith(NOTIFICATION):
        notification = payload[len(NOTIFICATION):len(NOTIFICATION) + 24].decode()
        tab.received[notification] += 1
        tab.arrived.setdefault(notification, time.time())
        tab.last_id = notification
    elif payload.startswith(b'{"type":"connected"') and not connected.done():
        connected.set_result(None)


class Tabs:
    """Every tab, kept connected: a tab whose connection drops (a killed worker, churn)
    reconnects with `since` after a short pause, until `stop()`."""

    def __init__(self, port: int, users: list[str], per_user: int, churn_seconds: float):
        self.port = port
        self.churn_seconds = churn_seconds
        self.tabs = [Tab(user, TAB_ADDRESSES[index % len(TAB_ADDRESSES)],
                         mint_token(SECRET, user, [], 7 * 86400))
                     for index, user in enumerate(u for u in users for _ in range(per_user))]
        self.stopping = False
        self.churning = True
        self.reconnects = 0
        self._tasks: list[asyncio.Task] = []

    async def connect_all(self) -> None:
        for start in range(0, len(self.tabs), 200):
            await asyncio.gather(*(self._connect(tab) for tab in self.tabs[start:start + 200]))
        failed = sum(1 for tab in self.tabs if tab.live is None)
        if failed:
            raise RuntimeError(f"{failed} tabs could not connect")

    def keep_connected(self) -> None:
        """From now on every tab churns, and reconnects whenever its connection drops."""
        self._tasks = []
        for tab in self.tabs:
            task = asyncio.ensure_future(self._keep(tab))
            task.add_done_callback(lambda done, tab=tab: _keeper_ended(tab, done))
            self._tasks.append(task)

    async def _connect(self, tab: Tab) -> bool:
        path = f"/ws/notifications?token={tab.token}"
        if tab.last_id:
            path += f"&since={tab.last_id}"
        connected = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(10):  # as a browser gives up on a connect
                lean = await leanws.connect("127.0.0.1", self.port, path,
                                            lambda payload: _frame(tab, payload, connected),
                                            local_address=tab.address)
                done, _ = await asyncio.wait([connected, lean.closed],
                                             return_when=asyncio.FIRST_COMPLETED)
        except (OSError, ConnectionError, asyncio.TimeoutError) as error:
            tab.failure = f"{type(error).__name__}: {error}"[:200]
            return False
        if connected not in done:
            tab.failure = lean.close_reason() or "closed before connected"
            return False
        tab.live = lean
        tab.connections += 1
        tab.connected_at = time.monotonic()
        return True

    async def _keep(self, tab: Tab) -> None:
        while not self.stopping:
            lean = tab.live
            churn = random.expovariate(1 / self.churn_seconds)
            tab.phase = "live"
            done, _ = await asyncio.wait([lean.closed], timeout=churn)
            if self.stopping:
                return
            if not done and not self.churning:
                continue
            if not done:  # churn: the tab's network blipped
                tab.phase = "closing"
                lean.transport.close()
                await lean.closed
            else:
                tab.dropped_at = time.monotonic()
                tab.failure = lean.close_reason() or tab.failure
            tab.live = None
            while not self.stopping:
                tab.phase = "pausing"
                await asyncio.sleep(random.uniform(0.1, 1.0))
                self.reconnects += 1
                tab.phase = "connecting"
                if await self._connect(tab):
                    break

    def all_live(self) -> bool:
        return not self.not_live()

    def not_live(self) -> list[Tab]:
        return [tab for tab in self.tabs if tab.live is None or tab.live.closed.done()]

    async def back_after(self, fault_at: float, timeout: float = 60.0) -> str:
        """Wait until every tab the server dropped since `fault_at` is live again (others
        churn meanwhile as ever); how many there were and how long they took."""
        await asyncio.sleep(1.0)  # the drops reach every tab
        dropped = [tab for tab in self.tabs if tab.dropped_at >= fault_at]
        while time.monotonic() - fault_at < timeout:
            behind = [tab for tab in dropped if tab.connected_at <= tab.dropped_at]
            if not behind:
                return (f"{len(dropped)} tabs dropped, every one live again "
                        f"{time.monotonic() - fault_at:.1f} s after")
            await asyncio.sleep(0.1)
        reasons = collections.Counter((tab.phase, tab.failure) for tab in behind).most_common(3)
        return f"{len(behind)} of {len(dropped)} dropped tabs not back after {timeout:g} s ({reasons})"

    async def all_live_after_churn(self, timeout: float = 60.0) -> str:
        """Stop churning, then wait until every tab is live."""
        self.churning = False
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.all_live():
                return f"every tab live {time.monotonic() - started:.1f} s after churning stopped"
            await asyncio.sleep(0.1)
        behind = self.not_live()
        reasons = collections.Counter((tab.phase, tab.failure) for tab in behind).most_common(3)
        return f"{len(behind)} tabs not live after {timeout:g} s ({reasons})"

    async def stop(self) -> None:
        self.stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for tab in self.tabs:
            if tab.live is not None:
                tab.live.transport.close()


# -- load ------------------------------------------------------------------------------------------

class Load:
    """Creations, alerts and broadcasts at steady rates; what each answered, and when each
    notification id was sent (for latency)."""

    def __init__(self, port: int, users: list[str], args):
        self.port = port
        self.users = users
        self.args = args
        self.service = mint_token(SECRET, "soak-service", ["service"], 7 * 86400)
        self.sent_at: dict[str, float] = {}
        self.answers: collections.Counter = collections.Counter()  # (minute, "ok"/status)
        self.started = time.time()
        self.stopping = False

    def minute(self, moment: float) -> int:
        return int((moment - self.started) // 60)

    async def _post(self, path: str, body: dict) -> None:
        sent = time.time()
        try:
            status, answer = await request(self.port, "POST", path, json.dumps(body).encode(),
                                           self.service, local="127.0.0.1", timeout=15)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError):
            self.answers[(self.minute(sent), "no answer")] += 1
            return
        if status in (201, 202):
            parsed = json.loads(answer)
            for notification in parsed.get("notifications") or [parsed.get("id")]:
                if notification:
                    self.sent_at[notification] = sent
            self.answers[(self.minute(sent), "ok")] += 1
        else:
            self.answers[(self.minute(sent), str(status))] += 1

    async def _every(self, interval: float, make) -> None:
        pending: set[asyncio.Task] = set()
        next_at = time.monotonic()
        while not self.stopping:
            next_at += interval
            task = asyncio.ensure_future(make())
            pending.add(task)
            task.add_done_callback(pending.discard)
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        await asyncio.gather(*pending)

    def run(self) -> list[asyncio.Task]:
        args = self.args

        def create():
            return self._post("/api/notifications", {
                "userId": random.choice(self.users), "type": "payment_received",
                "title": "Payment Received", "message": "John Smith paid $2,450.00"})

        def alert():
            return self._post("/api/events", {"type": "system.alert", "data": {
                "userIds": random.sample(self.users, args.alert_recipients), "severity": "error",
                "message": "Dialer queue above threshold"}})

        def broadcast():
            return self._post("/api/broadcasts", {"title": "Maintenance", "message":
                              "The dialer restarts at 22:00", "ttlSeconds": 120})

        return [asyncio.ensure_future(self._every(1 / args.creates, create)),
                asyncio.ensure_future(self._every(2.0, alert)),
                asyncio.ensure_future(self._every(60.0, broadcast))]


# -- faults ----------------------------------------------------------------------------------------

STALL_SCRIPT = """
import fcntl, sqlite3, sys, time
lock = open(sys.argv[1] + "-writer.lock", "a+")
fcntl.flock(lock, fcntl.LOCK_EX)
connection = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
connection.execute("BEGIN IMMEDIATE")
print("held", flush=True)
time.sleep(float(sys.argv[2]))
connection.execute("COMMIT")
"""


class Faults:
    def __init__(self, server: Server, redis: Redis, tabs: Tabs, port: int):
        self.server = server
        self.redis = redis
        self.tabs = tabs
        self.port = port
        self.log: list[str] = []
        self.started = time.time()

    def note(self, text: str) -> None:
        elapsed = time.time() - self.started
        line = f"{int(elapsed // 60)}:{int(elapsed % 60):02d} {text}"
        self.log.append(line)
        print(f"  {line}", flush=True)

    async def kill_worker(self) -> None:
        """SIGKILL the youngest worker: the oldest then holds every socket again, as it did after
        the first kill, so a later kill sets no new high-water mark of its memory."""
        pids = self.server.worker_pids()
        victim = max(pids, key=started_at)
        os.kill(victim, signal.SIGKILL)
        started = time.monotonic()
        while victim in self.server.worker_pids() or len(self.server.worker_pids()) < len(pids):
            await asyncio.sleep(0.1)
        back = time.monotonic() - started
        self.note(f"SIGKILL worker {victim}: replaced in {back:.1f} s; "
                  f"{await self.tabs.back_after(started)}")

    async def restart_redis(self) -> None:
        self.redis.kill()
        await asyncio.sleep(3.0)
        self.redis.start()
        started = time.monotonic()
        answers = 0
        while answers < 10:  # ten in a row, so both workers answered with Redis back
            answers = answers + 1 if await broker_back(self.port) else 0
            await asyncio.sleep(0.05)
        self.note(f"Redis killed, started again 3 s later; both workers' broker back "
                  f"{time.monotonic() - started:.1f} s after")

    async def stall_storage(self) -> None:
        holder = await asyncio.create_subprocess_exec(
            sys.executable, "-c", STALL_SCRIPT, str(self.server.database), str(STALL_SECONDS),
            stdout=asyncio.subprocess.PIPE)
        await holder.stdout.readline()
        await holder.wait()
        self.note(f"storage stalled {STALL_SECONDS:g} s by another process holding the write "
                  f"lock (writes give up after {OPERATION_TIMEOUT + BUSY_TIMEOUT:g} s)")

    async def hostile(self) -> None:
        """The audit's requests and bad tokens from another address, while /healthz is timed
        every 20 ms; and /healthz timed as long again just before, under the same load, to
        tell what the hostile requests add from what a busy 2-core machine costs anyway."""
        user_token = mint_token(SECRET, "soak-hostile", [], 3600)

        async def attack() -> None:
            for _ in range(10):
                await _quietly(request(self.port, "GET", "/" + "eyJ" * 20000, local=HOSTILE_ADDRESS))
                key = json.dumps({"channels": {"x" * 60000: {"enabled": True}}}).encode()
                await _quietly(request(self.port, "PUT", "/api/notifications/settings", key,
                                       user_token, local=HOSTILE_ADDRESS))
            for index in range(100):
                await _quietly(request(self.port, "GET", "/api/notifications",
                                       token=f"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.bad{index}",
                                       local=HOSTILE_ADDRESS))

        started = time.monotonic()
        during = await self._probe_health_while(attack())
        seconds = time.monotonic() - started
        before_seconds = max(1.0, seconds)
        before = await self._probe_health_while(asyncio.sleep(before_seconds))
        self.note(f"hostile client: 10 x (60 KB eyJ path, 60 KB JSON key), 100 bad tokens in "
                  f"{seconds:.1f} s; /healthz meanwhile p50 {percentile(during, 0.5):.1f} ms, "
                  f"p99 {percentile(during, 0.99):.1f}, max {max(during):.1f} ms "
                  f"({len(during)} probes); without it, for {before_seconds:.1f} s after: p50 "
                  f"{percentile(before, 0.5):.1f}, p99 {percentile(before, 0.99):.1f}, max "
                  f"{max(before):.1f} ms ({len(before)} probes)")

    async def _probe_health_while(self, work) -> list[float]:
        """/healthz latencies (ms), one probe every 20 ms, until `work` is done."""
        latencies: list[float] = []
        task = asyncio.ensure_future(work)
        while not task.done():
            started = time.perf_counter()
            await healthy(self.port)
            latencies.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.02)
        await task
        return latencies

    def schedule(self, seconds: float) -> list[tuple[float, str]]:
        plan = [(0.10, "kill_worker"), (0.25, "restart_redis"), (0.40, "stall_storage"),
                (0.55, "hostile"), (0.65, "restart_redis"), (0.75, "kill_worker"),
                (0.80, "stall_storage"), (0.90, "hostile")]
        return [(share * seconds, name) for share, name in plan]

    async def run(self, seconds: float) -> None:
        for at, name in self.schedule(seconds):
            delay = self.started + at - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await getattr(self, name)()


async def _quietly(call) -> None:
    try:
        await call
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError):
        pass


# -- memory ----------------------------------------------------------------------------------------

class Memory:
    """RSS and descriptors of the supervisor, each worker (by pid) and Redis, every 5 s."""

    def __init__(self, server: Server, redis: Redis):
        self.server = server
        self.redis = redis
        self.samples: dict[str, list[tuple[float, int, int, int]]] = collections.defaultdict(list)
        self.stopping = False

    def processes(self) -> dict[str, int]:
        named = {"serve (supervisor)": self.server.process.pid}
        for pid in self.server.worker_pids():
            named[f"worker {pid}"] = pid
        if self.redis.process and self.redis.process.poll() is None:
            named[f"redis {self.redis.process.pid}"] = self.redis.process.pid
        return named

    async def run(self) -> None:
        while not self.stopping:
            now = time.time()
            for name, pid in self.processes().items():
                found = memory_of(pid)
                if found:
                    self.samples[name].append((now, *found))
            await asyncio.sleep(SAMPLE_SECONDS)

    def at(self, name: str, moment: float) -> tuple[int, int] | None:
        """The sample of `name` nearest before `moment` (its first one if none is)."""
        samples = self.samples.get(name) or []
        before = [sample for sample in samples if sample[0] <= moment]
        chosen = before[-1] if before else (samples[0] if samples else None)
        return chosen[1:] if chosen else None


# -- the run ---------------------------------------------------------------------------------------

async def seed(port: int, users: list[str], tabs: Tabs) -> None:
    """One notification for every user before the load, received by every tab: from then on
    each tab has a last notification to resume from, as a dashboard with history does (a tab
    that has received nothing can only reconnect without `since`, and then misses what came
    while it was away: that is the client's choice, not a loss)."""
    service = mint_token(SECRET, "soak-service", ["service"], 3600)
    for user in users:
        status, _ = await request(port, "POST", "/api/notifications", json.dumps({
            "userId": user, "type": "campaign_milestone", "title": "Shift started",
            "message": "Good morning"}).encode(), service)
        if status != 201:
            raise RuntimeError(f"seeding {user} answered {status}")
    deadline = time.monotonic() + 30
    while any(tab.last_id is None for tab in tabs.tabs):
        if time.monotonic() > deadline:
            raise RuntimeError("not every tab received its user's first notification")
        await asyncio.sleep(0.1)


def stored_notifications(database: Path) -> dict[str, list[tuple[str, float]]]:
    """(id, created epoch seconds) of every stored notification, by user."""
    found: dict[str, list[tuple[str, float]]] = collections.defaultdict(list)
    with sqlite3.connect(database) as connection:
        for user, notification, created in connection.execute(
                "SELECT user_id, id, created_at FROM notifications"):
            found[user].append((notification, created / 1000))
    return found


async def soak(args) -> None:
    seconds = args.minutes * 60
    folder = Path(tempfile.mkdtemp(prefix="mojavox-soak-"))
    redis = Redis(folder)
    redis.start()
    server = Server(folder, redis.url, args.workers, args.sqlite_cache_mib)
    server.start()
    try:
        await server.ready()
        users = [f"soak-{index}" for index in range(args.users)]
        tabs = Tabs(server.port, users, args.tabs, args.churn_seconds)
        connect_started = time.monotonic()
        await tabs.connect_all()
        print(f"  {len(tabs.tabs)} tabs of {len(users)} users connected in "
              f"{time.monotonic() - connect_started:.1f} s", flush=True)
        await seed(server.port, users, tabs)
        tabs.keep_connected()
        memory = Memory(server, redis)
        sampling = asyncio.ensure_future(memory.run())
        load = Load(server.port, users, args)
        faults = Faults(server, redis, tabs, server.port)
        load.started = faults.started = time.time()
        producing = load.run()
        await faults.run(seconds)
        await asyncio.sleep(max(0.0, load.started + seconds - time.time()))
        load.stopping = True
        await asyncio.gather(*producing)
        print(f"  end of load: {await tabs.all_live_after_churn()}", flush=True)
        await asyncio.sleep(5.0)  # the last frames, and any resume, arrive
        ended = time.time()
        memory.stopping = True
        await sampling
        await tabs.stop()
    finally:
        server.stop()
        redis.stop()
    stored = stored_notifications(server.database)
    report(args, load, tabs, faults, memory, stored, ended)
    if args.keep:
        write_details(folder / "missing.json", load, tabs, stored)
        print(f"\nkept {folder} (serve.log, notify.db, missing.json)")
    else:
        shutil.rmtree(folder, ignore_errors=True)


def write_details(path: Path, load: Load, tabs: Tabs, stored: dict) -> None:
    """Every missing or doubled notification with what its tab saw, for a post-mortem."""
    details = []
    for index, tab in enumerate(tabs.tabs):
        for notification, created in stored.get(tab.user, ()):
            count = tab.received.get(notification, 0)
            if count != 1 and created >= load.started:
                later = [n for n, at in stored[tab.user] if at > created and n in tab.received]
                details.append({"tab": index, "user": tab.user, "id": notification,
                                "created": created - load.started, "received": count,
                                "answered": notification in load.sent_at,
                                "tab_connections": tab.connections,
                                "later_ones_received": len(later)})
    path.write_text(json.dumps(details, indent=1), encoding="utf-8")


def report(args, load: Load, tabs: Tabs, faults: Faults, memory: Memory,
           stored: dict[str, list[tuple[str, float]]], ended: float) -> None:
    minutes = int(args.minutes)
    created_minute = {notification: load.minute(created)
                      for notifications in stored.values() for notification, created in notifications}
    missing = collections.Counter()
    doubled = collections.Counter()
    latencies: dict[int, list[float]] = collections.defaultdict(list)
    frames = collections.Counter()
    for tab in tabs.tabs:
        for notification, created in stored.get(tab.user, ()):
            if created < load.started:  # the seed
                continue
            count = tab.received.get(notification, 0)
            if count == 0:
                missing[created_minute[notification]] += 1
            elif count > 1:
                doubled[created_minute[notification]] += count - 1
        for notification, arrived in tab.arrived.items():
            sent = load.sent_at.get(notification)
            frames[created_minute.get(notification, -1)] += tab.received[notification]
            if sent is not None:
                latencies[load.minute(sent)].append((arrived - sent) * 1000)
    names = sorted(memory.samples, key=lambda name: (not name.startswith("serve"),
                                                     memory.samples[name][0][0]))
    print(f"\n## soak: {args.minutes:g} minutes, serve --workers {args.workers} on Redis, embedded "
          f"SQLite; {len(tabs.tabs)} tabs of {args.users} users churning every "
          f"~{args.churn_seconds:g} s; {args.creates:g} creations/s, an alert to "
          f"{args.alert_recipients} users every 2 s, a broadcast a minute\n")
    print("| minute | created | refused (status: count) | frames | p50 ms | p99 ms | doubled | "
          "missing | RSS MiB (fds) |\n|---|---|---|---|---|---|---|---|---|")
    for minute in range(minutes):
        refused = {status: count for (at, status), count in load.answers.items()
                   if at == minute and status != "ok"}
        moment = load.started + (minute + 1) * 60
        rss = ", ".join(f"{name.split()[0]} {found[0] / 1024:.0f} ({found[2]})" for name in names
                        if (found := memory.at(name, moment)) and _alive_at(memory, name, moment))
        print(f"| {minute + 1} | {load.answers[(minute, 'ok')]} | "
              f"{', '.join(f'{s}: {c}' for s, c in sorted(refused.items())) or '-'} | "
              f"{frames[minute]} | {percentile(latencies[minute], 0.5):.1f} | "
              f"{percentile(latencies[minute], 0.99):.1f} | {doubled[minute]} | {missing[minute]} | "
              f"{rss} |")
    print("\nfaults:\n" + "\n".join(f"- {line}" for line in faults.log))
    print(f"\n{sum(len(n) for n in stored.values())} notifications stored; {len(tabs.tabs)} tabs "
          f"made {sum(t.connections for t in tabs.tabs)} connections "
          f"({tabs.reconnects} reconnect attempts); missing {sum(missing.values())}, doubled "
          f"{sum(doubled.values())}")
    warm_until = load.started + WARM_UP_SHARE * args.minutes * 60
    print("\n| process | RSS after warm-up MiB | at its last sample MiB | growth | fds then / at "
          "its last sample |\n|---|---|---|---|---|")
    for name in names:
        samples = memory.samples[name]
        first_seen = samples[0][0]
        since = max(warm_until, first_seen + RESTARTED_WARM_UP_CHURNS * args.churn_seconds) \
            if first_seen > load.started else warm_until
        last = samples[-1]
        if last[0] - since < 120:
            print(f"| {name} | - | {last[1] / 1024:.1f} | (ran {last[0] - first_seen:.0f} s: "
                  f"under 2 minutes after its warm-up) | - / {last[3]} |")
            continue
        then = memory.at(name, since)
        print(f"| {name} | {then[0] / 1024:.1f} (heap {then[1] / 1024:.1f}) | "
              f"{last[1] / 1024:.1f} (heap {last[2] / 1024:.1f}) | "
              f"{(last[1] - then[0]) / then[0] * 100:+.1f}% | {then[2]} / {last[3]} |")


def _alive_at(memory: Memory, name: str, moment: float) -> bool:
    samples = memory.samples[name]
    return samples[0][0] <= moment and samples[-1][0] >= moment - 2 * SAMPLE_SECONDS


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench soak", description=__doc__.splitlines()[0],
                                     epilog="\n".join(__doc__.splitlines()[1:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--users", type=int, default=400)
    parser.add_argument("--tabs", type=int, default=5, help="sockets per user")
    parser.add_argument("--churn-seconds", type=float, default=60,
                        help="a socket reconnects with since about this often")
    parser.add_argument("--creates", type=float, default=50, help="notifications created a second")
    parser.add_argument("--alert-recipients", type=int, default=50)
    parser.add_argument("--sqlite-cache-mib", type=int, default=2,
                        help="storage.sqlite_cache_mib of the server (default 64 in a deployment)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the folder (log, storage) and write missing.json")
    args = parser.parse_args(argv)
    print(f"# python -m bench soak · {date.today()} · {platform.python_version()} · "
          f"{os.cpu_count()} cores", flush=True)
    asyncio.run(soak(args))


if __name__ == "__main__":
    main()
