"""Storage at scale: does the default engine stay fast with a million stored notifications?

For each size (default 0, 100k and 1M notifications over 10k users) it fills a fresh embedded
store through the engine's own batched insert, starts `mojavox-notify serve` on it as a separate
process, and measures from this process over loopback:

- single create → frame: `POST /api/notifications`, then the frame on the recipient's socket
  (p50/p99 of `--creates` sequential creations);
- a `system.alert` to 1,000 connected users: from the POST until the last of the 1,000 sockets
  has its frame, as notifications/s (median of `--alerts` runs; the sockets are lean clients,
  bench/leanws.py, so this process keeps up with the server);
- a history page of 20 (`GET /api/notifications?limit=20`) and the unread count, p50/p99 over
  `--reads` random users;
- a topic send to `--topic-members` connected members (10,000 by default, every user of the
  fill, each with a lean socket): `POST /api/notifications` with `"topic"` until the last
  member has its frame, as notifications/s (median of `--topic-sends` runs);
- the database size on disk (file + WAL).

`--baseline REF` also fills a store with the package as of a git ref (extracted with `git
archive`, in a subprocess) and runs its server beside each size's, timing its single creates
right after ours: the ratio of create→frame to the earlier code, in one run.

Bounded in count and time; stops by itself.

    .venv/bin/python bench/storage_scale.py                      # 0, 100k, 1M
    .venv/bin/python bench/storage_scale.py --sizes 0,100000     # quicker
    .venv/bin/python bench/storage_scale.py --sizes 0,1000000 --baseline main
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import tornado.httpclient
import tornado.websocket

ROOT = Path(__file__).resolve().parent.parent
# A baseline's fill runs this file with that package (fill_with) instead of the working tree's.
sys.path.insert(0, os.environ.get("MOJAVOX_BENCH_SOURCE", str(ROOT)))

import leanws  # noqa: E402  (bench/, beside this file)
from targets import baseline_source  # noqa: E402  (bench/targets.py: python -m bench's too)
from mojavox_notify.auth import mint_token  # noqa: E402
from mojavox_notify.model import PRIORITIES, Draft  # noqa: E402
from mojavox_notify.settings import load_settings  # noqa: E402
from mojavox_notify.store.sqlite import SqliteStore  # noqa: E402

SECRET = "benchmark-secret-of-at-least-32-bytes-long"
TOPIC = "scale-topic"
FILL_BATCH = 5000
ALERT_USERS = 1000
PHASE_TIMEOUT = 120.0


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def fill(folder: Path, count: int, users: int, topic_members: int = 0) -> float:
    """Store `count` notifications for `users` users through the engine's batched insert, and
    a topic `scale-topic` of the first `topic_members` users."""
    settings = load_settings(None, environ={}, overrides={"data_dir": str(folder)})
    store = SqliteStore(folder / "notify.db", settings.storage)
    await store.open()
    started = time.perf_counter()
    rng = random.Random(count)
    try:
        for start in range(0, count, FILL_BATCH):
            drafts = [Draft(user_id=f"user-{rng.randrange(users)}", type="payment_received",
                            title="Payment Received",
                            message=f"Debtor {index} paid $1,250.00 on account #AC-{index}",
                            priority=rng.choice(PRIORITIES),
                            data={"amount": 1250, "accountId": f"AC-{index}", "debtorName": "Debtor"},
                            action_url="/payment-history")
                      for index in range(start, min(count, start + FILL_BATCH))]
            await store.insert_many(drafts)
        members = [f"user-{index}" for index in range(topic_members)]
        for start in range(0, len(members), 1000):
            await store.update_topic(TOPIC, members[start:start + 1000], [], len(members))
    finally:
        await store.close()
    return time.perf_counter() - started


def fill_with(source: Path, folder: Path, count: int, users: int) -> float:
    """`fill` by the package in `source` (a baseline's), in a subprocess; its seconds."""
    result = subprocess.run(
        [sys.executable, __file__, "--fill-only", str(folder), "--sizes", str(count),
         "--users", str(users)],
        env={**os.environ, "MOJAVOX_BENCH_SOURCE": str(source)},
        capture_output=True, text=True, timeout=3600, check=True)
    return float(result.stdout.strip().splitlines()[-1])


class Server:
    """`mojavox-notify serve` on the filled folder, in its own process (the package in
    `source` when given: a baseline's)."""

    def __init__(self, folder: Path, source: Path | None = None):
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (folder / "settings.yaml").write_text(
            f"data_dir: {folder}\n"
            f"server:\n  port: {self.port}\n  max_sockets_per_ip: 0\n"
            f"auth:\n  secret: {SECRET}\n"
            f"plugins:\n  directory: {ROOT / 'plugins'}\n"
            "rate_limits:\n  notifications_per_minute: 0\n  requests_per_minute: 0\n"
            "retention:\n  cleanup_interval_minutes: 0\n"
            "logging:\n  level: WARNING\n", encoding="utf-8")
        self.log = open(folder / "serve.log", "wb")
        environment = {**os.environ, **({"PYTHONPATH": str(source)} if source else {})}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mojavox_notify", "serve", "--settings", str(folder / "settings.yaml")],
            cwd=source or ROOT, stdout=self.log, stderr=subprocess.STDOUT, env=environment)

    async def ready(self) -> None:
        client = tornado.httpclient.AsyncHTTPClient()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited; see {self.folder / 'serve.log'}")
            try:
                await client.fetch(f"{self.url}/healthz", request_timeout=2)
                return
            except Exception:
                await asyncio.sleep(0.2)
        raise RuntimeError("serve did not answer /healthz within 60 s")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def token(user: str, roles=()) -> str:
    return mint_token(SECRET, user, list(roles), 3600)


async def open_socket(server: Server, user: str, inbox: asyncio.Queue | None = None):
    connection = await tornado.websocket.websocket_connect(
        f"ws://127.0.0.1:{server.port}/ws/notifications?token={token(user)}")
    while json.loads(await connection.read_message())["type"] != "connected":
        pass
    return connection


async def next_notification(connection) -> dict:
    while True:
        message = await connection.read_message()
        if message is None:
            raise RuntimeError("socket closed")
        frame = json.loads(message)
        if frame["type"] == "notification":
            return frame


async def single_creates(server: Server, count: int) -> tuple[list[float], list[float]]:
    client = tornado.httpclient.AsyncHTTPClient()
    user = "probe-user"
    connection = await open_socket(server, user)
    service = token("bench-service", ["service"])
    to_frame, to_answer = [], []
    for index in range(count):
        body = json.dumps({"userId": user, "type": "payment_received", "title": "Payment",
                           "message": f"probe {index}"})
        started = time.perf_counter()
        arrival = asyncio.ensure_future(next_notification(connection))
        response = await client.fetch(f"{server.url}/api/notifications", method="POST", body=body,
                                      headers={"Authorization": f"Bearer {service}",
                                               "Content-Type": "application/json"})
        to_answer.append(time.perf_counter() - started)
        frame = await asyncio.wait_for(arrival, 10)
        to_frame.append(time.perf_counter() - started)
        assert frame["payload"]["id"] == json.loads(response.body)["id"]
    connection.close()
    return to_frame, to_answer


class AlertRecipient:
    """One user's socket (a lean client, so 1,000 of them in this process do not set the
    figure): notes when its `connected` frame and each run's notification arrive."""

    def __init__(self, user: str):
        loop = asyncio.get_running_loop()
        self.user = user
        self.connected = loop.create_future()
        self.arrived: dict[str, float] = {}  # message -> perf_counter when it arrived
        self.socket = None

    def on_text(self, data: bytes) -> None:
        frame = orjson.loads(data)
        if frame["type"] == "connected" and not self.connected.done():
            self.connected.set_result(None)
        elif frame["type"] == "notification":
            self.arrived.setdefault(frame["payload"]["message"], time.perf_counter())

    async def open(self, server: Server) -> None:
        self.socket = await leanws.connect("127.0.0.1", server.port,
                                           f"/ws/notifications?token={token(self.user)}", self.on_text)
        await asyncio.wait_for(self.connected, 30)


async def last_arrival(recipients: list[AlertRecipient], message: str, what: str) -> float:
    """When the last recipient had `message` (perf_counter); every one of them must get it."""
    deadline = time.monotonic() + PHASE_TIMEOUT
    while not all(message in recipient.arrived for recipient in recipients):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not every recipient got it within {PHASE_TIMEOUT:g} s")
        await asyncio.sleep(0.002)
    return max(recipient.arrived[message] for recipient in recipients)


async def alert_rates(server: Server, users: int, runs: int) -> list[float]:
    """Each run: one `system.alert` to 1,000 connected users, from the POST until the last of
    them has its frame; every one of them must get it."""
    client = tornado.httpclient.AsyncHTTPClient()
    picked = random.Random(1).sample(range(users), ALERT_USERS) if users >= ALERT_USERS \
        else list(range(ALERT_USERS))
    recipients = [AlertRecipient(f"user-{index}") for index in picked]
    for start in range(0, len(recipients), 100):
        await asyncio.gather(*(recipient.open(server) for recipient in recipients[start:start + 100]))
    service = token("bench-service", ["service"])
    rates = []
    for run in range(runs):
        message = f"Dialer degraded (run {run})"
        body = json.dumps({"type": "system.alert", "data": {
            "userIds": [recipient.user for recipient in recipients], "severity": "error",
            "message": message}})
        started = time.perf_counter()
        await client.fetch(f"{server.url}/api/events", method="POST", body=body,
                           headers={"Authorization": f"Bearer {service}",
                                    "Content-Type": "application/json"}, request_timeout=PHASE_TIMEOUT)
        rates.append(ALERT_USERS / (await last_arrival(recipients, message, f"alert run {run}")
                                    - started))
    for recipient in recipients:
        recipient.socket.close()
    await asyncio.sleep(2)  # let the server tear the sockets down before the next phase
    return rates


async def topic_rates(server: Server, members: int, runs: int) -> list[float]:
    """Each run: one draft to the topic of `members` connected users, from the POST until the
    last of them has its frame; every one of them must get it."""
    client = tornado.httpclient.AsyncHTTPClient()
    recipients = [AlertRecipient(f"user-{index}") for index in range(members)]
    for start in range(0, len(recipients), 200):
        await asyncio.gather(*(recipient.open(server) for recipient in recipients[start:start + 200]))
    service = token("bench-service", ["service"])
    rates = []
    for run in range(runs):
        message = f"Dialer 7 is down (run {run})"
        body = json.dumps({"topic": TOPIC, "type": "system_alert", "title": "System Alert",
                           "message": message, "priority": "high"})
        started = time.perf_counter()
        response = await client.fetch(
            f"{server.url}/api/notifications", method="POST", body=body,
            headers={"Authorization": f"Bearer {service}", "Content-Type": "application/json"},
            request_timeout=PHASE_TIMEOUT)
        assert json.loads(response.body)["created"] == members, response.body
        rates.append(members / (await last_arrival(recipients, message, f"topic run {run}")
                                - started))
    for recipient in recipients:
        recipient.socket.close()
    await asyncio.sleep(2)
    return rates


async def reads(server: Server, users: int, count: int) -> tuple[list[float], list[float]]:
    client = tornado.httpclient.AsyncHTTPClient()
    rng = random.Random(2)
    pages, unread = [], []
    for _ in range(count):
        user = f"user-{rng.randrange(max(users, 1))}"
        headers = {"Authorization": f"Bearer {token(user)}"}
        started = time.perf_counter()
        await client.fetch(f"{server.url}/api/notifications?limit=20", headers=headers)
        pages.append(time.perf_counter() - started)
        started = time.perf_counter()
        await client.fetch(f"{server.url}/api/notifications/unread-count", headers=headers)
        unread.append(time.perf_counter() - started)
    return pages, unread


def disk_size(folder: Path) -> int:
    return sum((folder / name).stat().st_size for name in ("notify.db", "notify.db-wal")
               if (folder / name).exists())


async def measure(size: int, args, source: Path | None) -> dict:
    folder = Path(tempfile.mkdtemp(prefix=f"mojavox-scale-{size}-"))
    earlier = Path(tempfile.mkdtemp(prefix=f"mojavox-scale-{size}-baseline-")) if source else None
    try:
        fill_seconds = await fill(folder, size, args.users, args.topic_members)
        if earlier is not None:
            fill_with(source, earlier, size, args.users)
        server = Server(folder)
        baseline = Server(earlier, source) if earlier is not None else None
        try:
            await server.ready()
            if baseline is not None:
                await baseline.ready()
                await single_creates(baseline, 20)
            await single_creates(server, 20)  # warm up
            to_frame, to_answer = await single_creates(server, args.creates)
            before = (await single_creates(baseline, args.creates))[0] if baseline else None
            rates = await alert_rates(server, args.users, args.alerts)
            topic = (await topic_rates(server, args.topic_members, args.topic_sends)
                     if args.topic_members else [])
            pages, unread = await reads(server, args.users, args.reads)
        finally:
            server.stop()
            if baseline is not None:
                baseline.stop()
        return {"size": size, "fill_s": fill_seconds, "frame": to_frame, "answer": to_answer,
                "alert": sorted(rates)[len(rates) // 2], "pages": pages, "unread": unread,
                "disk": disk_size(folder), "before": before,
                "topic": sorted(topic)[len(topic) // 2] if topic else None}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if earlier is not None:
            shutil.rmtree(earlier, ignore_errors=True)


def milliseconds(values: list[float], share: float) -> str:
    return f"{percentile(values, share) * 1000:.1f}"


def report(results: list[dict], args) -> None:
    print(f"\nMOJAVOX Notify storage at scale — embedded SQLite engine, {args.users:,} users; "
          f"{platform.node()} ({os.cpu_count()} cores, Python {platform.python_version()}), "
          f"{time.strftime('%Y-%m-%d')}")
    print(f"single creates: {args.creates} sequential; alert: {ALERT_USERS:,} connected users, "
          f"median of {args.alerts}; reads: {args.reads} random users\n")
    print("| stored | create→frame p50 / p99 (ms) | REST create p50 (ms) | 1,000-user alert "
          f"(notifications/s) | {args.topic_members:,}-member topic (notifications/s) "
          "| history page p50 / p99 (ms) | unread count p50 / p99 (ms) | on disk |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        topic = f"{r['topic']:,.0f}" if r["topic"] else "-"
        print(f"| {r['size']:,} | {milliseconds(r['frame'], .5)} / {milliseconds(r['frame'], .99)} "
              f"| {milliseconds(r['answer'], .5)} | {r['alert']:,.0f} | {topic} "
              f"| {milliseconds(r['pages'], .5)} / {milliseconds(r['pages'], .99)} "
              f"| {milliseconds(r['unread'], .5)} / {milliseconds(r['unread'], .99)} "
              f"| {r['disk'] / 1e6:,.1f} MB |")
    empty = next((r for r in results if r["size"] == 0), None)
    if empty:
        print("\nratios to the empty store (create→frame): " + ", ".join(
            f"{r['size']:,}: p50 {percentile(r['frame'], .5) / percentile(empty['frame'], .5):.2f}×, "
            f"p99 {percentile(r['frame'], .99) / percentile(empty['frame'], .99):.2f}×"
            for r in results if r is not empty))
    print("fill times: " + ", ".join(f"{r['size']:,} in {r['fill_s']:.0f} s" for r in results))
    if args.baseline:
        print(f"\nsingle create→frame against {args.baseline} (its own fill, timed right after "
              "ours): " + ", ".join(
                  f"{r['size']:,}: p50 {milliseconds(r['before'], .5)} ms, ours "
                  f"{percentile(r['frame'], .5) / percentile(r['before'], .5):.2f}×; p99 "
                  f"{milliseconds(r['before'], .99)} ms, ours "
                  f"{percentile(r['frame'], .99) / percentile(r['before'], .99):.2f}×"
                  for r in results))


async def main(args) -> None:
    gc.freeze()  # this client holds 1,000 sockets too: keep its collector from skewing timings
    gc.set_threshold(50_000, 20, 20)
    if args.fill_only:  # a baseline's fill, run by its own package (fill_with)
        print(await fill(Path(args.fill_only), args.sizes[0], args.users))
        return
    source = baseline_source(args.baseline) if args.baseline else None
    results = []
    for size in args.sizes:
        print(f"filling {size:,} notifications and measuring ...", flush=True)
        results.append(await measure(size, args, source))
    report(results, args)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--sizes", type=lambda text: [int(part) for part in text.split(",")],
                        default=[0, 100_000, 1_000_000], help="stored notifications to measure at")
    parser.add_argument("--users", type=int, default=10_000, help="users the fill spreads over")
    parser.add_argument("--creates", type=int, default=300, help="sequential single creates")
    parser.add_argument("--alerts", type=int, default=9, help="1,000-user alerts to time")
    parser.add_argument("--reads", type=int, default=300, help="history pages and unread counts")
    parser.add_argument("--topic-members", type=int, default=10_000,
                        help="members of the topic sent to (0: no topic phase)")
    parser.add_argument("--topic-sends", type=int, default=3, help="topic sends to time")
    parser.add_argument("--baseline", metavar="REF",
                        help="also time single creates of the package as of this git ref")
    parser.add_argument("--fill-only", metavar="FOLDER", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
