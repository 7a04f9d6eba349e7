"""`python -m bench escalation-writer`: the embedded engine's one writer alone, for each way of
cutting a burst of escalation steps into parts: how late 10,000 steps due within one second
are stored, against how long a create waits meanwhile.

Why: `python -m bench escalation-timers` measures the whole server, whose figures swing with
this VM. This one keeps only what the two targets contend for, the SQLite writer, so what it
shows bounds what any server on this store can reach: no HTTP, sockets, publishing or push;
the real store (`SqliteStore`) and its real paths:
- the steps: prepared ahead (`PREPARE_AHEAD_MS`), as the timers prepare them, then stored by
  `change_escalations(..., giving_way=True)` as the timers call it: a round once its last
  step is due, up to `--batch` steps a store call, one call at a time. Each change is the
  escalation's next document, its step's notification (the center's floor manager) and its
  `escalated` and `notified` lines. The due times spread over `--span-ms`, in an order
  unrelated to the escalations' ids (`--due-order`: as the full bench's waves make them;
  `created` for the easy case). `--steps-from child` stores them from a process of its own
  on the same file, as `escalation_timers.own_process` does;
- a create: `insert_many` of one `payment_received`, on the event loop as a request's is,
  open loop at `--probe-rate`, idle for `--idle-seconds`, then while the steps are stored.

For each `--cuts` entry STEPSxPARTS (steps in a part, parts in a transaction at most: the
store's CHANGE_PART and TRANSACTION_PARTS, set for that run) a fresh store is filled the same
way and the burst stored once. The issue's targets, applied to the store: every step stored
within 1 s of its due time, and the create p99 while storing within 1.2x the idle p99.

    PYTHONPATH=$PWD .venv/bin/python -m bench escalation-writer
    PYTHONPATH=$PWD .venv/bin/python -m bench escalation-writer --cuts 25x20,5x1 --escalations 2000
    TMPDIR=/dev/shm PYTHONPATH=$PWD .venv/bin/python -m bench escalation-writer   # the file in RAM
"""

from __future__ import annotations

import argparse
import dataclasses
import asyncio
import os
import platform
import multiprocessing
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from multiprocessing.connection import Connection
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from mojavox_notify import tenants  # noqa: E402
from mojavox_notify.escalations import record  # noqa: E402
from mojavox_notify.escalations.policy import Policy  # noqa: E402
from mojavox_notify.model import Draft  # noqa: E402
from mojavox_notify.settings import load_settings  # noqa: E402
from mojavox_notify.store import EscalationChange, build_store  # noqa: E402
from mojavox_notify.store.sqlite import escalations as stored_escalations  # noqa: E402
from mojavox_notify.wire.escalation import to_escalation_payload  # noqa: E402
from soak import percentile  # noqa: E402  (the soak's helper)

MANAGER = "floor-manager"
SUPERVISOR = "supervisor"
WITHIN_SECONDS = 1.0
P99_RATIO_TARGET = 1.2
#: The timers store a round once its last step is due; rounds span this much (timers.py).
ROUND_SPAN_MS = 20
#: The first step comes due this long after the idle phase ends; the steps are prepared
#: meanwhile, ahead of their due times as the timers prepare them (measured apart).
PREPARE_AHEAD_MS = 2000
OPEN_CONCURRENCY = 64
POLICY = Policy.from_document({
    "claim": True, "repeat": 0, "unanswered_after_seconds": 3600,
    "steps": [{"after_seconds": 30, "topic": None, "users": [MANAGER]}]})


@dataclass(frozen=True)
class Cut:
    """Steps in a part, and parts in one transaction at most."""

    steps: int
    parts: int

    @classmethod
    def parse(cls, text: str) -> "Cut":
        steps, _, parts = text.partition("x")
        return cls(int(steps), int(parts))


@dataclass
class Outcome:
    cut: Cut
    lateness_ms: list[float] = field(default_factory=list)
    idle_ms: list[float] = field(default_factory=list)
    storing_ms: list[float] = field(default_factory=list)
    stored_after_s: float = 0.0
    failed: int = 0


# -- the store's contents --------------------------------------------------------------------------

def escalation_draft(index: int, tenants_count: int) -> Draft:
    tenant = f"cc-{index % tenants_count}"
    return Draft(tenants.key(tenant, SUPERVISOR), "call_escalation", "Call Escalation Required",
                 f"agent-{index} requests supervisor intervention", "critical",
                 {"callId": f"bench-{index}", "agentId": f"agent-{index}"},
                 escalation_key=tenants.key(tenant, f"call:bench-{index}"))


async def open_escalations(store, count: int, tenants_count: int) -> list[dict]:
    """`count` open escalations, each with its supervisor's notification, as the service
    stores them (an escalation's document, then its first notification)."""
    documents: list[dict | None] = [None] * count
    queue = iter(range(count))

    async def opener() -> None:
        for index in queue:
            draft = escalation_draft(index, tenants_count)
            document = record.new_escalation(draft, draft.escalation_key, POLICY,
                                             int(time.time() * 1000))
            document, _ = await store.open_escalation(document)
            part = record.notification_part(document, 0, 0)
            await store.insert_many([dataclasses.replace(draft, escalation=part)])
            documents[index] = document

    await asyncio.gather(*(opener() for _ in range(OPEN_CONCURRENCY)))
    return documents


def step_change(document: dict, due_ms: int) -> EscalationChange:
    """What the timers store when the escalation's first step fires (timers._requests),
    prepared ahead as they prepare it; `dated` sets when it is stored."""
    changed = record.step_started(document, record.due_action(document), due_ms)
    manager = tenants.key(tenants.tenant_of(document["key"]), MANAGER)
    part = record.notification_part(changed, changed["step"], changed["round"],
                                    to_escalation_payload(changed))
    template = document["template"]
    draft = Draft(manager, document["type"], template["title"], template["message"],
                  template["priority"], template["data"], escalation=part)
    lines = [{"escalation_id": changed["_id"], "at": due_ms, "event": "escalated",
              "step": changed["step"]},
             {"escalation_id": changed["_id"], "at": due_ms, "event": "notified",
              "user_id": manager, "step": changed["step"], "channel": "stored"}]
    return EscalationChange(changed, document["version"], drafts=[draft], push=[True],
                            events=lines)


def dated(change: EscalationChange, now_ms: int) -> EscalationChange:
    change.document["updated_at"] = now_ms
    for line in change.events:
        line["at"] = now_ms
    return change


# -- one run ---------------------------------------------------------------------------------------

class Probe:
    """Creates at `rate` a second, open loop, each timed from when the probe woke to send it
    (not from when it was due: the loop's timer wakes up to a millisecond late, idle or not,
    which would blur both phases alike)."""

    def __init__(self, store, rate: float):
        self.store = store
        self.interval = 1.0 / rate
        self.samples: list[tuple[float, float]] = []  # (sent, epoch s; answer s)
        self.failed = 0
        self._stopping = False
        self._tasks: set[asyncio.Task] = set()

    async def run(self) -> None:
        started, sent = time.monotonic(), 0
        while not self._stopping:
            due = started + sent * self.interval
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            task = asyncio.create_task(self._one(sent, time.monotonic()))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            sent += 1
        await asyncio.gather(*self._tasks)

    async def _one(self, number: int, woke: float) -> None:
        woke_epoch = time.time() - (time.monotonic() - woke)
        draft = Draft(tenants.key(tenants.DEFAULT, "probe-user"), "payment_received", "Payment",
                      f"p{number}", "high", {"amount": 1})
        try:
            await self.store.insert_many([draft])
        except Exception:  # noqa: BLE001 (a failed create is counted, not fatal)
            self.failed += 1
            return
        self.samples.append((woke_epoch, time.monotonic() - woke))

    def stop(self) -> None:
        self._stopping = True


async def fire(store, documents: list[dict], span_ms: int, batch: int, order: str,
               seed: int) -> tuple[list[float], float, float, float]:
    """The steps stored as the timers store them: round after round once due, up to `batch`
    in one store call. (lateness of each in ms, when the first was due, the last stored, the
    seconds from the first due time until the last stored), in epoch seconds."""
    positions = list(range(len(documents)))
    if order == "shuffled":
        random.Random(seed).shuffle(positions)
    first_due_ms = int(time.time() * 1000) + PREPARE_AHEAD_MS
    due = sorted((first_due_ms + (rank * span_ms) // len(documents), documents[position]["_id"],
                  position) for rank, position in enumerate(positions))
    prepared = {position: step_change(documents[position], due_ms) for due_ms, _, position in due}
    lateness: list[float] = []
    taken = 0
    while taken < len(due):
        round_end = due[taken][0] + ROUND_SPAN_MS
        wait = round_end / 1000 - time.time()
        if wait > 0:
            await asyncio.sleep(wait)
        now_ms = int(time.time() * 1000)
        end = taken
        while end < len(due) and end - taken < batch and due[end][0] <= now_ms:
            end += 1
        changes = [dated(prepared[position], now_ms) for _, _, position in due[taken:end]]
        moment = datetime.fromtimestamp(now_ms / 1000, timezone.utc)
        results = await store.change_escalations(changes, moment, giving_way=True)
        stored_ms = time.time() * 1000
        if any(result is None for result in results):
            raise RuntimeError("a step's compare-and-set lost: the store was not fresh")
        lateness += [stored_ms - due_ms for due_ms, _, _ in due[taken:end]]
        taken = end
    last_stored = time.time()
    return lateness, first_due_ms / 1000, last_stored, last_stored - first_due_ms / 1000


def cut_into(cut: Cut) -> None:
    stored_escalations.CHANGE_PART = cut.steps
    stored_escalations.TRANSACTION_PARTS = cut.parts


async def opened_store(folder: Path):
    store = build_store(load_settings(None, environ={}, overrides={
        "data_dir": str(folder), "auth.secret": "escalation-writer-bench-secret-of-32-bytes"}))
    await store.open()
    return store


def fire_in_child(folder: Path, cut: Cut, documents: list[dict], fire_args: tuple,
                  answer: Connection) -> None:
    """`fire` in a process of its own on the same file, as with `escalation_timers.own_process`:
    the creates then share no GIL with the steps, only the writer."""
    async def firing() -> tuple:
        cut_into(cut)
        store = await opened_store(folder)
        try:
            return await fire(store, documents, *fire_args)
        finally:
            await store.close()

    answer.send(asyncio.run(firing()))
    answer.close()


async def fired_elsewhere(folder: Path, cut: Cut, documents: list[dict], fire_args: tuple) -> tuple:
    receiving, sending = multiprocessing.get_context("spawn").Pipe(duplex=False)
    child = multiprocessing.get_context("spawn").Process(
        target=fire_in_child, args=(folder, cut, documents, fire_args, sending))
    child.start()
    sending.close()
    try:
        return await asyncio.get_running_loop().run_in_executor(None, receiving.recv)
    finally:
        child.join()


async def one_run(args, cut: Cut) -> Outcome:
    cut_into(cut)
    folder = Path(tempfile.mkdtemp(prefix="bench-escalation-writer-"))
    store = await opened_store(folder)
    outcome = Outcome(cut)
    try:
        documents = await open_escalations(store, args.escalations, args.tenants)
        probe = Probe(store, args.probe_rate)
        probing = asyncio.create_task(probe.run())
        idle_from = time.time()
        await asyncio.sleep(args.idle_seconds)
        idle_until = time.time()
        fire_args = (args.span_ms, args.batch, args.due_order, args.seed)
        if args.steps_from == "child":
            fired = await fired_elsewhere(folder, cut, documents, fire_args)
        else:
            fired = await fire(store, documents, *fire_args)
        outcome.lateness_ms, first_due, last_stored, outcome.stored_after_s = fired
        probe.stop()
        await probing
        outcome.failed = probe.failed
        outcome.idle_ms = [1000 * answer for sent, answer in probe.samples
                           if idle_from <= sent < idle_until]
        outcome.storing_ms = [1000 * answer for sent, answer in probe.samples
                              if first_due <= sent <= last_stored]
    finally:
        await store.close()
        shutil.rmtree(folder, ignore_errors=True)
    return outcome


# -- the report -----------------------------------------------------------------------------------

def row(outcome: Outcome) -> str:
    late = outcome.lateness_ms
    within = sum(1 for value in late if value <= WITHIN_SECONDS * 1000)
    idle99 = percentile(outcome.idle_ms, 0.99)
    storing99 = percentile(outcome.storing_ms, 0.99)
    ratio = storing99 / idle99 if idle99 else float("nan")
    return (f"| {outcome.cut.steps} | {outcome.cut.parts} | {outcome.stored_after_s:.2f} "
            f"| {100 * within / len(late):.1f} % | {percentile(late, 0.5):.0f} / "
            f"{percentile(late, 0.99):.0f} / {max(late):.0f} "
            f"| {percentile(outcome.idle_ms, 0.5):.2f} / {idle99:.2f} "
            f"| {percentile(outcome.storing_ms, 0.5):.2f} / {storing99:.2f} "
            f"({len(outcome.storing_ms)}) | {ratio:.1f}x "
            f"| {'yes' if within == len(late) and ratio <= P99_RATIO_TARGET else 'no'} |")


async def bench(args) -> None:
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"# python -m bench escalation-writer · {date.today()} · {platform.node()} · "
          f"Python {platform.python_version()} · {os.cpu_count()} cores · load average {load} "
          f"at the start · store under {tempfile.gettempdir()}")
    print(f"\n{args.escalations:,} escalations over {args.tenants} centers; their steps due "
          f"over {args.span_ms} ms ({args.due_order} order), stored in rounds of "
          f"{ROUND_SPAN_MS} ms, up to {args.batch} a store call; creates at "
          f"{args.probe_rate:g}/s, idle {args.idle_seconds:g} s first; the steps stored from "
          f"{'a child process' if args.steps_from == 'child' else 'the creates’ process'}. "
          f"The store alone (no HTTP, sockets or publishing).\n")
    print("| steps a part | parts a transaction | last stored after the first due, s "
          "| within 1 s of due | lateness p50 / p99 / max ms | create idle p50 / p99 ms "
          "| create while storing p50 / p99 ms (creates) | p99 ratio | both targets |")
    print("|---|---|---|---|---|---|---|---|---|")
    for cut in args.cuts:
        outcome = await one_run(args, cut)
        print(row(outcome) + (f" ({outcome.failed} creates failed)" if outcome.failed else ""),
              flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench escalation-writer",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--escalations", type=int, default=10_000)
    parser.add_argument("--tenants", type=int, default=100, help="call centers (one manager each)")
    parser.add_argument("--span-ms", type=int, default=800, help="the due times span this much")
    parser.add_argument("--due-order", choices=("shuffled", "created"), default="shuffled")
    parser.add_argument("--cuts", type=lambda text: [Cut.parse(c) for c in text.split(",")],
                        default=[Cut(25, 20), Cut(25, 4), Cut(5, 20), Cut(5, 4), Cut(5, 1),
                                 Cut(1, 1)],
                        help="STEPSxPARTS,...: steps in a part, parts in a transaction")
    parser.add_argument("--batch", type=int, default=500, help="steps in one store call at most")
    parser.add_argument("--probe-rate", type=float, default=50.0, help="creates a second")
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--steps-from", choices=("this", "child"), default="this",
                        help="store the steps in this process (one GIL with the creates, as "
                             "by default) or a child's (as with escalation_timers.own_process)")
    args = parser.parse_args(argv)
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
