"""`python -m bench escalation-timers`: 10,000 open escalations whose first steps come due within
one second: how late each fires, and what the burst does to a create meanwhile.

Load: a real `mojavox-notify serve` on a fresh embedded store. `--escalations` call escalations
are opened through the service's own path (`POST /api/notifications`, type `call_escalation`,
one `escalationKey` each, `--concurrency` in flight), spread over `--tenants` call centers.
The policy's one step tells the center's `floor-manager` (a `users` target, which a step
resolves in the escalation's tenant: one user of each center, `--tenants` users in all); the
managers of `--live-share` of the centers hold a live socket, so a step's notification and
escalation frames are written to real sockets.

One server opens about 750 a second on 2 cores, so 10,000 opened by one process would come due
over 13 s, not one. The due times are aligned instead: escalations are opened in waves, each
within `--wave-seconds`, the server restarted between waves with the policy's wait set so that
every wave comes due at the same moment (a policy is copied into each escalation it opens, and
the due steps are stored, so the last server fires what the earlier ones opened, as after any
restart; the servers between waves are SIGKILLed, which loses nothing answered). The last wave is opened by the server that fires them all.

Measured, on that last server, in one run:
- lateness of each step: its notification's stored creation time minus its due time (the
  escalation's creation + the wait), read from the store after the run: when the step's
  notification existed, which includes the whole send, not only the timers' pick-up. Also, for
  the managers with a socket, the frame's arrival minus the due time; and the server's own
  `mojavox_escalation_step_lateness_seconds` (due time to the batch taking it on, before its
  send) as a count within 1 s;
- create latency: `POST /api/notifications` of a plain type (`payment_received`) at
  `--probe-rate` a second, open loop, answer time and create→frame on a socket, while idle
  (`--idle-seconds` ending a second before the steps are prepared ahead) and while the steps
  fire (from `--lookahead` before the first due time, when the server starts preparing them,
  until the last step's notification is stored; also shown in its two halves); p50/p99 of
  each and the ratio of the p99s (target: at most 1.2x).

With `--own-process` the steps fire from the escalation timers' own process
(`escalation_timers.own_process`, a redis-server of the run's own carrying their frames to the
serving worker), and the probe measures what a burst still takes from requests then.

Bounded in count and time; stops by itself and stops the server it started.

    PYTHONPATH=$PWD .venv/bin/python -m bench escalation-timers
    PYTHONPATH=$PWD .venv/bin/python -m bench escalation-timers --escalations 2000 --idle-seconds 5
    PYTHONPATH=$PWD .venv/bin/python -m bench escalation-timers --own-process
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import leanws  # noqa: E402  (bench/, beside this file)
from mojavox_notify.auth import mint_token  # noqa: E402
from soak import Redis, free_port, percentile  # noqa: E402  (the soak's helpers)

SECRET = "escalation-benchmark-secret-of-at-least-32-bytes"
MANAGER = "floor-manager"
PROBE_USER = "probe-user"
WITHIN_SECONDS = 1.0  # the bound on a step's lateness
P99_RATIO_TARGET = 1.2
PHASE_TIMEOUT = 120.0
MAX_LATE_STARTS = 5



def token(user: str, roles: tuple[str, ...] = (), tenant: str | None = None) -> str:
    return mint_token(SECRET, user, list(roles), 6 * 3600, tenant=tenant)


def tenant_of(index: int, tenants: int) -> str:
    return f"cc-{index % tenants}"


# -- the server ------------------------------------------------------------------------------------

class Server:
    """`mojavox-notify serve` on `folder`, with the policy's one step `wait` seconds after an
    escalation opens. Started again (same folder, port and store) for each wave."""

    def __init__(self, folder: Path, batch: int = 500, workers: int = 1,
                 redis_url: str | None = None, lookahead: float = 2.0, own_process: bool = False):
        self.folder = folder
        self.batch = batch
        self.lookahead = lookahead
        self.workers = workers
        self.own_process = own_process
        self.redis_url = redis_url
        self.port = free_port()
        self.metrics_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.log = open(folder / "serve.log", "ab")

    def start(self, wait: float) -> None:
        settings = self.folder / "settings.yaml"
        settings.write_text(
            f"data_dir: {self.folder}\n"
            f"server:\n  port: {self.port}\n  max_sockets_per_ip: 0\n  workers: {self.workers}\n"
            + (f"redis:\n  url: {self.redis_url}\n" if self.redis_url else "") +
            "websocket:\n  max_sockets_per_user: 0\n"
            f"auth:\n  secret: {SECRET}\n"
            "rate_limits:\n  notifications_per_minute: 0\n  requests_per_minute: 0\n"
            "retention:\n  cleanup_interval_minutes: 0\n"
            f"metrics:\n  access: port\n  port: {self.metrics_port}\n"
            f"escalation_timers:\n  batch: {self.batch}\n  lookahead_seconds: {self.lookahead}\n"
            f"  own_process: {'true' if self.own_process else 'false'}\n"
            "logging:\n  level: WARNING\n"
            "escalations:\n  call_escalation:\n    claim: true\n"
            "    unanswered_after_seconds: 3600\n"  # no second wave of `unanswered` in the run
            f"    steps:\n      - after_seconds: {wait:.3f}\n        to: {{users: [{MANAGER}]}}\n",
            encoding="utf-8")
        # A session of its own: SIGKILL then takes its workers with it.
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mojavox_notify", "serve", "--settings", str(settings)],
            cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    async def ready(self, session: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited; see {self.folder / 'serve.log'}")
            try:
                async with session.get(f"{self.url}/healthz",
                                       timeout=aiohttp.ClientTimeout(total=2)) as answer:
                    if answer.status == 200:
                        return
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(0.05)
        raise RuntimeError("serve did not answer /healthz within 60 s")

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # its workers too: the next server takes the port
            try:
                os.killpg(self.process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.01)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    async def metrics(self, session: aiohttp.ClientSession) -> str:
        """Every worker's /metrics text (worker i answers on the metrics port + i, the timers'
        own process after the workers)."""
        texts = []
        for worker in range(self.workers + self.own_process):
            async with session.get(f"http://127.0.0.1:{self.metrics_port + worker}/metrics") as answer:
                texts.append(await answer.text())
        return "\n".join(texts)


# -- opening escalations ---------------------------------------------------------------------------

async def open_wave(session: aiohttp.ClientSession, server: Server, indexes: list[int],
                    args, until: float) -> tuple[int, int]:
    """Open escalations of `indexes` in turn, `--concurrency` in flight, none started after
    `until` (perf_counter): (opened, the next index not opened)."""
    service = {"Authorization": f"Bearer {token('bench-dialer', ('service',))}",
               "Content-Type": "application/json"}
    position = 0
    opened = 0

    async def opener() -> None:
        nonlocal position, opened
        while position < len(indexes) and time.perf_counter() < until:
            index = indexes[position]
            position += 1
            body = {"tenant": tenant_of(index, args.tenants), "userId": f"supervisor-{index}",
                    "type": "call_escalation", "title": "Call Escalation Required",
                    "message": f"agent-{index % 97} requests supervisor intervention",
                    "priority": "critical", "escalationKey": f"call:bench-{index}",
                    "data": {"callId": f"bench-{index}", "agentId": f"agent-{index % 97}"}}
            async with session.post(f"{server.url}/api/notifications", data=orjson.dumps(body),
                                    headers=service) as answer:
                if answer.status != 201:
                    raise RuntimeError(f"opening escalation {index}: {answer.status} "
                                       f"{await answer.text()}")
                await answer.read()
            opened += 1

    await asyncio.gather(*(opener() for _ in range(args.concurrency)))
    return opened, position


async def open_all(session: aiohttp.ClientSession, server: Server, args,
                   due_at: float) -> dict:
    """Waves of escalations, each opened within `--wave-seconds` by a server whose policy's
    wait makes that wave due at `due_at` (epoch seconds); the last server stays up."""
    pending = list(range(args.escalations))
    waves = []
    startup = 2.0  # seconds from launching serve to its first creation, learnt as it goes
    late_starts = 0
    while pending:
        launched = time.time()
        planned = launched + startup  # the wave starts opening then
        server.start(due_at - planned)
        await server.ready(session)
        startup = max(startup, 1.2 * (time.time() - launched) + 0.2)
        if time.time() > planned + 0.02:  # ready too late for the wait it was given: again
            late_starts += 1
            if late_starts > MAX_LATE_STARTS:
                raise RuntimeError("serve keeps starting later than planned: machine too busy")
            server.kill()
            continue
        await asyncio.sleep(planned - time.time())
        started = time.time()
        opened, position = await open_wave(session, server, pending, args,
                                           time.perf_counter() + args.wave_seconds)
        waves.append({"opened": opened, "seconds": time.time() - started})
        pending = pending[position:]
        if due_at - time.time() < args.idle_seconds + 5:
            raise RuntimeError(f"{len(pending)} escalations still to open {due_at - time.time():.0f} s "
                               "before they come due; raise --wait")
        if pending:  # every creation answered is committed: no need to wait for a clean exit
            server.kill()
    return {"waves": waves, "last_wave_at": time.time()}


# -- the sockets and the probe ---------------------------------------------------------------------

class Sockets:
    """Lean sockets: the live managers' (noting when each step's notification arrived) and the
    probe user's (noting when each probe arrived)."""

    def __init__(self):
        self.steps: dict[str, float] = {}  # escalation id -> time.time() its step frame arrived
        self.escalation_frames = 0
        self.probes: dict[str, float] = {}  # probe message -> time.time() it arrived
        self.connections: list = []

    def on_manager(self, data: bytes) -> None:
        at = time.time()
        frame = orjson.loads(data)
        if frame["type"] == "notification":
            shown = frame["payload"].get("escalation")
            if shown is not None and shown["step"] == 1:
                self.steps.setdefault(shown["id"], at)
        elif frame["type"] == "escalation":
            self.escalation_frames += 1

    def on_probe(self, data: bytes) -> None:
        at = time.time()
        frame = orjson.loads(data)
        if frame["type"] == "notification":
            self.probes.setdefault(frame["payload"]["message"], at)

    async def open(self, server: Server, live_tenants: list[str]) -> None:
        path = "/ws/notifications?token="
        for start in range(0, len(live_tenants), 50):
            self.connections += await asyncio.gather(*(
                leanws.connect("127.0.0.1", server.port, path + token(MANAGER, tenant=tenant),
                               self.on_manager) for tenant in live_tenants[start:start + 50]))
        self.connections.append(await leanws.connect(
            "127.0.0.1", server.port, path + token(PROBE_USER), self.on_probe))

    def close(self) -> None:
        for connection in self.connections:
            connection.close()


async def probe(session: aiohttp.ClientSession, server: Server, rate: float,
                stop: asyncio.Event) -> list[dict]:
    """A plain create every 1/rate s, open loop, until `stop`: each one's send time (epoch s)
    and answer time (s)."""
    headers = {"Authorization": f"Bearer {token('bench-probe', ('service',))}",
               "Content-Type": "application/json"}
    samples: list[dict] = []
    tasks = []

    async def create(number: int, due: float) -> None:
        message = f"probe {number}"
        body = {"userId": PROBE_USER, "type": "payment_received", "title": "Payment Received",
                "message": message, "data": {"amount": 1250, "accountId": f"AC-{number}"}}
        sent = time.time()
        started = time.perf_counter()
        async with session.post(f"{server.url}/api/notifications", data=json.dumps(body),
                                headers=headers,
                                timeout=aiohttp.ClientTimeout(total=PHASE_TIMEOUT)) as answer:
            await answer.read()
            status = answer.status
        samples.append({"message": message, "due": due, "sent": sent,
                        "answer": time.perf_counter() - started, "status": status})

    begun = time.time()
    number = 0
    while not stop.is_set():
        due = begun + number / rate
        if due > time.time():
            await asyncio.sleep(due - time.time())
        tasks.append(asyncio.ensure_future(create(number, due)))
        number += 1
    await asyncio.gather(*tasks)
    return samples


# -- what was stored -------------------------------------------------------------------------------

def stored_steps(database: Path) -> list[dict]:
    """Every escalation: its id, due time and when its step's notification was stored (epoch
    ms; None when it has none)."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
        escalations = {}
        for escalation_id, created_at, body in connection.execute(
                "SELECT id, created_at, body FROM escalations"):
            after = json.loads(body)["policy"]["steps"][0]["after_seconds"]
            escalations[escalation_id] = {"id": escalation_id,
                                          "due": created_at + int(after * 1000), "fired": None}
        for escalation_id, escalation, created_at in connection.execute(
                "SELECT escalation_id, escalation, created_at FROM notifications "
                "WHERE escalation_id IS NOT NULL"):
            if json.loads(escalation).get("step") == 1:
                found = escalations[escalation_id]
                found["fired"] = created_at if found["fired"] is None else min(found["fired"],
                                                                              created_at)
                found["copies"] = found.get("copies", 0) + 1
    return list(escalations.values())


def histogram_within(metrics: str, name: str, bound: str) -> tuple[float, float]:
    """(observations at most `bound`, all observations) of a histogram in /metrics text (of
    every worker: summed)."""
    within = total = 0.0
    for line in metrics.splitlines():
        if line.startswith(f'{name}_bucket{{le="{bound}"}}'):
            within += float(line.split()[-1])
        elif line.startswith(f"{name}_count"):
            total += float(line.split()[-1])
    return within, total


# -- the run ---------------------------------------------------------------------------------------

async def run(args, folder: Path) -> dict:
    redis = None
    if args.workers > 1 or args.own_process:  # processes reach each other's sockets through Redis
        redis = Redis(folder)
        redis.start()
    try:
        return await _run(args, folder, Server(folder, args.batch, args.workers,
                                               redis.url if redis else None, args.lookahead,
                                               args.own_process))
    finally:
        if redis is not None:
            redis.stop()


async def _run(args, folder: Path, server: Server) -> dict:
    sockets = Sockets()
    connector = aiohttp.TCPConnector(limit=0)
    started = time.time()
    due_at = started + args.wait
    print(f"common due time {due_at:.3f} (epoch s), {args.wait:g} s from now", flush=True)
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            opened = await open_all(session, server, args, due_at)
            live = [f"cc-{k}" for k in range(math.ceil(args.tenants * args.live_share))]
            await sockets.open(server, live)
            idle_from = due_at - args.lookahead - args.idle_seconds - 1.0
            if time.time() > idle_from:
                raise RuntimeError("no time left for the idle measurement; raise --wait")
            await asyncio.sleep(idle_from - time.time())
            stop = asyncio.Event()
            probing = asyncio.ensure_future(probe(session, server, args.probe_rate, stop))
            # Until every step fired (or the bound), then a little more of the probe.
            deadline = due_at + PHASE_TIMEOUT
            total = args.escalations
            while time.time() < deadline:
                await asyncio.sleep(0.25)
                if time.time() > due_at and (len(sockets.steps) >= expected_live(args)
                                             and await fired_count(session, server) >= total):
                    break
            await asyncio.sleep(1.0)
            stop.set()
            samples = await probing
            await asyncio.sleep(0.5)  # the last probe frames
            metrics = await server.metrics(session)
    finally:
        sockets.close()
        server.stop()
    return {"opened": opened, "due_at": due_at, "samples": samples, "sockets": sockets,
            "metrics": metrics, "steps": stored_steps(folder / "notify.db"),
            "idle_from": idle_from, "live": len(live), "seconds": time.time() - started}


def expected_live(args) -> int:
    live_tenants = math.ceil(args.tenants * args.live_share)
    return sum(1 for index in range(args.escalations)
               if index % args.tenants < live_tenants)


async def fired_count(session: aiohttp.ClientSession, server: Server) -> float:
    """Steps taken on so far, by the server's lateness histogram."""
    _, total = histogram_within(await server.metrics(session),
                                "mojavox_escalation_step_lateness_seconds", "1.0")
    return total


# -- the report ------------------------------------------------------------------------------------

def report(args, result: dict) -> None:
    due_at = result["due_at"]
    steps = result["steps"]
    fired = [s for s in steps if s["fired"] is not None]
    lateness = [(s["fired"] - s["due"]) / 1000 for s in fired]
    dues = [s["due"] / 1000 for s in steps]
    doubled = sum(s.get("copies", 1) - 1 for s in fired)
    last_fired = max((s["fired"] / 1000 for s in fired), default=due_at)
    first_due = min(dues, default=due_at)
    due_of = {s["id"]: s["due"] / 1000 for s in steps}
    delivered = [at - due_of[escalation] for escalation, at in result["sockets"].steps.items()
                 if escalation in due_of]
    within_server, taken = histogram_within(result["metrics"],
                                            "mojavox_escalation_step_lateness_seconds", "1.0")
    waves = result["opened"]["waves"]

    frames = result["sockets"].probes
    ok = [s for s in result["samples"] if s["status"] == 201]
    # The steps are prepared from `--lookahead` before their due time: that is part of firing.
    preparing_from = first_due - args.lookahead
    idle = [s for s in ok if result["idle_from"] <= s["due"] < preparing_from - 1.0]
    firing = [s for s in ok if preparing_from <= s["due"] <= last_fired]
    prepared = [s for s in ok if preparing_from <= s["due"] < first_due]
    stored = [s for s in ok if first_due <= s["due"] <= last_fired]

    def row(name: str, samples: list[dict]) -> dict:
        answers = [s["answer"] for s in samples]
        to_frame = [frames[s["message"]] - s["sent"] for s in samples if s["message"] in frames]
        return {"name": name, "count": len(samples), "p50": percentile(answers, 0.5),
                "p99": percentile(answers, 0.99), "max": max(answers, default=float("nan")),
                "frame_p50": percentile(to_frame, 0.5), "frame_p99": percentile(to_frame, 0.99),
                "frames": len(to_frame)}

    rows = [row("idle", idle), row("while the steps fire (from the lookahead on)", firing),
            row("of which: while they are prepared ahead", prepared),
            row("of which: from their due time until all are stored", stored)]
    failed = len(result["samples"]) - len(ok)

    print(f"\n## escalation timers: {args.escalations:,} open escalations due within one second\n")
    print(f"opened in {len(waves)} waves (restarts; each within {args.wave_seconds:g} s: "
          f"{min(w['seconds'] for w in waves):.2f}-{max(w['seconds'] for w in waves):.2f} s, "
          f"{min(w['opened'] for w in waves)}-{max(w['opened'] for w in waves)} each), "
          f"{args.concurrency} in flight; escalation_timers.batch {args.batch}; "
          f"{args.workers} worker{'s' if args.workers > 1 else ''}"
          f"{' and the timers in a process of their own (nice 5)' if args.own_process else ''}; "
          f"escalation_timers.lookahead_seconds {args.lookahead:g}; "
          f"due times span {1000 * (max(dues) - first_due):.0f} ms; "
          f"{args.tenants} centers, a step tells the center's {MANAGER}, "
          f"{result['live']} of them with a live socket\n")
    print("| escalations | fired | fired twice | within 1 s of due | lateness p50 ms | p99 ms "
          "| max ms | all fired after due, s |")
    print("|---|---|---|---|---|---|---|---|")
    within = sum(1 for value in lateness if value <= WITHIN_SECONDS)
    print(f"| {len(steps):,} | {len(fired):,} | {doubled} | {within:,} "
          f"({100 * within / max(1, len(steps)):.1f} %) | {1000 * percentile(lateness, 0.5):.0f} "
          f"| {1000 * percentile(lateness, 0.99):.0f} | {1000 * max(lateness, default=float('nan')):.0f} "
          f"| {last_fired - first_due:.2f} |")
    print(f"\nlateness = the step's notification's stored creation time - (the escalation's "
          f"creation + its wait). Frames on the {result['live']} live managers' sockets: "
          f"{len(delivered):,} of {expected_live(args):,}, due→frame p50 "
          f"{1000 * percentile(delivered, 0.5):.0f} ms, p99 {1000 * percentile(delivered, 0.99):.0f} ms, "
          f"max {1000 * max(delivered, default=float('nan')):.0f} ms; "
          f"{result['sockets'].escalation_frames:,} escalation frames. The server's own "
          f"step-lateness histogram (due → taken on, before the send): {within_server:.0f} of "
          f"{taken:.0f} within 1 s.")
    print(f"\ncreate latency: POST /api/notifications (payment_received) at {args.probe_rate:g}/s, "
          f"open loop; {failed} failed\n")
    print("| phase | creates | answer p50 ms | p99 ms | max ms | create→frame p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['count']} | {1000 * r['p50']:.1f} | {1000 * r['p99']:.1f} "
              f"| {1000 * r['max']:.1f} | {1000 * r['frame_p50']:.1f} | {1000 * r['frame_p99']:.1f} |")
    answer_ratio = rows[1]["p99"] / rows[0]["p99"]
    frame_ratio = rows[1]["frame_p99"] / rows[0]["frame_p99"]
    print(f"\np99 while firing / idle p99: answer {answer_ratio:.2f}x, create→frame "
          f"{frame_ratio:.2f}x (target <= {P99_RATIO_TARGET:g}x: "
          f"{'met' if answer_ratio <= P99_RATIO_TARGET else 'missed'} for the answer)")
    print(f"run took {result['seconds']:.0f} s")


def conditions() -> str:
    load = os.getloadavg()
    return (f"# python -m bench escalation-timers · {date.today()} · {platform.node()} · "
            f"Python {platform.python_version()} · {os.cpu_count()} cores · load average "
            f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the start · embedded SQLite store")


def parse_args(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(prog="python -m bench escalation-timers",
                                     description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--escalations", type=int, default=10_000)
    parser.add_argument("--tenants", type=int, default=100,
                        help="call centers; each one's floor manager is a step's target")
    parser.add_argument("--live-share", type=float, default=0.5,
                        help="share of the centers whose floor manager has a live socket")
    parser.add_argument("--concurrency", type=int, default=32, help="creations in flight")
    parser.add_argument("--wave-seconds", type=float, default=0.8,
                        help="no creation of a wave starts later than this after its first")
    parser.add_argument("--wait", type=float, default=240.0,
                        help="seconds from the start of the run to the common due time")
    parser.add_argument("--idle-seconds", type=float, default=10.0,
                        help="seconds of the idle create-latency measurement")
    parser.add_argument("--probe-rate", type=float, default=50.0, help="plain creates a second")
    parser.add_argument("--batch", type=int, default=500,
                        help="escalation_timers.batch: due escalations taken on in one round")
    parser.add_argument("--lookahead", type=float, default=2.0,
                        help="escalation_timers.lookahead_seconds: steps are prepared this long "
                             "before due (the create latency while firing counts from then)")
    parser.add_argument("--workers", type=int, default=1,
                        help="serve --workers: more than one shares a redis-server of the run's "
                             "own, and each worker fires its share of the due steps")
    parser.add_argument("--own-process", action="store_true",
                        help="escalation_timers.own_process: the steps fire from a process of "
                             "their own, the workers' sockets reached through a redis-server of "
                             "the run's own")
    parser.add_argument("--keep", action="store_true", help="keep the server's folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(conditions(), flush=True)
    folder = Path(tempfile.mkdtemp(prefix="bench-escalations-"))
    try:
        result = asyncio.run(run(args, folder))
        report(args, result)
    finally:
        if args.keep:
            print(f"\nkept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
