"""Durable escalation timers across processes and instances: a step that came due while the
server was killed (SIGKILL) fires within a second of the restart, once (both engines); under
`serve --workers 2` on one file and Redis, and with two instances on one store and Redis
(both engines), each step fires exactly once, with both taking part.

The MongoDB engine runs against nx-27017, which cannot run transactions of two processes at
once (it answers "no such savepoint"); one process takes its turns (store/mongo/transactions.py),
so two instances in one process are the MongoDB engine's several-instances test."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from datetime import datetime, timezone
from types import SimpleNamespace
import urllib.request

import pytest

from tests.support.engines import both_engines
from tests.support.ports import free_port
from tests.support.servers import ServeProcess
from tests.support.sockets import Socket
from tests.support.tokens import new_user, token
from tests.support.waiting import wait_for

SERVICE = token("call-service", ["service"])
WAIT_SECONDS = 2.0


def policy(backup_topic: str) -> dict:
    return {"escalations": {"call_escalation": {
        "steps": [{"after_seconds": WAIT_SECONDS, "to": {"topic": backup_topic}}]}},
        "escalation_timers.poll_interval_seconds": 0.05}


def escalate(server: ServeProcess, supervisor: str, call_id: str) -> str:
    status, body = server.call("POST", "/api/events", SERVICE, {
        "type": "call.escalation", "data": {"supervisorId": supervisor, "agentId": "agent-7",
                                            "callId": call_id, "debtorName": "John Smith"}})
    assert status == 202, body
    return body["notifications"][0]


def inbox(server: ServeProcess, user: str) -> list[dict]:
    status, page = server.call("GET", "/api/notifications?limit=100", token(user))
    assert status == 200, page
    return page["notifications"]


@both_engines
@pytest.mark.timeout(90)
def test_a_step_due_while_the_server_was_down_fires_once_within_a_second_of_restart(
        tmp_path, storage_overrides):
    supervisor, backup = new_user("supervisor"), new_user("backup")
    server = ServeProcess(tmp_path, **policy("backup"), **storage_overrides).start()
    try:
        status, _ = server.call("PUT", "/api/topics/backup/members", SERVICE, {"add": [backup]})
        assert status == 200
        escalate(server, supervisor, "call-1")
        server.kill()  # SIGKILL right after the escalation was stored: nothing ran at exit
        time.sleep(WAIT_SECONDS + 1.0)  # the step comes due while no process runs

        server.start()  # returns once it answers /healthz (imports and opening take their time)
        serving = datetime.now(timezone.utc)
        assert wait_for(lambda: inbox(server, backup), 5), server.log_text()
        [told] = inbox(server, backup)
        fired = datetime.fromisoformat(told["timestamp"].replace("Z", "+00:00"))
        fired_after = (fired - serving).total_seconds()
        assert fired_after < 1.0, f"the due step fired {fired_after:.2f} s after the start"
        assert told["escalation"]["step"] == 1

        # Killed and started once more: the step is not fired again.
        server.kill()
        server.start()
        time.sleep(1.0)
        assert len(inbox(server, backup)) == 1
        status, detail = server.call("GET", f"/api/escalations/{told['escalation']['id']}",
                                     SERVICE)
        assert [line["event"] for line in detail["timeline"]].count("escalated") == 1
    finally:
        server.stop()


@pytest.mark.timeout(120)
def test_under_two_workers_each_step_fires_exactly_once(tmp_path, storage_overrides,
                                                         redis_overrides):
    count = 40
    supervisors = [new_user("supervisor") for _ in range(count)]
    backups = [new_user("backup") for _ in range(count)]
    metrics_port = free_port()
    server = ServeProcess(
        tmp_path, **policy("backups"), **storage_overrides, **redis_overrides,
        **{"server.workers": 2, "metrics.access": "port", "metrics.port": metrics_port,
           "escalation_timers.batch": 2}).start(timeout=40)
    try:
        status, _ = server.call("PUT", "/api/topics/backups/members", SERVICE, {"add": backups})
        assert status == 200
        for index, supervisor in enumerate(supervisors):
            escalate(server, supervisor, f"call-{index}")
        # Every backup is told of every escalation once: one notification per escalation.
        assert wait_for(lambda: all(len(inbox(server, b)) >= count for b in backups), 40)
        time.sleep(1.0)  # nothing more comes
        for backup in backups:
            escalations = [n["escalation"]["id"] for n in inbox(server, backup)]
            assert len(escalations) == count == len(set(escalations)), escalations
        # Both took part. A step one worker stored without hearing so (a commit that failed
        # to answer) is counted by neither.
        won = [_steps_fired(metrics_port + worker) for worker in range(2)]
        assert sum(won) <= count and all(won), f"steps fired by each worker: {won}"
    finally:
        server.stop()


@pytest.mark.timeout(120)
async def test_timers_in_their_own_process_reach_a_workers_socket_and_fire_once_after_a_kill(
        tmp_path, redis_overrides):
    """escalation_timers.own_process: the serving worker fires nothing, the timers' process
    fires the step and its frame reaches the worker's socket through Redis; that process
    SIGKILLed right after an escalation opened is started again and fires its step once."""
    backup = new_user("backup")
    metrics_port = free_port()
    server = ServeProcess(
        tmp_path, **policy("backup"), **redis_overrides,
        **{"escalation_timers.own_process": True, "metrics.access": "port",
           "metrics.port": metrics_port, "logging.level": "INFO"}).start(timeout=40)
    try:
        assert wait_for(lambda: "escalation timers in pid" in server.log_text(), 20), server.log_text()
        timers_pid = int(re.search(r"escalation timers in pid (\d+)",
                                   server.log_path.read_text(encoding="utf-8")).group(1))
        status, _ = server.call("PUT", "/api/topics/backup/members", SERVICE, {"add": [backup]})
        assert status == 200
        socket = await Socket.open(SimpleNamespace(port=server.port, settings=SimpleNamespace(
            server=SimpleNamespace(ws_path="/ws/notifications"))), token(backup))
        await socket.expect("connected")

        escalate(server, new_user("supervisor"), "call-1")
        frame = await socket.expect("notification", timeout=WAIT_SECONDS + 5)
        assert frame["payload"]["escalation"]["step"] == 1
        assert frame["payload"]["data"]["callId"] == "call-1"
        assert _steps_fired(metrics_port) == 0  # the serving worker
        assert _steps_fired(metrics_port + 1) == 1  # the timers' process

        escalate(server, new_user("supervisor"), "call-2")
        os.kill(timers_pid, signal.SIGKILL)  # before the step is due: its successor fires it
        frame = await socket.expect("notification", timeout=WAIT_SECONDS + 20)
        assert frame["payload"]["data"]["callId"] == "call-2", frame
        assert "restarting it" in server.log_text()
        firing = re.findall(r"escalation timers firing \(pid (\d+)\)",
                            server.log_path.read_text(encoding="utf-8"))
        assert len(firing) == 2 and int(firing[-1]) != timers_pid, firing
        await asyncio.sleep(1.0)  # nothing more comes
        assert [f for f in await socket.quiet(0.2) if f["type"] == "notification"] == []
        told = inbox(server, backup)
        assert sorted(n["data"]["callId"] for n in told) == ["call-1", "call-2"]
        for notification in told:
            status, detail = server.call(
                "GET", f"/api/escalations/{notification['escalation']['id']}", SERVICE)
            assert [line["event"] for line in detail["timeline"]].count("escalated") == 1
        socket.close()
        server.stop()
        assert server.process.returncode == 0, server.log_text()
    finally:
        server.stop()


def test_timers_in_their_own_process_without_redis_refuse_to_start_with_one_line(tmp_path):
    server = ServeProcess(tmp_path, **{"escalation_timers.own_process": True})
    with pytest.raises(RuntimeError) as failed:
        server.start()
    assert "escalation_timers.own_process" in str(failed.value) and "redis.url" in str(failed.value)
    assert "Traceback" not in server.log_text()


def _steps_fired(port: int) -> int:
    """How many steps one worker fired (its lateness histogram's count)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    match = re.search(r"^mojavox_escalation_step_lateness_seconds_count (\S+)$", text, re.M)
    return int(float(match.group(1))) if match else 0


@both_engines
@pytest.mark.timeout(120)
async def test_two_instances_on_one_store_and_redis_fire_each_step_once(start_app, make_settings,
                                                                         redis_overrides):
    count = 30
    backups = [new_user("backup") for _ in range(count)]
    settings = make_settings(**policy("backups"), **redis_overrides,
                             **{"escalation_timers.batch": 2})
    first, second = await start_app(settings), await start_app(settings)
    attempted = {id(first): set(), id(second): set()}
    for app in (first, second):
        app.store.change_escalations = _noting_steps(app.store.change_escalations,
                                                     attempted[id(app)])
    status, _ = await first.api.put("/api/topics/backups/members", SERVICE, {"add": backups})
    assert status == 200
    for index in range(count):
        status, body = await (first if index % 2 else second).api.post("/api/events", SERVICE, {
            "type": "call.escalation", "data": {"supervisorId": new_user("supervisor"),
                                                "agentId": "agent-7", "callId": f"call-{index}",
                                                "debtorName": "John Smith"}})
        assert status == 202, body

    async def told() -> list[list[str]]:
        inboxes = []
        for backup in backups:
            status, page = await first.api.get("/api/notifications?limit=100", token(backup))
            inboxes.append([n["escalation"]["id"] for n in page["notifications"]])
        return inboxes

    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and min(map(len, await told())) < count:
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)  # nothing more comes
    for escalations in await told():
        assert len(escalations) == count == len(set(escalations)), escalations
    # Both raced for the same steps (the one that stores a batch first wins all of it, so one
    # instance may win every step), and each step was stored by one of them.
    ours, theirs = attempted.values()
    assert ours & theirs and len(ours | theirs) == count, (len(ours), len(theirs))
    assert sum(_fired(app) for app in (first, second)) == count


def _noting_steps(change_escalations, attempted: set):
    """`store.change_escalations` noting the escalations of the steps it is asked to store."""
    async def noting(changes, *args, **kwargs):
        attempted.update(change.document["_id"] for change in changes if change.drafts)
        return await change_escalations(changes, *args, **kwargs)
    return noting


def _fired(app) -> int:
    return int(sum(sample.value for metric in app.metrics.escalation_lateness.collect()
                   for sample in metric.samples if sample.name.endswith("_count")))
