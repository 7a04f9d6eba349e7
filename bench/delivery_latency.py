"""Delivery latency: from `POST /api/notifications` to the frame arriving on the user's sockets.

Starts a real server (its own embedded SQLite storage in a temporary folder, in-process broker),
opens `--users` × `--tabs` sockets, creates `--count` notifications through REST for random users one
after another, and prints the latency percentiles of the frame arriving on every tab and of the
REST call itself. Bounded in count and time; stops by itself.

    .venv/bin/python bench/delivery_latency.py --users 50 --tabs 2 --count 300
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import tornado.httpclient
import tornado.netutil
import tornado.websocket

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mojavox_notify.app import NotifyApp  # noqa: E402
from mojavox_notify.auth import mint_token  # noqa: E402
from mojavox_notify.settings import load_settings  # noqa: E402

SECRET = "benchmark-secret-of-at-least-32-bytes-long"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def run(args) -> None:
    folder = tempfile.mkdtemp(prefix="mojavox-bench-")
    settings = load_settings(None, environ={}, overrides={
        "data_dir": folder, "auth.secret": SECRET, "plugins.directory": str(ROOT / "plugins"),
        "rate_limits.notifications_per_minute": 0, "rate_limits.requests_per_minute": 0,
        "retention.cleanup_interval_minutes": 0, "logging.level": "WARNING"})
    app = NotifyApp(settings)
    await app.start(sockets=tornado.netutil.bind_sockets(0, "127.0.0.1"))
    try:
        await measure(app, args)
    finally:
        await app.stop()


async def measure(app: NotifyApp, args) -> None:
    users = [f"bench-user-{index}" for index in range(args.users)]
    arrivals: dict[str, list[float]] = {}
    sockets = []
    for user in users:
        for _ in range(args.tabs):
            url = f"ws://127.0.0.1:{app.port}/ws/notifications?token={mint_token(SECRET, user, [], 3600)}"
            connection = await tornado.websocket.websocket_connect(url)
            json.loads(await connection.read_message())  # connected
            sockets.append(connection)

    async def reader(connection):
        while True:
            message = await connection.read_message()
            if message is None:
                return
            frame = json.loads(message)
            if frame["type"] == "notification":
                arrivals.setdefault(frame["payload"]["message"], []).append(time.perf_counter())

    readers = [asyncio.ensure_future(reader(connection)) for connection in sockets]
    client = tornado.httpclient.AsyncHTTPClient()
    service_token = mint_token(SECRET, "bench-service", ["service"], 3600)
    rng = random.Random(1)
    sent_at: dict[str, float] = {}
    rest_times = []
    deadline = time.monotonic() + args.max_seconds
    for index in range(args.count):
        if time.monotonic() > deadline:
            break
        key = f"n{index}"
        body = json.dumps({"userId": rng.choice(users), "type": "payment_received",
                           "title": "Payment Received", "message": key})
        sent_at[key] = time.perf_counter()
        await client.fetch(f"http://127.0.0.1:{app.port}/api/notifications", method="POST",
                           body=body, headers={"Authorization": f"Bearer {service_token}",
                                               "Content-Type": "application/json"})
        rest_times.append((time.perf_counter() - sent_at[key]) * 1000)
    await asyncio.sleep(0.5)
    for connection in sockets:
        connection.close()
    await asyncio.gather(*readers, return_exceptions=True)

    latencies = [(arrival - sent_at[key]) * 1000 for key, times in arrivals.items() for arrival in times]
    expected = len(sent_at) * args.tabs
    print(f"conditions: python {platform.python_version()}, {os.cpu_count()} cores, embedded "
          f"SQLite storage, in-process broker, {args.users} users x {args.tabs} tabs, "
          f"{len(sent_at)} notifications sent sequentially over REST")
    print(f"frames delivered: {len(latencies)} of {expected} expected")
    for name, values in (("create->socket frame", latencies), ("REST create round trip", rest_times)):
        if values:
            print(f"{name:24s} ms: p50 {percentile(values, 0.5):6.2f}  p90 {percentile(values, 0.9):6.2f}"
                  f"  p99 {percentile(values, 0.99):6.2f}  max {max(values):6.2f}"
                  f"  mean {statistics.mean(values):6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=50, help="distinct users (default 50)")
    parser.add_argument("--tabs", type=int, default=2, help="sockets per user (default 2)")
    parser.add_argument("--count", type=int, default=300, help="notifications to create (default 300)")
    parser.add_argument("--max-seconds", type=float, default=60, help="stop sending after this long")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
