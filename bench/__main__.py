"""`python -m bench ALL|NAME ...`: delivery benchmarks, MOJAVOX Notify against a plain Tornado
server and python-socketio, in one run, with a table of figures and ratios.

Scenarios (each starts every server fresh, clients in worker processes from 127.0.0.x):
- idle: N authenticated idle sockets: connects per second and server memory per socket;
- latency: N sockets, an open-loop generator creating notifications at each rate for some
  seconds: create→frame p50/p99 and how many never arrived;
- fanout: one alert to N users (MOJAVOX: system.alert events of 1,000 users each, all
  persisted; the others: one broadcast request): time until the last socket has it; then one
  topic-less broadcast to every socket (MOJAVOX: POST /api/broadcasts, stored once; the
  others: their broadcast request again), timed the same way;
- sustained: N sockets, alerts to SUSTAINED_RECIPIENTS random users each offered open loop at
  rising rates (MOJAVOX: system.alert events, every notification stored; the others: their
  broadcast request): deliveries a second offered, delivered, lost, p50/p99; the highest rate
  each server sustains (everything delivered, p99 within SUSTAINED_P99_MS) and their ratio;
- storm (MOJAVOX only): the server SIGKILLed during a burst of creations and restarted; every
  socket reconnects with `since`: time until all are back, and any notification missed or
  received twice.

`python -m bench soak` is the long run with faults (bench/soak.py, `--help` there): two workers on
Redis, churning sockets, steady load, workers killed, Redis restarted, storage stalled, a hostile
client; missing and doubled notifications and memory per minute.

`python -m bench escalation-timers` (bench/escalation_timers.py, `--help` there): 10,000 open
escalations whose steps come due within one second; each step's lateness, and create latency
while they fire against idle.

`python -m bench escalation-writer` (bench/escalation_writer.py, `--help` there): the embedded
engine's one writer alone, for several ways of cutting such a burst into parts: how late the
steps are stored against how long a create waits meanwhile.

`python -m bench stream-ingest` (bench/stream_ingest.py, `--help` there): events from a Redis
stream to the sockets against `POST /api/events` at the same offered loads: the highest
sustained rate of each and p99 from the offer to the frame.

Bounded in count and time; stops by itself. `--quick` shrinks everything for a smoke run.
`--baseline REF` also runs MOJAVOX Notify as of a git ref (`mojavox@REF`, its package extracted
with `git archive` and run from the same venv) in the same run, and prints our ratios to it.

    .venv/bin/python -m bench ALL
    .venv/bin/python -m bench latency --sockets 5000 --rates 100,300,1000 --seconds 20
    .venv/bin/python -m bench ALL --quick --baseline main
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import sqlite3
import sys
import time
from datetime import date
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

if __name__ == "__main__" and sys.argv[1:2] == ["soak"]:  # it needs none of the peers' packages
    import soak  # noqa: E402

    soak.main(sys.argv[2:])
    sys.exit(0)
if __name__ == "__main__" and sys.argv[1:2] == ["escalation-timers"]:
    import escalation_timers  # noqa: E402

    escalation_timers.main(sys.argv[2:])
    sys.exit(0)
if __name__ == "__main__" and sys.argv[1:2] == ["escalation-writer"]:
    import escalation_writer  # noqa: E402

    escalation_writer.main(sys.argv[2:])
    sys.exit(0)
if __name__ == "__main__" and sys.argv[1:2] == ["stream-ingest"]:
    import stream_ingest  # noqa: E402

    stream_ingest.main(sys.argv[2:])
    sys.exit(0)

from peers import Peers  # noqa: E402
from targets import KINDS, Target, post  # noqa: E402

WORKERS = 4
MOJAVOX_ALERT_USERS = 1000  # system.alert's userIds limit
SUSTAINED_RECIPIENTS = 100
SUSTAINED_P99_MS = 250
KEEPS_UP_P50_MS = 50  # a looser reading of "sustained": the median does not fall behind
STORM_RATE = 1000  # creations per second before and during the restart
STORM_KILL_AFTER = 2.0  # seconds into the burst


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def users(count: int) -> list[str]:
    return [f"bench-{index}" for index in range(count)]


def with_target(kind: str, sockets: int, scenario):
    target = Target(kind)
    target.start()
    peers = None
    try:
        before = target.rss_kb()
        peers = Peers(kind, target.port, users(sockets), WORKERS)
        opened, failed, seconds = peers.connected()
        return scenario(target, peers, {"opened": opened, "failed": failed, "connect_s": seconds,
                                        "rss_before_kb": before})
    finally:
        if peers is not None:
            peers.close()
        target.stop()


# -- scenarios ---------------------------------------------------------------------------------

def idle(target: Target, peers: Peers, connected: dict) -> dict:
    time.sleep(2)  # let the server settle after the connect storm
    grown = target.rss_kb() - connected["rss_before_kb"]
    return {"sockets": connected["opened"], "failed": connected["failed"],
            "connects_per_s": connected["opened"] / connected["connect_s"],
            "kb_per_socket": grown / max(1, connected["opened"])}


async def open_loop(target: Target, socket_count: int, rate: float, seconds: float,
                    stop=lambda: False) -> tuple[int, int]:
    """Send `rate` creations a second for `seconds` (or until `stop()`), never waiting on
    answers: (sent, failed)."""
    failed = 0
    sent = 0
    interval = 1.0 / rate
    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def create(user: str) -> None:
            nonlocal failed
            if not await posted(session, target.create_request(user, time.time())):
                failed += 1

        tasks = []
        start = time.perf_counter()
        while time.perf_counter() - start < seconds and not stop():
            due = start + sent * interval
            if due > time.perf_counter():
                await asyncio.sleep(due - time.perf_counter())
            tasks.append(asyncio.ensure_future(create(f"bench-{sent % socket_count}")))
            sent += 1
        await asyncio.gather(*tasks)
    return sent, failed


async def posted(session: aiohttp.ClientSession, request: tuple[str, bytes, dict]) -> bool:
    """Whether the server took the request (a 2xx answer within 30 s)."""
    url, body, headers = request
    try:
        async with session.post(url, data=body, headers=headers,
                                timeout=aiohttp.ClientTimeout(total=30)) as answer:
            return answer.status < 300
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return False


def latency(rates: list[float], seconds: float):
    def scenario(target: Target, peers: Peers, connected: dict) -> list[dict]:
        rows = []
        for rate in rates:
            peers.forget()
            sent, failed = asyncio.run(open_loop(target, connected["opened"], rate, seconds))
            time.sleep(2)
            arrivals = [arrived - when for arrived, when in peers.collect() if when is not None]
            rows.append({"rate": rate, "sent": sent, "failed": failed, "received": len(arrivals),
                         "lost": sent - failed - len(arrivals),
                         "p50_ms": 1000 * percentile(arrivals, 0.5),
                         "p99_ms": 1000 * percentile(arrivals, 0.99)})
        return rows
    return scenario


def sustained(rates: list[float], seconds: float):
    """`rates` in deliveries a second (each alert brings SUSTAINED_RECIPIENTS)."""
    def scenario(target: Target, peers: Peers, connected: dict) -> list[dict]:
        everyone = users(connected["opened"])
        rows = []
        for rate in rates:
            peers.forget()
            sent, failed = asyncio.run(alert_loop(target, everyone, rate / SUSTAINED_RECIPIENTS,
                                                  seconds))
            time.sleep(2)
            delays = [arrived - when for arrived, when in peers.collect() if when is not None]
            offered = (sent - failed) * SUSTAINED_RECIPIENTS
            row = {"rate": rate, "alerts": sent, "failed": failed, "offered": offered,
                   "delivered": len(delays), "lost": offered - len(delays),
                   "p50_ms": 1000 * percentile(delays, 0.5),
                   "p99_ms": 1000 * percentile(delays, 0.99)}
            row["sustained"] = (not failed and not row["lost"]
                                and row["p99_ms"] <= SUSTAINED_P99_MS)
            row["keeps_up"] = not failed and not row["lost"] and row["p50_ms"] <= KEEPS_UP_P50_MS
            rows.append(row)
            if row["p99_ms"] > 10 * SUSTAINED_P99_MS or row["lost"] > offered / 2:
                break  # far past what it sustains: the higher rates only take longer
        return rows
    return scenario


async def alert_loop(target: Target, everyone: list[str], per_second: float,
                     seconds: float) -> tuple[int, int]:
    """Alerts to SUSTAINED_RECIPIENTS random users, `per_second` for `seconds`, open loop, each
    carrying the time it was due: (sent, failed)."""
    failed = sent = 0
    connector = aiohttp.TCPConnector(limit=100)
    chooser = random.Random(7)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def alert(due: float) -> None:
            nonlocal failed
            request = target.alert_request(chooser.sample(everyone, SUSTAINED_RECIPIENTS), sent=due)
            if not await posted(session, request):
                failed += 1

        tasks = []
        start = time.time() + 0.1
        while sent < per_second * seconds:
            due = start + sent / per_second
            if due > time.time():
                await asyncio.sleep(due - time.time())
            tasks.append(asyncio.ensure_future(alert(due)))
            sent += 1
        await asyncio.gather(*tasks)
    return sent, failed


def fanout(target: Target, peers: Peers, connected: dict) -> dict:
    everyone = users(connected["opened"] + connected["failed"])
    batch = MOJAVOX_ALERT_USERS if target.family == "mojavox" else len(everyone)
    alert = timed_delivery(peers, connected["opened"], [
        target.alert_request(everyone[i:i + batch]) for i in range(0, len(everyone), batch)])
    broadcast = timed_delivery(peers, connected["opened"], [target.broadcast_request(everyone)])
    # Inside the server: from the broadcast's arrival to its frame handed to every socket.
    fan_out = target.metric("mojavox_broadcast_fan_out_seconds_sum")
    return {"users": connected["opened"], "received": alert["received"],
            "seconds": alert["seconds"], "requests": alert["requests"],
            "broadcast_received": broadcast["received"], "broadcast_seconds": broadcast["seconds"],
            "fan_out_ms": float("nan") if fan_out is None else 1000 * fan_out}


def timed_delivery(peers: Peers, sockets: int, requests: list) -> dict:
    """Send `requests` at once; the time until the last of `sockets` frames arrived."""
    peers.forget()
    started = time.time()

    async def send_all() -> None:
        await asyncio.gather(*(asyncio.to_thread(post, request) for request in requests))

    asyncio.run(send_all())
    deadline = time.monotonic() + 60
    arrivals: list = []
    while time.monotonic() < deadline:
        arrivals = peers.collect()
        if len(arrivals) >= sockets:
            break
        time.sleep(0.05)
    last = max((arrived for arrived, _ in arrivals), default=float("nan"))
    return {"received": len(arrivals), "seconds": last - started, "requests": len(requests)}


def storm(target: Target, peers: Peers, connected: dict) -> dict:
    """Every user gets a notification; then a burst of creations at `STORM_RATE`/s, the server
    SIGKILLed halfway through it and started again on its storage; every socket reconnects
    with `since` its last notification. How long until all are live again, and whether each
    has every notification stored for its user, exactly once."""
    everyone = users(connected["opened"] + connected["failed"])
    asyncio.run(send_open_loop(target, everyone, STORM_RATE, len(everyone) / STORM_RATE))
    time.sleep(2)
    peers.arm()
    burst = asyncio.run(send_open_loop(target, everyone, STORM_RATE, 2 * STORM_KILL_AFTER,
                                       kill_after=STORM_KILL_AFTER))
    restarted = time.time()
    target.start()
    deadline = time.monotonic() + 90
    back = peers.back()
    while back[0] < connected["opened"] and time.monotonic() < deadline:
        time.sleep(0.25)
        back = peers.back()
    time.sleep(2)  # the backlog of the last ones back
    received = peers.received()
    stored = stored_ids(Path(target.folder) / "notify.db")
    missing = sum(len(set(stored.get(user, ())) - set(ids)) for user, ids in received.items())
    doubled = sum(len(ids) - len(set(ids)) for ids in received.values())
    return {"sockets": connected["opened"], "back": back[0],
            "seconds": back[1] - restarted if back[0] else float("nan"),
            "attempts": back[2], "burst_sent": burst[0], "burst_failed": burst[1],
            "stored": sum(len(ids) for ids in stored.values()), "missing": missing,
            "doubled": doubled}


async def send_open_loop(target: Target, everyone: list[str], rate: float, seconds: float,
                         kill_after: float | None = None) -> tuple[int, int]:
    """Creations for the users in turn at `rate`/s for `seconds`; with `kill_after`, SIGKILL
    the server that many seconds in and stop sending."""

    async def killer() -> None:
        await asyncio.sleep(kill_after)
        target.kill()

    task = asyncio.ensure_future(killer()) if kill_after is not None else None
    sent, failed = await open_loop(target, len(everyone), rate, seconds,
                                   stop=lambda: task is not None and task.done())
    if task is not None:
        await task
    return sent, failed


def stored_ids(database: Path) -> dict[str, list[str]]:
    """Every user's stored notification ids, read from the embedded store's file."""
    found: dict[str, list[str]] = {}
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
        for user, notification in connection.execute("SELECT user_id, id FROM notifications"):
            found.setdefault(user, []).append(notification)
    return found


# -- report ------------------------------------------------------------------------------------

def ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}x" if theirs and theirs == theirs else "-"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0],
                                     epilog="\n".join(__doc__.splitlines()[1:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", choices=["ALL", "idle", "latency", "sustained", "fanout", "storm"])
    parser.add_argument("--sockets", type=int, default=5000)
    parser.add_argument("--rates", default="100,300,1000")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--sustained-rates", default="2000,4000,6000,8000,10000,12000,15000",
                        help="deliveries a second offered (alerts of %d users)" % SUSTAINED_RECIPIENTS)
    parser.add_argument("--fanout-users", type=int, default=10000)
    parser.add_argument("--servers", default=",".join(KINDS))
    parser.add_argument("--quick", action="store_true", help="200 sockets, 5 s per rate")
    parser.add_argument("--baseline", metavar="REF",
                        help="also run MOJAVOX Notify as of this git ref (mojavox@REF), with ratios")
    args = parser.parse_args()
    if args.quick:
        args.sockets, args.seconds, args.fanout_users = 200, 5, 1000
        args.sustained_rates = "1000,2000"
    kinds = args.servers.split(",")
    baseline = f"mojavox@{args.baseline}" if args.baseline else None
    if baseline:
        kinds.insert(kinds.index("mojavox") + 1 if "mojavox" in kinds else 0, baseline)
    rates = [float(rate) for rate in args.rates.split(",")]
    print(f"# python -m bench {args.scenario} · {date.today()} · {platform.python_version()} · "
          f"{os.cpu_count()} cores · clients in {WORKERS} processes", flush=True)

    if args.scenario in ("ALL", "idle"):
        results = {kind: with_target(kind, args.sockets, idle) for kind in kinds}
        print(f"\n## idle: {args.sockets} authenticated sockets\n")
        print("| server | sockets | failed | connects/s | KB per socket |\n|---|---|---|---|---|")
        for kind, row in results.items():
            print(f"| {kind} | {row['sockets']} | {row['failed']} | {row['connects_per_s']:.0f} | "
                  f"{row['kb_per_socket']:.1f} |")
        if "mojavox" in results and "tornado" in results:
            print(f"\nmemory per socket vs raw Tornado: "
                  f"{ratio(results['mojavox']['kb_per_socket'], results['tornado']['kb_per_socket'])}; "
                  f"connect rate: {ratio(results['mojavox']['connects_per_s'], results['tornado']['connects_per_s'])}")
        if baseline in results and "mojavox" in results:
            print(f"\nvs {baseline}: memory per socket "
                  f"{ratio(results['mojavox']['kb_per_socket'], results[baseline]['kb_per_socket'])}, "
                  f"connect rate {ratio(results['mojavox']['connects_per_s'], results[baseline]['connects_per_s'])}")

    if args.scenario in ("ALL", "latency"):
        results = {kind: with_target(kind, args.sockets, latency(rates, args.seconds)) for kind in kinds}
        print(f"\n## latency: {args.sockets} sockets, open loop, {args.seconds:g} s per rate\n")
        print("| server | creates/s | sent | failed | lost | p50 ms | p99 ms |\n|---|---|---|---|---|---|---|")
        for kind, rows in results.items():
            for row in rows:
                print(f"| {kind} | {row['rate']:g} | {row['sent']} | {row['failed']} | {row['lost']} | "
                      f"{row['p50_ms']:.1f} | {row['p99_ms']:.1f} |")
        if baseline in results and "mojavox" in results:
            print(f"\nvs {baseline} (p50, p99 at each rate): " + ", ".join(
                f"{ours['rate']:g}/s {ratio(ours['p50_ms'], theirs['p50_ms'])} "
                f"{ratio(ours['p99_ms'], theirs['p99_ms'])}"
                for ours, theirs in zip(results["mojavox"], results[baseline])))

    if args.scenario in ("ALL", "sustained"):
        sustained_rates = [float(rate) for rate in args.sustained_rates.split(",")]
        results = {kind: with_target(kind, args.sockets, sustained(sustained_rates, args.seconds / 2))
                   for kind in kinds}
        print(f"\n## sustained: {args.sockets} sockets, alerts to {SUSTAINED_RECIPIENTS} users each, "
              f"open loop, {args.seconds / 2:g} s per rate\n")
        print("| server | deliveries/s offered | alerts | failed | delivered | lost | p50 ms | p99 ms "
              "|\n|---|---|---|---|---|---|---|---|")
        for kind, rows in results.items():
            for row in rows:
                print(f"| {kind} | {row['rate']:g} | {row['alerts']} | {row['failed']} | "
                      f"{row['delivered']} | {row['lost']} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} |")
        for flag, meaning in (("sustained", f"nothing lost, p99 <= {SUSTAINED_P99_MS} ms"),
                              ("keeps_up", f"nothing lost, p50 <= {KEEPS_UP_P50_MS} ms")):
            best = {kind: max((row["rate"] for row in rows if row[flag]), default=0.0)
                    for kind, rows in results.items()}
            print(f"\nhighest rate with {meaning}: " + ", ".join(
                f"{kind} {rate:g}/s" for kind, rate in best.items())
                + (f"; mojavox vs python-socketio {ratio(best['mojavox'], best['socketio'])}"
                   if "mojavox" in best and "socketio" in best else ""))

    if args.scenario in ("ALL", "fanout"):
        results = {kind: with_target(kind, args.fanout_users, fanout) for kind in kinds}
        print(f"\n## fanout: one alert to {args.fanout_users} connected users, then one "
              "broadcast to every socket\n")
        print("| server | users | alert: received | requests | seconds | broadcast: received "
              "| seconds | of which the server's fan-out, ms |\n|---|---|---|---|---|---|---|---|")
        for kind, row in results.items():
            print(f"| {kind} | {row['users']} | {row['received']} | {row['requests']} | "
                  f"{row['seconds']:.3f} | {row['broadcast_received']} | "
                  f"{row['broadcast_seconds']:.3f} | {row['fan_out_ms']:.0f} |")
        if baseline in results and "mojavox" in results:
            ours, theirs = results["mojavox"], results[baseline]
            print(f"\nvs {baseline}: alert {ratio(ours['seconds'], theirs['seconds'])}, "
                  f"broadcast {ratio(ours['broadcast_seconds'], theirs['broadcast_seconds'])}")
    if args.scenario in ("ALL", "storm") and "mojavox" in kinds:
        row = with_target("mojavox", args.sockets, storm)
        print(f"\n## storm: {args.sockets} sockets, the server SIGKILLed {STORM_KILL_AFTER:g} s into "
              f"a burst of {STORM_RATE}/s creations and started again; every socket reconnects "
              "with `since` (MOJAVOX Notify only: the others keep nothing to resume from)\n")
        print("| sockets | back | seconds until all back | connect attempts | burst sent / failed "
              "| stored | missing | doubled |\n|---|---|---|---|---|---|---|---|")
        print(f"| {row['sockets']} | {row['back']} | {row['seconds']:.1f} | {row['attempts']} | "
              f"{row['burst_sent']} / {row['burst_failed']} | {row['stored']} | {row['missing']} | "
              f"{row['doubled']} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
