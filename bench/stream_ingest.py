"""Events in from a Redis stream and from NATS JetStream against `POST /api/events`, at the same
offered loads, in one run.

For each path a fresh `mojavox-notify serve` (one process, embedded SQLite, the Redis broker
and the stream on one redis-server of the benchmark's own; for the `nats` path the stream is on
a `nats-server -js` of the benchmark's own, on a temporary folder) gets `--users` dashboard sockets
(in client worker processes) and then, at each rate of `--rates`, `--seconds` of events offered
open loop: each a `system.alert` with an id to one user, carrying the time it was offered. The
HTTP path POSTs each (`--connections` at once at most); the stream path XADDs each (one
pipeline per millisecond tick), and the server consumes with `ingest.redis_streams` defaults;
the nats path publishes each through JetStream without waiting for its acknowledgement before
the next (an acknowledgement that does not come counts as failed), and the server consumes with
`ingest.nats` defaults.
Measured from the offer to the frame on the socket: delivered, late (not on a socket
DRAIN_SECONDS after the last offer: for the stream, still in its backlog, consumed before the
next rate), p50, p99. A rate is sustained when nothing failed or was late and p99 <=
`--p99-ms`; the highest sustained rate of each path, and their ratio, end the table. The
load generator shares the machine: the HTTP path's client costs more than the producer's
pipelined XADDs, which is part of what the stream saves. Bounded in count and time; stops by
itself.

    .venv/bin/python -m bench stream-ingest
    .venv/bin/python -m bench stream-ingest --rates 500,1000,2000 --seconds 5 --users 200
    .venv/bin/python -m bench stream-ingest --paths http,nats
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import date
from pathlib import Path

import aiohttp
import nats
import redis.asyncio as aioredis
import yaml

from peers import Peers
from targets import ROOT, SECRET, free_port, token

WORKERS = 4
STREAM = "bench:events"
NATS_STREAM = "BENCH"
NATS_SUBJECT = "bench.events.system.alert"
DRAIN_SECONDS = 3.0  # after the last offer, how long arrivals are still counted
PATHS = ("http", "stream", "nats")
#: The paths whose server consumes a stream (and whose backlog is waited out between rates).
STREAM_PATHS = ("stream", "nats")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


class RedisServer:
    """A redis-server of the benchmark's own, without persistence (as the soak's)."""

    def __init__(self, folder: Path):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind",
             "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_port(self.port, self.process, "redis-server")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


class NatsServer:
    """A `nats-server -js` of the benchmark's own, its JetStream store in `folder`."""

    def __init__(self, folder: Path):
        binary = shutil.which("nats-server") or shutil.which(
            "nats-server", path="/usr/local/sbin:/usr/sbin")
        if binary is None:
            raise RuntimeError("nats-server is not installed (apt-get install nats-server)")
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [binary, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_port(self.port, self.process, "nats-server")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


class Server:
    """One `serve` on a fresh embedded store, consuming STREAM (or, given `nats_url`, the
    NATS_STREAM there), rate limits and caps lifted."""

    def __init__(self, redis_url: str, prefix: str, nats_url: str | None = None):
        self.folder = Path(tempfile.mkdtemp(prefix="bench-stream-"))
        self.port = free_port()
        settings = {
            "data_dir": str(self.folder / "data"),
            "server": {"host": "0.0.0.0", "port": self.port, "max_sockets_per_ip": 0},
            "auth": {"secret": SECRET, "failed_per_minute_per_ip": 0},
            "websocket": {"max_sockets_per_user": 0},
            "redis": {"url": redis_url, "key_prefix": prefix},
            "rate_limits": {"notifications_per_minute": 0, "requests_per_minute": 0},
            "retention": {"cleanup_interval_minutes": 0},
            "logging": {"level": "WARNING"},
            "plugins": {"directory": str(ROOT / "plugins")},
            "ingest": {"nats": {"url": nats_url, "stream": NATS_STREAM,
                                "subjects": ["bench.events.>"]}} if nats_url
                      else {"redis_streams": [{"stream": STREAM}]},
        }
        (self.folder / "settings.yaml").write_text(yaml.safe_dump(settings), encoding="utf-8")
        log = open(self.folder / "server.log", "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mojavox_notify", "serve", "--settings", "settings.yaml"],
            cwd=self.folder, env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        _wait_for_port(self.port, self.process, f"serve (see {self.folder}/server.log)")

    def health(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=10) as answer:
            return json.loads(answer.read())

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _wait_for_port(port: int, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if process.poll() is not None:
                break
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not start")


def alert(user: str, event_id: str, sent: float) -> dict:
    """One notification for `user`, its message carrying when it was offered (peers.sent_of)."""
    return {"type": "system.alert", "id": event_id,
            "data": {"userIds": [user], "severity": "warning", "message": f"bench {sent:.6f}"}}


async def offer_http(port: int, users: list[str], rate: float, seconds: float, tag: str,
                     connections: int) -> tuple[int, int]:
    """POST /api/events `rate` a second for `seconds`, never waiting on answers: (sent, failed)."""
    url = f"http://127.0.0.1:{port}/api/events"
    headers = {"Authorization": f"Bearer {token('bench', ('service',))}",
               "Content-Type": "application/json"}
    failed = sent = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as session:
        async def post(body: bytes) -> None:
            nonlocal failed
            try:
                async with session.post(url, data=body, headers=headers,
                                        timeout=aiohttp.ClientTimeout(total=30)) as answer:
                    if answer.status >= 300:
                        failed += 1
            except (aiohttp.ClientError, asyncio.TimeoutError):
                failed += 1

        tasks = []
        start = time.time() + 0.05
        while sent < rate * seconds:
            due = start + sent / rate
            if due > time.time():
                await asyncio.sleep(due - time.time())
            body = json.dumps(alert(users[sent % len(users)], f"{tag}-{sent}", due)).encode()
            tasks.append(asyncio.ensure_future(post(body)))
            sent += 1
        await asyncio.gather(*tasks)
    return sent, failed


async def offer_stream(redis_url: str, users: list[str], rate: float, seconds: float,
                       tag: str) -> tuple[int, int]:
    """XADD `rate` a second for `seconds`: what is due at each tick in one pipeline."""
    client = aioredis.Redis.from_url(redis_url)
    failed = sent = 0
    try:
        start = time.time() + 0.05
        total = int(rate * seconds)
        while sent < total:
            now = time.time()
            due_count = min(total, int((now - start) * rate) + 1) - sent
            if due_count <= 0:
                await asyncio.sleep(max(0.0, start + sent / rate - now))
                continue
            async with client.pipeline(transaction=False) as pipeline:
                for n in range(sent, sent + due_count):
                    due = start + n / rate
                    pipeline.xadd(STREAM, {"event": json.dumps(
                        alert(users[n % len(users)], f"{tag}-{n}", due))})
                try:
                    await pipeline.execute()
                except aioredis.RedisError:
                    failed += due_count
            sent += due_count
            await asyncio.sleep(0.001)
    finally:
        await client.aclose()
    return sent, failed


async def offer_nats(nats_url: str, users: list[str], rate: float, seconds: float,
                     tag: str) -> tuple[int, int]:
    """Publish through JetStream `rate` a second for `seconds`, not waiting for each
    acknowledgement before the next; the unacknowledged ones count as failed."""
    client = await nats.connect(nats_url)
    js = client.jetstream(timeout=30)
    pending: list[asyncio.Future] = []
    sent = 0
    try:
        start = time.time() + 0.05
        total = int(rate * seconds)
        while sent < total:
            due = start + sent / rate
            if due > time.time():
                await asyncio.sleep(due - time.time())
            body = json.dumps(alert(users[sent % len(users)], f"{tag}-{sent}", due)).encode()
            pending.append(await js.publish_async(NATS_SUBJECT, body))
            sent += 1
        answers = await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 60)
    finally:
        await client.close()
    return sent, sum(1 for answer in answers if isinstance(answer, BaseException))


def run_path(path: str, redis: RedisServer, nats_server: NatsServer | None, users: list[str],
             rates: list[float], seconds: float, p99_ms: float, connections: int) -> list[dict]:
    server = Server(redis.url, f"bench-{path}", nats_server.url if path == "nats" else None)
    peers = None
    rows = []
    try:
        peers = Peers("mojavox", server.port, users, WORKERS)
        opened, failed, _ = peers.connected()
        if failed:
            raise RuntimeError(f"{failed} of {len(users)} sockets did not open")
        for rate in rates:
            peers.forget()
            tag = f"{path}-{rate:g}"
            if path == "http":
                sent, failed = asyncio.run(offer_http(server.port, users, rate, seconds, tag,
                                                      connections))
            elif path == "nats":
                sent, failed = asyncio.run(offer_nats(nats_server.url, users, rate, seconds, tag))
            else:
                sent, failed = asyncio.run(offer_stream(redis.url, users, rate, seconds, tag))
            delays = _drain(peers, sent - failed)
            row = {"path": path, "rate": rate, "sent": sent, "failed": failed,
                   "delivered": len(delays), "late": sent - failed - len(delays),
                   "p50_ms": 1000 * percentile(delays, 0.5), "p99_ms": 1000 * percentile(delays, 0.99)}
            row["sustained"] = not failed and not row["late"] and row["p99_ms"] <= p99_ms
            rows.append(row)
            print(f"  {path} {rate:g}/s: delivered {row['delivered']}/{sent}, "
                  f"p99 {row['p99_ms']:.1f} ms", file=sys.stderr, flush=True)
            if not row["sustained"] and (row["p99_ms"] > 10 * p99_ms or row["late"] > sent / 2):
                break  # far past what it sustains: higher rates only take longer
            _wait_until_consumed(server, path)
    finally:
        if peers is not None:
            peers.close()
        server.stop()
    return rows


def _drain(peers: Peers, expected: int) -> list[float]:
    """Offer-to-frame delays of what arrived, waiting up to DRAIN_SECONDS (more while it still
    comes in) for the rest."""
    deadline = time.monotonic() + DRAIN_SECONDS
    arrivals: list = []
    while time.monotonic() < deadline:
        arrivals = peers.collect()
        if len(arrivals) >= expected:
            break
        time.sleep(0.1)
    return [arrived - sent for arrived, sent in arrivals if sent is not None]


def _wait_until_consumed(server: Server, path: str, timeout: float = 60) -> None:
    """The next rate starts on an empty backlog (a stream behind would count against it)."""
    if path not in STREAM_PATHS:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        [source] = server.health()["sources"]
        if source.get("pending") == 0 and source.get("lag") == 0:
            return
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench stream-ingest",
                                     description=__doc__.splitlines()[0],
                                     epilog="\n".join(__doc__.splitlines()[1:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=500, help="dashboard sockets, one per user")
    parser.add_argument("--rates", default="250,500,1000,2000,3000,4000,6000,8000",
                        help="events a second offered, in turn")
    parser.add_argument("--seconds", type=float, default=6, help="per rate")
    parser.add_argument("--p99-ms", type=float, default=250, help="what counts as sustained")
    parser.add_argument("--connections", type=int, default=200,
                        help="HTTP connections the POSTing client holds open at most")
    parser.add_argument("--paths", default=",".join(PATHS))
    args = parser.parse_args(argv)
    rates = [float(rate) for rate in args.rates.split(",")]
    users = [f"bench-{index}" for index in range(args.users)]
    print(f"# python -m bench stream-ingest · {date.today()} · Python {platform.python_version()} "
          f"· {os.cpu_count()} cores · one serve process (embedded SQLite, Redis broker; the "
          f"nats path's JetStream on a nats-server of its own) · {args.users} sockets in {WORKERS} client processes · system.alert events with ids "
          f"to one user each · {args.seconds:g} s per rate, open loop · sustained: nothing "
          f"late or failed, p99 <= {args.p99_ms:g} ms\n", flush=True)
    paths = args.paths.split(",")
    folder = Path(tempfile.mkdtemp(prefix="bench-redis-"))
    redis = RedisServer(folder)
    nats_server = NatsServer(Path(tempfile.mkdtemp(prefix="bench-nats-"))) \
        if "nats" in paths else None
    try:
        results = {path: run_path(path, redis, nats_server, users, rates, args.seconds,
                                  args.p99_ms, args.connections)
                   for path in paths}
    finally:
        redis.stop()
        if nats_server is not None:
            nats_server.stop()
    print("| path | events/s offered | sent | failed | delivered | late | p50 ms | p99 ms | "
          "sustained |\n|---|---|---|---|---|---|---|---|---|")
    for rows in results.values():
        for row in rows:
            print(f"| {row['path']} | {row['rate']:g} | {row['sent']} | {row['failed']} | "
                  f"{row['delivered']} | {row['late']} | {row['p50_ms']:.1f} | "
                  f"{row['p99_ms']:.1f} | {'yes' if row['sustained'] else 'no'} |")
    best = {path: max((row["rate"] for row in rows if row["sustained"]), default=0.0)
            for path, rows in results.items()}
    ratios = [f"{path} vs HTTP {best[path] / best['http']:.2f}x"
              for path in STREAM_PATHS if path in best and best.get("http")]
    print("\nhighest sustained rate: " + ", ".join(f"{path} {rate:g}/s" for path, rate in best.items())
          + (f"; {', '.join(ratios)}" if ratios else ""))


if __name__ == "__main__":
    main(sys.argv[1:])
