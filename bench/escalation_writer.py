"""`python -m bench escalation-writer`: the embedded engine's one writer alone, for each way of
cutting a burst of escalation steps into parts: how late 10,000 steps due within one second
are stored, against how long a create waits meanwhile.

Why: `python -m bench escalation-timers` measures the whole server, whose figures swing with
this VM. This one keeps only what the two targets contend for, the SQLite writer, so what it
shows bounds what any server on this store can reach: no HTTP, sockets, publishing or push;
the real store (`SqliteStore`) and its real paths:
- the steps: each escalation's stored due time set to its time in the burst, then the steps
  prepared ahead, as the timers prepare them, and stored by `change_escalations(...,
  giving_way=True)` as the timers call it: in rounds (timers.ROUND_SIZE steps due within
  timers.ROUND_SPAN_MS), each once its last step is due, the rounds due by then in one store
  call of up to `--batch` steps, one call at a time. Each change is the escalation's next
  document, its step's notification (the center's floor manager) and its `escalated` and
  `notified` lines. The due times spread over `--span-ms`, in an order
  unrelated to the escalations' ids (`--due-order`: as the full bench's waves make them;
  `created` for the easy case). `--steps-from child` stores them from a process of its own
  on the same file, as `escalation_timers.own_process` does;
- a create: `insert_many` of one `payment_received`, on the event loop as a request's is,
  open loop at `--probe-rate`, idle for `--idle-seconds`, then while the steps are stored;
  timed from when it was due to be sent.

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
import asyncio
import multiprocessing
import os
import platform
import random
import shutil
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import date, datetime, timezone
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from mojavox_notify import tenants  # noqa: E402
from mojavox_notify.cli import _tune_garbage_collection  # noqa: E402  (as `serve` tunes it)
from mojavox_notify.escalations import record  # noqa: E402
from mojavox_notify.escalations.policy import Policy  # noqa: E402
from mojavox_notify.escalations.timers import ROUND_SIZE, ROUND_SPAN_MS  # noqa: E402
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
#: The first step comes due this long after the idle phase ends: meanwhile the stored due
#: times are set and the steps prepared (neither is measured).
PREPARE_AHEAD_MS = 3000
#: Preparing must end at least this long before the first due time, or the run stops.
PREPARED_MARGIN_MS = 500
#: Between the idle phase and the burst's first work (which holds the loop for a moment, and
#: starting a child longer): the idle creates still in flight end first.
IDLE_MARGIN_SECONDS = 0.2
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
        if not (steps.isdigit() and parts.isdigit() and int(steps) > 0 and int(parts) > 0):
            raise argparse.ArgumentTypeError(f"{text!r}: a cut is STEPSxPARTS, both at least 1")
        return cls(int(steps), int(parts))


@dataclass(frozen=True)
class Round:
    """Steps due within ROUND_SPAN_MS (at most ROUND_SIZE), stored once the last is due."""

    positions: list[int]
    due_ms: list[int]

    @property
    def fire_at_ms(self) -> int:
        return self.due_ms[-1]


@dataclass
class Burst:
    lateness_ms: list[float]
    first_due: float  # epoch seconds
    last_stored: float

    @property
    def stored_after_s(self) -> float:
        return self.last_stored - self.first_due


@dataclass
class Outcome:
    cut: Cut
    burst: Burst
    idle_ms: list[float]
    storing_ms: list[float]
    failed: int


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
            await store.insert_many([replace(draft, escalation=part)])
            documents[index] = document

    await asyncio.gather(*(opener() for _ in range(OPEN_CONCURRENCY)))
    return documents


def due_times(count: int, first_due_ms: int, span_ms: int, order: str,
              seed: int) -> list[tuple[int, int]]:
    """(due time, position in the documents), in due order: spread over `span_ms`, in the
    order the escalations were opened or shuffled."""
    positions = list(range(count))
    if order == "shuffled":
        random.Random(seed).shuffle(positions)
    return [(first_due_ms + (rank * span_ms) // count, position)
            for rank, position in enumerate(positions)]


async def rescheduled(store, documents: list[dict], due: list[tuple[int, int]]) -> list[dict]:
    """The documents with their stored due time set to the burst's, so the timers' due index
    changes in due order as it would (one store call, a compare-and-set each)."""
    now_ms = int(time.time() * 1000)
    changed = list(documents)
    for due_ms, position in due:
        document = documents[position]
        changed[position] = {**document, "due_at": due_ms, "version": document["version"] + 1,
                             "updated_at": now_ms}
    changes = [EscalationChange(changed[position], documents[position]["version"])
               for _, position in due]
    if any(result is None for result in await store.change_escalations(changes)):
        raise RuntimeError("setting the due times lost a compare-and-set: the store was not fresh")
    return changed


def rounds_of(due: list[tuple[int, int]]) -> list[Round]:
    """Grouped as the timers group what they read (timers._take)."""
    rounds: list[Round] = []
    for due_ms, position in due:
        if (not rounds or len(rounds[-1].positions) >= ROUND_SIZE
                or due_ms - rounds[-1].due_ms[0] > ROUND_SPAN_MS):
            rounds.append(Round([], []))
        rounds[-1].positions.append(position)
        rounds[-1].due_ms.append(due_ms)
    return rounds


def step_change(document: dict, now_ms: int) -> EscalationChange:
    """What the timers store when the escalation's first step fires (timers._requests),
    prepared ahead as they prepare it; `dated` sets when it is stored."""
    changed = record.step_started(document, record.due_action(document), now_ms)
    manager = tenants.key(tenants.tenant_of(document["key"]), MANAGER)
    part = record.notification_part(changed, changed["step"], changed["round"],
                                    to_escalation_payload(changed))
    template = document["template"]
    draft = Draft(manager, document["type"], template["title"], template["message"],
                  template["priority"], template["data"], escalation=part)
    lines = [{"escalation_id": changed["_id"], "at": now_ms, "event": "escalated",
              "step": changed["step"]},
             {"escalation_id": changed["_id"], "at": now_ms, "event": "notified",
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
    """Creates at `rate` a second, open loop, each timed from when it was due to be sent, so a
    loop held up counts. A thread keeps the time and hands each create to the loop as a
    request's arrival would (`call_soon_threadsafe` wakes it at once); the loop's own timers
    would wake it up to a millisecond late (epoll waits in whole milliseconds)."""

    def __init__(self, store, rate: float):
        self.store = store
        self.interval = 1.0 / rate
        self.samples: list[tuple[float, float]] = []  # (due to be sent, epoch s; answer s)
        self.failed = 0
        self._stopping = threading.Event()
        self._tasks: set[asyncio.Task] = set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._clock, loop)
        await asyncio.gather(*self._tasks)

    def _clock(self, loop: asyncio.AbstractEventLoop) -> None:
        started, started_epoch, sent = time.monotonic(), time.time(), 0
        while True:
            due = started + sent * self.interval
            if self._stopping.wait(max(0.0, due - time.monotonic())):
                return
            loop.call_soon_threadsafe(self._start, sent, due, started_epoch + (due - started))
            sent += 1

    def _start(self, number: int, due: float, due_epoch: float) -> None:
        task = asyncio.create_task(self._one(number, due, due_epoch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _one(self, number: int, due: float, due_epoch: float) -> None:
        draft = Draft(tenants.key(tenants.DEFAULT, "probe-user"), "payment_received", "Payment",
                      f"p{number}", "high", {"amount": 1})
        try:
            await self.store.insert_many([draft])
        except Exception:  # noqa: BLE001 (a failed create is counted, not fatal)
            self.failed += 1
            return
        self.samples.append((due_epoch, time.monotonic() - due))

    def stop(self) -> None:
        self._stopping.set()


async def fire(store, documents: list[dict], span_ms: int, batch: int, order: str,
               seed: int) -> Burst:
    """The burst: the due times stored, the steps prepared, then stored as the timers store
    them, round after round once due. Each step's lateness is from its due time until its
    store call returned."""
    first_due_ms = int(time.time() * 1000) + PREPARE_AHEAD_MS
    due = due_times(len(documents), first_due_ms, span_ms, order, seed)
    documents = await rescheduled(store, documents, due)
    prepared = {position: step_change(documents[position], due_ms) for due_ms, position in due}
    if time.time() * 1000 > first_due_ms - PREPARED_MARGIN_MS:
        raise RuntimeError("preparing the steps took past their due time: raise PREPARE_AHEAD_MS")
    rounds = rounds_of(due)
    lateness: list[float] = []
    while rounds:
        taken = await due_rounds(rounds, batch)
        now_ms = int(time.time() * 1000)
        changes = [dated(prepared[position], now_ms) for taken_round in taken
                   for position in taken_round.positions]
        moment = datetime.fromtimestamp(now_ms / 1000, timezone.utc)
        results = await store.change_escalations(changes, moment, giving_way=True)
        stored_ms = time.time() * 1000
        if any(result is None for result in results):
            raise RuntimeError("a step's compare-and-set lost: the store was not fresh")
        lateness += [stored_ms - due_ms for taken_round in taken for due_ms in taken_round.due_ms]
    return Burst(lateness, first_due_ms / 1000, time.time())


async def due_rounds(rounds: list[Round], batch: int) -> list[Round]:
    """The next round once due, with the rounds due by then up to `batch` steps (timers'
    HeldRounds.due), taken off `rounds`."""
    wait = rounds[0].fire_at_ms / 1000 - time.time()
    if wait > 0:
        await asyncio.sleep(wait)
    now_ms = time.time() * 1000
    taken = [rounds.pop(0)]
    steps = len(taken[0].positions)
    while rounds and rounds[0].fire_at_ms <= now_ms and steps + len(rounds[0].positions) <= batch:
        steps += len(rounds[0].positions)
        taken.append(rounds.pop(0))
    return taken


@contextmanager
def cutting(cut: Cut) -> Iterator[None]:
    """The store's parts and transactions cut so for the run (module constants read at each
    call), as shipped again afterwards."""
    shipped = stored_escalations.CHANGE_PART, stored_escalations.TRANSACTION_PARTS
    stored_escalations.CHANGE_PART, stored_escalations.TRANSACTION_PARTS = cut.steps, cut.parts
    try:
        yield
    finally:
        stored_escalations.CHANGE_PART, stored_escalations.TRANSACTION_PARTS = shipped


async def opened_store(folder: Path):
    store = build_store(load_settings(None, environ={}, overrides={
        "data_dir": str(folder), "auth.secret": "escalation-writer-bench-secret-of-32-bytes"}))
    await store.open()
    return store


def fire_in_child(folder: Path, cut: Cut, documents: list[dict], fire_args: tuple,
                  answer: Connection) -> None:
    """`fire` in a process of its own on the same file, as with `escalation_timers.own_process`:
    the creates then share no GIL with the steps, only the writer."""
    async def firing() -> Burst:
        store = await opened_store(folder)
        try:
            return await fire(store, documents, *fire_args)
        finally:
            await store.close()

    _tune_garbage_collection()
    with cutting(cut):
        answer.send(asyncio.run(firing()))
    answer.close()


async def fired_elsewhere(folder: Path, cut: Cut, documents: list[dict],
                          fire_args: tuple) -> Burst:
    context = multiprocessing.get_context("spawn")
    receiving, sending = context.Pipe(duplex=False)
    child = context.Process(target=fire_in_child, args=(folder, cut, documents, fire_args, sending))
    child.start()
    sending.close()
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(None, receiving.recv)
    except EOFError:
        raise RuntimeError("the child storing the steps failed (its traceback is above)") from None
    finally:
        await loop.run_in_executor(None, child.join, 30)
        if child.is_alive():
            child.terminate()


async def one_run(args, cut: Cut) -> Outcome:
    folder = Path(tempfile.mkdtemp(prefix="bench-escalation-writer-"))
    probe = probing = store = None
    try:
        with cutting(cut):
            store = await opened_store(folder)
            documents = await open_escalations(store, args.escalations, args.tenants)
            probe = Probe(store, args.probe_rate)
            probing = asyncio.create_task(probe.run())
            idle_from = time.time()
            await asyncio.sleep(args.idle_seconds)
            idle_until = time.time()
            await asyncio.sleep(IDLE_MARGIN_SECONDS)
            fire_args = (args.span_ms, args.batch, args.due_order, args.seed)
            if args.steps_from == "child":
                burst = await fired_elsewhere(folder, cut, documents, fire_args)
            else:
                burst = await fire(store, documents, *fire_args)
    finally:
        if probe is not None:
            probe.stop()
            await asyncio.gather(probing, return_exceptions=True)
        if store is not None:
            await store.close()
        shutil.rmtree(folder, ignore_errors=True)
    return Outcome(cut, burst, failed=probe.failed,
                   idle_ms=[1000 * answer for sent, answer in probe.samples
                            if idle_from <= sent < idle_until],
                   storing_ms=[1000 * answer for sent, answer in probe.samples
                               if burst.first_due <= sent <= burst.last_stored])


# -- the report -----------------------------------------------------------------------------------

def row(outcome: Outcome) -> str:
    late = outcome.burst.lateness_ms
    within = sum(1 for value in late if value <= WITHIN_SECONDS * 1000)
    idle99 = percentile(outcome.idle_ms, 0.99)
    storing99 = percentile(outcome.storing_ms, 0.99)
    ratio = storing99 / idle99 if idle99 else float("nan")
    return (f"| {outcome.cut.steps} | {outcome.cut.parts} | {outcome.burst.stored_after_s:.2f} "
            f"| {100 * within / len(late):.1f} % | {percentile(late, 0.5):.0f} / "
            f"{percentile(late, 0.99):.0f} / {max(late):.0f} "
            f"| {percentile(outcome.idle_ms, 0.5):.2f} / {idle99:.2f} "
            f"| {percentile(outcome.storing_ms, 0.5):.2f} / {storing99:.2f} / "
            f"{max(outcome.storing_ms, default=float('nan')):.2f} ({len(outcome.storing_ms)}) "
            f"| {ratio:.1f}x "
            f"| {'yes' if within == len(late) and ratio <= P99_RATIO_TARGET else 'no'} |")


async def bench(args) -> None:
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"# python -m bench escalation-writer · {date.today()} · {platform.node()} · "
          f"Python {platform.python_version()} · {os.cpu_count()} cores · load average {load} "
          f"at the start · store under {tempfile.gettempdir()}")
    print(f"\n{args.escalations:,} escalations over {args.tenants} centers; their steps due "
          f"over {args.span_ms} ms ({args.due_order} order), stored in rounds (up to "
          f"{ROUND_SIZE} due within {ROUND_SPAN_MS} ms), up to {args.batch} a store call; "
          f"creates at {args.probe_rate:g}/s, idle {args.idle_seconds:g} s first; the steps "
          f"stored from {'a child process' if args.steps_from == 'child' else 'this process'}. "
          f"The store alone (no HTTP, sockets or publishing). With 100 creates or fewer in a "
          f"phase, its p99 is its maximum.\n")
    print("| steps a part | parts a transaction | last stored after the first due, s "
          "| within 1 s of due | lateness p50 / p99 / max ms | create idle p50 / p99 ms "
          "| create while storing p50 / p99 / max ms (creates) | p99 ratio | both targets |")
    print("|---|---|---|---|---|---|---|---|---|")
    for cut in args.cuts:
        outcome = await one_run(args, cut)
        print(row(outcome) + (f" ({outcome.failed} creates failed)" if outcome.failed else ""),
              flush=True)


def at_least(minimum: float, kind=int):
    def parse(text: str):
        value = kind(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text}: at least {minimum:g}")
        return value
    return parse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench escalation-writer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--escalations", type=at_least(1), default=10_000,
                        help="open escalations, one step each due in the burst")
    parser.add_argument("--tenants", type=at_least(1), default=100,
                        help="call centers (one manager each)")
    parser.add_argument("--span-ms", type=at_least(0), default=800,
                        help="the due times span this much")
    parser.add_argument("--due-order", choices=("shuffled", "created"), default="shuffled",
                        help="steps due in an order unrelated to the escalations' ids, or in "
                             "the order they were opened")
    parser.add_argument("--cuts", type=lambda text: [Cut.parse(c) for c in text.split(",")],
                        default=[Cut(25, 20), Cut(25, 4), Cut(5, 20), Cut(5, 4), Cut(5, 1),
                                 Cut(1, 1)],
                        help="STEPSxPARTS,...: steps in a part, parts in a transaction "
                             "(shipped: 25x20)")
    parser.add_argument("--batch", type=at_least(1), default=500,
                        help="steps in one store call at most (escalation_timers.batch)")
    parser.add_argument("--probe-rate", type=at_least(0.1, float), default=50.0,
                        help="creates a second")
    parser.add_argument("--idle-seconds", type=at_least(1, float), default=5.0,
                        help="creates measured idle before the burst")
    parser.add_argument("--seed", type=int, default=7, help="of the shuffled due order")
    parser.add_argument("--steps-from", choices=("this", "child"), default="this",
                        help="store the steps in this process (one GIL with the creates, as "
                             "by default) or a child's (as with escalation_timers.own_process)")
    args = parser.parse_args(argv)
    _tune_garbage_collection()
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
