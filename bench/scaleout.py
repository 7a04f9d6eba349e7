"""Scale-out: delivered notifications per second and latency with 1, 2 and 4 workers, and the
Redis hop's added latency.

For each worker count it starts a real `mojavox-notify serve --workers N` (embedded SQLite in a
temporary folder, a redis-server of its own on a free port), connects `--users` sockets (one per
user, a lean WebSocket reader so the client costs little CPU), and offers `system.alert` events
(`--recipients` random users each) at increasing rates, open loop: each notification carries the
time its event was due, and its latency is from then to its frame arriving. A rate step reports
the notification frames delivered per second and their p50/p99 latency; the summary compares the
highest delivered rate whose p99 stays within `--p99-ms` across worker counts.

The Redis hop: two single-process servers on one store and one Redis, sockets on the first;
notifications created one at a time on the first (delivered in process) and on the second
(delivered through Redis): the difference of their latencies is the hop.

The client runs on the same machine as the servers and shares its cores. So the summary ends
with each worker count's CPU ceiling: how many times one worker's rate N workers could deliver
if they kept every core as busy as one worker keeps its own, given the CPU per notification of
the servers, Redis and this client measured at the first rate step. Bounded; stops by itself.

    .venv/bin/python bench/scaleout.py
    .venv/bin/python bench/scaleout.py --workers 1,2 --rates 2000,4000,6000 --seconds 4
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mojavox_notify.auth import mint_token  # noqa: E402

SECRET = "benchmark-secret-of-at-least-32-bytes-long"
MARK = b'"message":"bench '
CORES = os.cpu_count() or 1


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir() if Path("/proc").exists() else ():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
    return found


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


# -- the lean socket reader -------------------------------------------------------------------------

class Arrivals:
    """Notification frames seen by every socket: when each was due and when it arrived."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []  # (due, arrived)

    def between(self, start: float, end: float) -> list[tuple[float, float]]:
        return [(due, arrived) for due, arrived in self.samples if start <= due < end]


class LeanSocket(asyncio.Protocol):
    """A WebSocket client that only finds the due time in notification frames (no JSON parse,
    no future per message), so the client's share of the CPU stays small."""

    def __init__(self, path: str, port: int, arrivals: Arrivals):
        self.request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                        "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n\r\n"
                        ).encode()
        self.arrivals = arrivals
        self.buffer = b""
        self.upgraded = False
        self.connected = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, error) -> None:
        if not self.connected.done():
            self.connected.set_exception(ConnectionError("socket closed before it was connected"))

    def data_received(self, data: bytes) -> None:
        now = time.time()
        buffer = self.buffer + data
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = buffer
                return
            if b" 101 " not in buffer[:end].split(b"\r\n", 1)[0]:
                self.connected.set_exception(ConnectionError(buffer[:end].decode(errors="replace")))
                return
            self.upgraded = True
            buffer = buffer[end + 4:]
        position, size = 0, len(buffer)
        while size - position >= 2:
            opcode = buffer[position] & 0x0F
            length = buffer[position + 1] & 0x7F
            header = 2
            if length == 126:
                if size - position < 4:
                    break
                length = int.from_bytes(buffer[position + 2:position + 4], "big")
                header = 4
            elif length == 127:
                if size - position < 10:
                    break
                length = int.from_bytes(buffer[position + 2:position + 10], "big")
                header = 10
            if size - position < header + length:
                break
            payload = buffer[position + header:position + header + length]
            position += header + length
            if opcode == 1:
                self._text(payload, now)
            elif opcode == 9:  # ping: answer with a masked pong
                self._send(0xA, payload)
        self.buffer = buffer[position:]

    def _text(self, payload: bytes, now: float) -> None:
        if payload.startswith(b'{"type":"notification"'):
            mark = payload.find(MARK)
            if mark >= 0:
                start = mark + len(MARK)
                self.arrivals.samples.append((float(payload[start:payload.index(b'"', start)]), now))
        elif payload.startswith(b'{"type":"connected"') and not self.connected.done():
            self.connected.set_result(None)

    def _send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.transport.write(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)


async def open_sockets(port: int, users: list[str], arrivals: Arrivals) -> list[LeanSocket]:
    loop = asyncio.get_running_loop()
    sockets = []
    for user in users:
        path = f"/ws/notifications?token={mint_token(SECRET, user, [], 7200)}"
        _, protocol = await loop.create_connection(lambda: LeanSocket(path, port, arrivals),
                                                   "127.0.0.1", port)
        sockets.append(protocol)
    await asyncio.wait_for(asyncio.gather(*(s.connected for s in sockets)), 60)
    return sockets


# -- a keep-alive HTTP poster ------------------------------------------------------------------------

class Poster:
    """One keep-alive HTTP/1.1 connection posting JSON; answers are read but not parsed."""

    def __init__(self, port: int):
        self.port = port
        self.token = mint_token(SECRET, "bench-service", ["service"], 7200)

    async def open(self) -> "Poster":
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    async def post(self, path: str, body: dict) -> int:
        data = json.dumps(body).encode()
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {self.token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


# -- servers -----------------------------------------------------------------------------------------

class Redis:
    def __init__(self, folder: Path):
        self.port = free_port()
        self.process = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind",
             "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


class Server:
    """`mojavox-notify serve` in a subprocess, with settings of its own."""

    def __init__(self, folder: Path, workers: int, redis_url: str | None, storage: Path):
        self.port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        settings = {
            "data_dir": str(folder / "data"),
            "server": {"host": "127.0.0.1", "port": self.port, "workers": workers},
            "auth": {"secret": SECRET},
            "storage": {"url": f"sqlite:///{storage}"},
            "rate_limits": {"notifications_per_minute": 0, "requests_per_minute": 0},
            "retention": {"cleanup_interval_minutes": 0},
            "logging": {"level": "WARNING"},
        }
        if redis_url:
            settings["redis"] = {"url": redis_url}
        path = folder / f"settings-{self.port}.yaml"
        path.write_text(json.dumps(settings), encoding="utf-8")  # JSON is YAML
        self.log = open(folder / f"serve-{self.port}.log", "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mojavox_notify", "serve", "--settings", str(path)],
            cwd=folder, stdout=self.log, stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "JWT_SECRET")})

    async def ready(self, workers: int) -> None:
        """Until `workers` different processes answered /healthz."""
        seen = set()
        deadline = time.monotonic() + 60
        while len(seen) < workers:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"serve did not start; see {self.log.name}")
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                answer = await reader.read()
                writer.close()
                body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
                seen.add(body.get("worker", {}).get("pid", 0))
            except (OSError, ValueError, IndexError):
                await asyncio.sleep(0.1)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


# -- throughput ----------------------------------------------------------------------------------------

async def offer(posters: list[Poster], users: list[str], recipients: int, rate: float,
                seconds: float) -> tuple[float, float]:
    """Post alerts so that `rate` notifications a second are due, for `seconds`; each alert's
    message carries its due time. Returns the window (start, end) of due times."""
    alerts_per_second = rate / recipients
    total = int(alerts_per_second * seconds)
    start = time.time() + 0.2
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(total):
        queue.put_nowait(index)

    async def send(poster: Poster) -> None:
        while not queue.empty():
            index = queue.get_nowait()
            due = start + index / alerts_per_second
            delay = due - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            status = await poster.post("/api/events", {
                "type": "system.alert", "data": {"userIds": random.sample(users, recipients),
                                                 "severity": "info", "message": f"bench {due:.6f}"}})
            if status != 202:
                raise RuntimeError(f"POST /api/events answered {status}")

    await asyncio.gather(*(send(poster) for poster in posters))
    return start, start + total / alerts_per_second


async def throughput(args, workers: int, redis: Redis | None, folder: Path) -> list[dict]:
    """One configuration's rate steps, on a store of its own: every run starts from an empty
    file, so a later round is not measured against the rows an earlier one left."""
    folder = Path(tempfile.mkdtemp(prefix=f"workers-{workers}-{'redis' if redis else 'local'}-",
                                   dir=folder))
    server = Server(folder, workers, redis.url if redis else None, folder / "notify.db")
    rows = []
    try:
        await server.ready(workers)
        arrivals = Arrivals()
        users = [f"bench-{workers}-{index}" for index in range(args.users)]
        sockets = await open_sockets(server.port, users, arrivals)
        posters = [await Poster(server.port).open() for _ in range(args.connections)]
        await offer(posters, users, args.recipients, min(args.rates), 1.0)  # warm-up
        await asyncio.sleep(1.0)
        server_pids = [server.process.pid, *children_of(server.process.pid)]
        for rate in args.rates:
            arrivals.samples.clear()
            cpu_before = [sum(cpu_seconds(pid) for pid in server_pids), sum(os.times()[:2]),
                          cpu_seconds(redis.process.pid) if redis else 0.0, time.monotonic()]
            start, end = await offer(posters, users, args.recipients, rate, args.seconds)
            cpu_after = [sum(cpu_seconds(pid) for pid in server_pids), sum(os.times()[:2]),
                         cpu_seconds(redis.process.pid) if redis else 0.0, time.monotonic()]
            elapsed = cpu_after[3] - cpu_before[3]
            server_cpu, client_cpu, redis_cpu = (
                (after - before) / elapsed * 100 for before, after in zip(cpu_before, cpu_after[:3]))
            await asyncio.sleep(args.drain)
            half = 0.5 * args.recipients / rate  # due times are printed to the microsecond
            window = arrivals.between(start - half, end - half)
            latencies = [(arrived - due) * 1000 for due, arrived in window]
            delivered_by_end = sum(1 for due, arrived in window if arrived < end)
            expected = int(round((end - start) * rate))
            row = {"workers": workers, "broker": "redis" if redis else "in-process",
                   "offered": rate, "delivered": len(window) / (end - start),
                   "delivered_in_window": delivered_by_end / (end - start),
                   "complete": len(window) >= expected,
                   "p50": percentile(latencies, 0.50), "p99": percentile(latencies, 0.99),
                   "load": os.getloadavg()[0],
                   # CPU time of the servers and Redis per notification: what the machine's
                   # other load does not change, unlike the rate a shared machine sustains.
                   "cpu_us": (server_cpu + redis_cpu) / 100 * 1e6 / rate,
                   "client_us": client_cpu / 100 * 1e6 / rate,
                   "server_percent": server_cpu,
                   "machine_percent": (server_cpu + client_cpu + redis_cpu) / CORES}
            rows.append(row)
            print(f"  workers {workers} ({row['broker']}): offered {rate:>6,.0f}/s  delivered "
                  f"{row['delivered']:>7,.0f}/s  p50 {row['p50']:7.1f} ms  p99 {row['p99']:7.1f} ms"
                  f"  cpu: servers {server_cpu:3.0f}% client {client_cpu:3.0f}% redis {redis_cpu:3.0f}%"
                  f"  load {row['load']:.1f}{'' if row['complete'] else '  (incomplete)'}", flush=True)
            if row["p99"] > args.give_up_ms or not row["complete"]:
                break
        for poster in posters:
            poster.close()
        for lean in sockets:
            lean.transport.close()
    finally:
        server.stop()
        for stored in folder.glob("notify.db*"):  # the log stays, for a server that failed
            stored.unlink()
    return rows


# -- the Redis hop -------------------------------------------------------------------------------------

async def redis_hop(args, redis: Redis, folder: Path) -> dict:
    storage = folder / "hop.db"
    first = Server(folder / "hop-first", 1, redis.url, storage)
    second = Server(folder / "hop-second", 1, redis.url, storage)
    try:
        await first.ready(1)
        await second.ready(1)
        arrivals = Arrivals()
        users = [f"hop-{index}" for index in range(20)]
        sockets = await open_sockets(first.port, users, arrivals)
        posters = {"in process": await Poster(first.port).open(),
                   "through Redis": await Poster(second.port).open()}
        latencies: dict[str, list[float]] = {name: [] for name in posters}
        for index in range(args.hop_count):
            name = "in process" if index % 2 == 0 else "through Redis"
            arrivals.samples.clear()
            due = time.time()
            await posters[name].post("/api/notifications", {
                "userId": random.choice(users), "type": "system_alert", "title": "hop",
                "message": f"bench {due:.6f}"})
            deadline = time.monotonic() + 5
            while not arrivals.samples and time.monotonic() < deadline:
                await asyncio.sleep(0.0005)
            if arrivals.samples:
                latencies[name].append((arrivals.samples[0][1] - due) * 1000)
            await asyncio.sleep(0.005)
        for poster in posters.values():
            poster.close()
        for lean in sockets:
            lean.transport.close()
    finally:
        first.stop()
        second.stop()
    return {name: (statistics.median(values), percentile(values, 0.99), len(values))
            for name, values in latencies.items()}


# -- report --------------------------------------------------------------------------------------------

def best_within(rows: list[dict], budget: float) -> dict | None:
    fitting = [row for row in rows if row["complete"] and row["p99"] <= budget]
    return max(fitting, key=lambda row: row["delivered"]) if fitting else None


def print_ceilings(first_steps: dict[tuple[int, bool], list[dict]],
                   bests: dict[tuple[int, bool], list[dict | None]], rate: float) -> None:
    """The most N workers could deliver against one, from what each costs in CPU: if N workers
    kept the machine's cores as busy as one worker keeps its one core, they would deliver
    cores × c1 / (cN + client) times its rate, where c1 and cN are the servers' and Redis's CPU
    per notification and `client` this benchmark's own (it shares the cores with N workers;
    with one, it has the other core to itself). Measured at the first rate step, which no
    configuration saturates; medians over the rounds. Then how busy each kept the machine at
    its best rate within the p99 budget."""
    base = first_steps.get((1, True))
    if not base:
        return
    c1 = statistics.median(row["cpu_us"] for row in base)
    print()
    print(f"CPU per notification at {rate:,.0f}/s (median of rounds): 1 worker {c1:.0f} µs "
          f"(servers + Redis)")
    for (workers, with_redis), rows in first_steps.items():
        if workers == 1 or not with_redis or not rows:
            continue
        cores = min(workers, CORES)
        cn = statistics.median(row["cpu_us"] for row in rows)
        client = statistics.median(row["client_us"] for row in rows)
        print(f"{workers} workers {cn:.0f} µs + client {client:.0f} µs: CPU ceiling on {cores} cores "
              f"{cores} × {c1:.0f} / ({cn:.0f} + {client:.0f}) = {cores * c1 / (cn + client):.2f}× "
              f"1 worker")
    for (workers, with_redis), found in bests.items():
        rows = [row for row in found if row]
        if not with_redis or not rows:
            continue
        if workers == 1:
            busy = ", ".join(f"{row['server_percent']:.0f}%" for row in rows)
            print(f"at its best rates 1 worker kept its process {busy} busy (of one core)")
        else:
            busy = ", ".join(f"{row['machine_percent']:.0f}%" for row in rows)
            print(f"at their best rates {workers} workers, Redis and the client kept the machine "
                  f"{busy} busy (of {CORES} cores)")


async def main_async(args) -> int:
    folder = Path(tempfile.mkdtemp(prefix="mojavox-scaleout-"))
    print(f"# bench/scaleout.py · {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC · "
          f"{CORES} cores · Python {platform.python_version()} · load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"# {args.users} sockets (one per user), system.alert to {args.recipients} random users "
          f"each, {args.connections} keep-alive posting connections, {args.seconds:g} s per rate step, "
          f"p99 budget {args.p99_ms:g} ms; client and servers share this machine's cores")
    redis = Redis(folder)
    groups = ([(1, False)] if args.in_process_baseline else []) + [(w, True) for w in args.workers]
    results: dict[tuple[int, bool], list[dict | None]] = {group: [] for group in groups}
    first_steps: dict[tuple[int, bool], list[dict]] = {group: [] for group in groups}
    try:
        for round_number in range(args.rounds):
            # Alternate the order so a change of the machine's load favours no configuration.
            order = groups if round_number % 2 == 0 else list(reversed(groups))
            print(f"round {round_number + 1} of {args.rounds}", flush=True)
            for workers, with_redis in order:
                rows = await throughput(args, workers, redis if with_redis else None, folder)
                results[(workers, with_redis)].append(best_within(rows, args.p99_ms))
                first_steps[(workers, with_redis)].extend(rows[:1])
        hop = await redis_hop(args, redis, folder) if args.hop_count else None
    finally:
        redis.stop()
        shutil.rmtree(folder, ignore_errors=True)

    print()
    print(f"| workers | broker | delivered/s with p99 ≤ {args.p99_ms:g} ms (median of {args.rounds} "
          f"rounds; each round) | p50 / p99 at that rate | vs 1 worker | server + Redis CPU per "
          f"notification |")
    print("|---|---|---|---|---|---|")
    medians = {}
    for group, bests in results.items():
        rates = [best["delivered"] if best else 0.0 for best in bests]
        medians[group] = statistics.median(rates)
    base = medians.get((1, True)) or None
    for (workers, with_redis), bests in results.items():
        rates = [best["delivered"] if best else 0.0 for best in bests]
        chosen = min((best for best in bests if best), default=None,
                     key=lambda best: abs(best["delivered"] - medians[(workers, with_redis)]))
        latency = f"{chosen['p50']:.1f} / {chosen['p99']:.1f} ms" if chosen else "n/a"
        ratio = f"{medians[(workers, with_redis)] / base:.2f}×" if base else "n/a"
        cpu = f"{chosen['cpu_us']:.0f} µs" if chosen else "n/a"
        print(f"| {workers} | {'redis' if with_redis else 'in-process'} | "
              f"{medians[(workers, with_redis)]:,.0f} ({', '.join(f'{rate:,.0f}' for rate in rates)}) | "
              f"{latency} | {ratio} | {cpu} |")
    print_ceilings(first_steps, results, args.rates[0])
    if hop:
        print()
        print("| delivery path | p50 | p99 | samples |")
        print("|---|---|---|---|")
        for name, (p50, p99, count) in hop.items():
            where = "the socket's own process" if name == "in process" else "the other process"
            print(f"| created on {where} ({name}) | {p50:.2f} ms | {p99:.2f} ms | {count} |")
        print(f"Redis hop adds {hop['through Redis'][0] - hop['in process'][0]:.2f} ms at p50, "
              f"{hop['through Redis'][1] - hop['in process'][1]:.2f} ms at p99")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2,4", help="worker counts to measure (1,2,4)")
    parser.add_argument("--rates", default="1500,2000,2500,3000,3500,4000,4500,5000,5500,6000,7000,8000",
                        help="offered notifications per second, in increasing steps")
    parser.add_argument("--users", type=int, default=1000, help="sockets, one per user (1000)")
    parser.add_argument("--recipients", type=int, default=50, help="users per alert (50)")
    parser.add_argument("--connections", type=int, default=32,
                        help="posting keep-alive connections, spread over the workers (32)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="repeat every configuration, in alternating order (2)")
    parser.add_argument("--seconds", type=float, default=4, help="seconds per rate step (4)")
    parser.add_argument("--drain", type=float, default=2, help="seconds to wait after a step (2)")
    parser.add_argument("--p99-ms", type=float, default=100, help="p99 budget for the summary (100)")
    parser.add_argument("--give-up-ms", type=float, default=1000,
                        help="stop raising the rate once p99 passes this (1000)")
    parser.add_argument("--hop-count", type=int, default=400,
                        help="sequential creations for the Redis hop, half each way (400; 0: skip)")
    parser.add_argument("--no-in-process-baseline", dest="in_process_baseline", action="store_false",
                        help="skip 1 worker with the in-process broker")
    args = parser.parse_args()
    args.workers = [int(w) for w in args.workers.split(",")]
    args.rates = [float(r) for r in args.rates.split(",")]
    if shutil.which("redis-server") is None:
        print("scaleout.py: redis-server is not installed (apt-get install redis-server)", file=sys.stderr)
        return 2
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
