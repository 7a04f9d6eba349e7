"""Critical escalations on both engines, with real sockets: the chain of timed steps, the claim
(one acknowledgement for everyone, the second refused), resolution when the call ends, who may
see one, and its timeline in order."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone

import pytest

from mojavox_notify import hookimpl, tenants
from mojavox_notify.app import NotifyApp, StartupError
from mojavox_notify.settings import SettingsError
from mojavox_notify.store import MAX_TOPIC_MEMBERS
from tests.support.api import post_event
from tests.support.engines import both_engines
from tests.support.sockets import Socket
from tests.support.tokens import new_user, token

bounded = pytest.mark.timeout(60)
SERVICE = token("call-service", ["service"])
STEP_SECONDS = 1.0


def policy(*steps, claim: bool = True, repeat: int = 0, **extra) -> dict:
    return {"escalations": {"call_escalation": {
        "claim": claim, "repeat": repeat,
        "steps": [{"after_seconds": after, "to": to} for after, to in steps], **extra}},
        "escalation_timers.poll_interval_seconds": 0.05}


async def supervisors(app, topic: str, users: list[str]) -> None:
    await app.store.update_topic(tenants.key(tenants.DEFAULT, topic),
                                 [tenants.key(tenants.DEFAULT, user) for user in users], [],
                                 MAX_TOPIC_MEMBERS)


async def connected(app, user: str) -> Socket:
    socket = await Socket.open(app, token(user))
    await socket.expect("connected")
    return socket


async def escalate(app, supervisor: str, call_id: str) -> str:
    """A `call.escalation` for `supervisor`; the id of their notification."""
    status, body = await post_event(app, "call.escalation", {
        "supervisorId": supervisor, "agentId": "agent-7", "callId": call_id,
        "debtorName": "John Smith"})
    assert status == 202, body
    [notification_id] = body["notifications"]
    return notification_id


async def frames_of(socket: Socket, frame_type: str, seconds: float) -> list[dict]:
    return [frame for frame in await socket.quiet(seconds) if frame["type"] == frame_type]


@both_engines
@bounded
async def test_an_unacknowledged_escalation_reaches_step_two_after_its_wait_and_not_before(start_app):
    first, backup, manager = new_user("supervisor"), new_user("supervisor"), new_user("manager")
    app = await start_app(**policy((STEP_SECONDS, {"topic": "backup"}),
                                   (2 * STEP_SECONDS, {"users": [manager]})))
    await supervisors(app, "backup", [backup])
    sockets = {user: await connected(app, user) for user in (first, backup, manager)}
    created = time.monotonic()
    notification_id = await escalate(app, first, "call-1")
    frame = await sockets[first].expect("notification")
    escalation = frame["payload"]["escalation"]
    assert escalation["state"] == "open" and escalation["step"] == 0
    assert escalation["key"] == "call:call-1" and frame["payload"]["id"] == notification_id

    assert await frames_of(sockets[backup], "notification", 0.6 * STEP_SECONDS) == []
    step_one = await sockets[backup].expect("notification", timeout=3)
    assert time.monotonic() - created >= STEP_SECONDS
    assert step_one["payload"]["escalation"]["id"] == escalation["id"]
    assert step_one["payload"]["escalation"]["step"] == 1
    assert step_one["payload"]["title"] == frame["payload"]["title"]
    assert await frames_of(sockets[manager], "notification", 0.3 * STEP_SECONDS) == []
    step_two = await sockets[manager].expect("notification", timeout=3)
    assert time.monotonic() - created >= 2 * STEP_SECONDS
    assert step_two["payload"]["escalation"]["step"] == 2
    # The first recipient heard of each step on its own socket.
    steps = [f["payload"]["step"] for f in await frames_of(sockets[first], "escalation", 0.3)]
    assert steps[-1] == 2


@both_engines
@bounded
async def test_one_acknowledgement_shows_on_every_recipients_sockets_and_stops_the_chain(start_app):
    bob, carol, manager = new_user("bob"), new_user("carol"), new_user("manager")
    app = await start_app(**policy((STEP_SECONDS, {"users": [manager]})))
    await supervisors(app, "floor", [bob, carol])
    bob_socket, carol_socket, carol_tab = (await connected(app, bob), await connected(app, carol),
                                           await connected(app, carol))
    manager_socket = await connected(app, manager)
    status, body = await app.api.post("/api/notifications", SERVICE, {
        "topic": "floor", "type": "call_escalation", "title": "Call Escalation Required",
        "message": "agent-7 requests supervisor intervention", "escalationKey": "call:call-2"})
    assert status == 202 and body["created"] == 2, body
    bob_notification = (await bob_socket.expect("notification"))["payload"]
    carol_notification = (await carol_socket.expect("notification"))["payload"]
    assert bob_notification["escalation"]["id"] == carol_notification["escalation"]["id"]

    status, answer = await app.api.post(f"/api/notifications/{bob_notification['id']}/ack",
                                        token(bob))
    assert status == 200, answer
    assert answer["escalation"]["state"] == "acknowledged"
    assert answer["escalation"]["acknowledgedBy"] == bob
    for socket in (bob_socket, carol_socket, carol_tab):
        change = await socket.expect("escalation")
        assert change["payload"]["acknowledgedBy"] == bob
        assert change["payload"]["state"] == "acknowledged"

    status, refused = await app.api.post(f"/api/notifications/{carol_notification['id']}/ack",
                                         token(carol))
    assert status == 409 and refused["error"]["code"] == "already_acknowledged", refused
    assert bob in refused["error"]["message"]
    assert refused["escalation"]["acknowledgedBy"] == bob
    # Bob again: still his, answered as it is.
    status, again = await app.api.post(f"/api/notifications/{bob_notification['id']}/ack",
                                       token(bob))
    assert status == 200 and again["escalation"]["acknowledgedBy"] == bob

    # No step after an acknowledgement: the manager is never told.
    assert await frames_of(manager_socket, "notification", STEP_SECONDS + 1.0) == []
    status, stored = await app.api.get(f"/api/notifications/{carol_notification['id']}",
                                       token(carol))
    assert stored["escalation"]["acknowledgedBy"] == bob  # what a page reload shows


@both_engines
@bounded
async def test_the_socket_ack_is_answered_on_every_socket_and_refusals_come_as_errors(start_app):
    bob, carol = new_user("bob"), new_user("carol")
    app = await start_app(**policy((30, {"users": [new_user()]})))
    await supervisors(app, "floor", [bob, carol])
    bob_socket, carol_socket = await connected(app, bob), await connected(app, carol)
    await app.api.post("/api/notifications", SERVICE, {
        "topic": "floor", "type": "call_escalation", "title": "Escalation", "message": "now",
        "escalationKey": "call:call-3"})
    bob_id = (await bob_socket.expect("notification"))["payload"]["id"]
    carol_id = (await carol_socket.expect("notification"))["payload"]["id"]
    await carol_socket.send({"type": "ack", "notificationId": carol_id})
    assert (await carol_socket.expect("escalation"))["payload"]["acknowledgedBy"] == carol
    assert (await bob_socket.expect("escalation"))["payload"]["acknowledgedBy"] == carol
    await bob_socket.send({"type": "ack", "notificationId": bob_id})
    error = await bob_socket.expect("error")
    assert error["code"] == "already_acknowledged" and carol in error["message"]
    await bob_socket.send({"type": "ack", "notificationId": carol_id})  # not his: not found
    assert (await bob_socket.expect("error"))["code"] == "not_found"


@both_engines
@bounded
async def test_call_ended_before_the_wait_resolves_it_and_nothing_fires(start_app):
    first, backup = new_user("supervisor"), new_user("backup")
    app = await start_app(**policy((STEP_SECONDS, {"users": [backup]})))
    first_socket, backup_socket = await connected(app, first), await connected(app, backup)
    notification_id = await escalate(app, first, "call-4")
    await first_socket.expect("notification")
    status, body = await post_event(app, "call.ended", {"callId": "call-4",
                                                        "outcome": "debtor hung up"})
    assert status == 202 and body["notifications"] == [], body
    change = (await first_socket.expect("escalation"))["payload"]
    assert change["state"] == "resolved" and change["resolution"] == "call ended: debtor hung up"
    assert change["resolvedAt"] is not None
    assert await frames_of(backup_socket, "notification", STEP_SECONDS + 1.0) == []

    status, refused = await app.api.post(f"/api/notifications/{notification_id}/ack",
                                         token(first))
    assert status == 409 and refused["error"]["code"] == "escalation_resolved", refused
    # A call that ended without an escalation is no error, and a new one for the same call
    # after the first was resolved is an escalation of its own.
    status, _ = await post_event(app, "call.ended", {"callId": "call-without-escalation"})
    assert status == 202
    second_id = await escalate(app, first, "call-4")
    second = (await first_socket.expect("notification"))["payload"]
    assert second["id"] == second_id and second["escalation"]["state"] == "open"
    assert second["escalation"]["id"] != change["id"]


@both_engines
@bounded
async def test_resolve_by_key_is_for_services_in_their_tenant(start_app):
    supervisor = new_user("supervisor")
    app = await start_app(**policy((30, {"users": [new_user()]})))
    await escalate(app, supervisor, "call-5")
    status, refused = await app.api.post("/api/escalations/resolve", token(supervisor),
                                         {"key": "call:call-5"})
    assert status == 403, refused
    status, missing = await app.api.post("/api/escalations/resolve", SERVICE,
                                         {"key": "call:no-such-call"})
    assert status == 404 and missing["error"]["code"] == "escalation_not_found"
    other_tenant = token("acme-dialer", ["service"], tenant="acme")
    status, missing = await app.api.post("/api/escalations/resolve", other_tenant,
                                         {"key": "call:call-5"})
    assert status == 404  # acme has no such call: its key is another tenant's
    status, body = await app.api.post("/api/escalations/resolve", SERVICE,
                                      {"key": "call:call-5", "resolution": "agent recovered"})
    assert status == 200 and body["escalation"]["state"] == "resolved", body
    assert body["escalation"]["resolution"] == "agent recovered"


@both_engines
@bounded
async def test_only_recipients_services_and_admins_read_an_escalation(start_app):
    supervisor, stranger = new_user("supervisor"), new_user("stranger")
    app = await start_app(**policy((30, {"users": [new_user()]})))
    notification_id = await escalate(app, supervisor, "call-6")
    status, mine = await app.api.get(f"/api/notifications/{notification_id}", token(supervisor))
    escalation_id = mine["escalation"]["id"]

    status, _ = await app.api.get(f"/api/escalations/{escalation_id}", token(stranger))
    assert status == 404
    status, _ = await app.api.post(f"/api/notifications/{notification_id}/ack", token(stranger))
    assert status == 404
    status, _ = await app.api.get("/api/escalations/not-an-id", token(supervisor))
    assert status == 404
    for reader in (token(supervisor), SERVICE, token("ops", ["admin"])):
        status, detail = await app.api.get(f"/api/escalations/{escalation_id}", reader)
        assert status == 200, detail
        assert detail["escalation"]["id"] == escalation_id
        assert [r["userId"] for r in detail["recipients"]] == [supervisor]
    status, _ = await app.api.get(f"/api/escalations/{escalation_id}",
                                  token("acme-ops", ["admin"], tenant="acme"))
    assert status == 404  # another tenant's admin
    status, listed = await app.api.get("/api/escalations?state=open", token(supervisor))
    assert [(e["id"], e["notificationId"]) for e in listed["escalations"]] == [
        (escalation_id, notification_id)]
    assert listed["escalations"][0]["createdAt"] <= mine["timestamp"]  # opened, then stored
    status, listed = await app.api.get("/api/escalations", token(stranger))
    assert listed == {"escalations": []}


@both_engines
@bounded
async def test_the_timeline_lists_what_happened_in_order(start_app):
    first, backup = new_user("supervisor"), new_user("backup")
    app = await start_app(**policy((STEP_SECONDS, {"users": [backup]})))
    first_socket = await connected(app, first)
    notification_id = await escalate(app, first, "call-7")
    await first_socket.expect("notification")
    await first_socket.send({"type": "seen", "notificationIds": [notification_id]})
    backup_socket = await connected(app, backup)
    backup_notification = (await backup_socket.expect("notification", timeout=4))["payload"]
    status, seen = await app.api.post("/api/notifications/seen", token(backup),
                                      {"ids": [backup_notification["id"]]})
    assert status == 200 and seen == {"seen": 1}
    await app.api.post(f"/api/notifications/{backup_notification['id']}/read", token(backup))
    status, _ = await app.api.post(f"/api/notifications/{backup_notification['id']}/ack",
                                   token(backup))
    assert status == 200
    await post_event(app, "call.ended", {"callId": "call-7"})
    await asyncio.sleep(0.5)  # the journal writes the sockets' lines in batches

    escalation_id = backup_notification["escalation"]["id"]
    status, detail = await app.api.get(f"/api/escalations/{escalation_id}", token(first))
    lines = [(line["event"], line.get("userId"), line.get("step"), line.get("channel"))
             for line in detail["timeline"]]
    assert lines == [
        ("created", None, 0, None),
        ("notified", first, 0, "stored"),
        ("notified", first, 0, "socket"),
        ("delivered", first, 0, None),
        ("seen", first, 0, None),
        ("escalated", None, 1, None),
        ("notified", backup, 1, "stored"),
        ("notified", backup, 1, "socket"),
        ("delivered", backup, 1, None),
        ("seen", backup, 1, None),
        ("read", backup, 1, None),
        ("acknowledged", backup, 1, None),
        ("resolved", None, 1, None),
    ], lines
    times = [line["at"] for line in detail["timeline"]]
    assert times == sorted(times)
    assert detail["escalation"]["state"] == "resolved"
    assert {r["userId"]: r["step"] for r in detail["recipients"]} == {first: 0, backup: 1}


@both_engines
@bounded
async def test_the_last_step_passing_unanswered_makes_it_unanswered_and_a_late_ack_still_takes_it(
        start_app):
    first, backup = new_user("supervisor"), new_user("backup")
    app = await start_app(**policy((0.5 * STEP_SECONDS, {"users": [backup]}),
                                   unanswered_after_seconds=0.5 * STEP_SECONDS))
    first_socket = await connected(app, first)
    notification_id = await escalate(app, first, "call-8")
    await first_socket.expect("notification")
    states = []
    deadline = time.monotonic() + 5
    while "unanswered" not in states and time.monotonic() < deadline:
        states += [f["payload"]["state"] for f in await frames_of(first_socket, "escalation", 0.2)]
    assert states[-1] == "unanswered", states
    status, listed = await app.api.get("/api/escalations?state=unanswered", token(first))
    assert [e["state"] for e in listed["escalations"]] == ["unanswered"]
    status, late = await app.api.post(f"/api/notifications/{notification_id}/ack", token(first))
    assert status == 200 and late["escalation"]["state"] == "acknowledged"
    status, text = await app.api.get("/metrics", token("ops", ["admin"]))
    assert 'mojavox_escalations_total{outcome="unanswered",type="call_escalation"} 1.0' in text
    assert 'mojavox_escalation_acknowledgement_seconds_count{step="1",type="call_escalation"} 1.0' in text


@both_engines
@bounded
async def test_a_repeat_runs_the_steps_again_and_tells_their_targets_again(start_app):
    first, backup = new_user("supervisor"), new_user("backup")
    app = await start_app(**policy((0.4 * STEP_SECONDS, {"users": [backup]}), repeat=1,
                                   unanswered_after_seconds=5))
    backup_socket = await connected(app, backup)
    await escalate(app, first, "call-9")
    rounds = [await backup_socket.expect("notification", timeout=3) for _ in range(2)]
    assert [r["payload"]["escalation"]["step"] for r in rounds] == [1, 1]
    assert rounds[0]["payload"]["id"] != rounds[1]["payload"]["id"]
    assert await frames_of(backup_socket, "notification", 1.0) == []  # one repeat only


class OnDutyRoster:
    """A deployment's own roster: who is on duty now, asked when a step fires; and a listener
    that tells the call service who took the call."""

    def __init__(self, on_duty: list[str]):
        self.on_duty = on_duty
        self.asked: list[tuple[dict, dict]] = []
        self.changes: list[dict] = []

    @hookimpl
    def mojavox_escalation_targets(self, notification, step):
        self.asked.append((notification, step))
        return self.on_duty

    @hookimpl
    async def mojavox_escalation_changed(self, escalation):
        self.changes.append(escalation)

    @hookimpl
    def mojavox_escalation_policies(self):
        return {"call_escalation": {"steps": [{"after_seconds": 0.5}]}}


@both_engines
@bounded
async def test_a_plugin_names_the_policy_and_the_on_duty_targets_and_hears_every_change(start_app):
    first, on_duty = new_user("supervisor"), new_user("on-duty")
    roster = OnDutyRoster([on_duty])
    app = await start_app(plugins=[("roster", roster)],
                          **{"escalation_timers.poll_interval_seconds": 0.05})
    duty_socket = await connected(app, on_duty)
    await escalate(app, first, "call-10")
    told = (await duty_socket.expect("notification", timeout=3))["payload"]
    assert told["escalation"]["step"] == 1
    [(notification, step)] = roster.asked
    assert notification["type"] == "call_escalation" and notification["tenant"] == tenants.DEFAULT
    assert notification["data"]["callId"] == "call-10"
    assert step == {"number": 1, "round": 0, "afterSeconds": 0.5, "topic": None, "users": []}
    status, _ = await app.api.post(f"/api/notifications/{told['id']}/ack", token(on_duty))
    assert status == 200
    await duty_socket.expect("escalation")
    assert [(c["step"], c["state"], c["acknowledgedBy"]) for c in roster.changes] == [
        (1, "open", None), (1, "acknowledged", on_duty)]


@both_engines
@bounded
async def test_an_acknowledgement_stored_while_a_step_is_being_taken_on_wins_and_no_step_goes(
        start_app):
    """The race, forced: a timer reads the due escalation, then the acknowledgement is stored
    before the timer's change: the step's compare-and-set fails and nobody new is told."""
    first, backup = new_user("supervisor"), new_user("backup")
    app = await start_app(**policy((0.5 * STEP_SECONDS, {"users": [backup]})),
                          **{"escalation_timers.lookahead_seconds": 0})  # read when due
    notification_id = await escalate(app, first, "call-11")
    store, read_due = app.store, app.store.due_escalations
    acknowledged = asyncio.Event()

    async def due_then_acknowledged(*args):
        due = await read_due(*args)
        if due and not acknowledged.is_set():
            status, _ = await app.api.post(f"/api/notifications/{notification_id}/ack",
                                           token(first))
            assert status == 200
            acknowledged.set()
        return due

    store.due_escalations = due_then_acknowledged
    await asyncio.wait_for(acknowledged.wait(), 3)  # the timers read it, then it was taken
    await asyncio.sleep(0.3)
    assert await app.escalation_timers.fire_due() == 0  # nothing is due any more
    status, page = await app.api.get("/api/notifications", token(backup))
    assert page["notifications"] == []
    status, mine = await app.api.get(f"/api/notifications/{notification_id}", token(first))
    assert mine["escalation"]["state"] == "acknowledged" and mine["escalation"]["step"] == 0


@both_engines
@bounded
async def test_a_step_prepared_ahead_then_acknowledged_is_not_sent(start_app):
    """The timers read and prepare a step before it is due (lookahead); an acknowledgement
    stored after that and before the due time wins: the prepared step is refused then."""
    first, backup = new_user("supervisor"), new_user("backup")
    app = await start_app(**policy((STEP_SECONDS, {"users": [backup]})),
                          **{"escalation_timers.lookahead_seconds": 5})
    notification_id = await escalate(app, first, "call-12")
    status, mine = await app.api.get(f"/api/notifications/{notification_id}", token(first))
    escalation_id = mine["escalation"]["id"]
    timers = app.escalation_timers
    while not timers.holds(escalation_id):  # prepared, held until due
        await asyncio.sleep(0.01)
    status, _ = await app.api.post(f"/api/notifications/{notification_id}/ack", token(first))
    assert status == 200
    await asyncio.sleep(STEP_SECONDS + 0.3)  # past the due time
    assert not timers.holds(escalation_id)  # tried at its time, and refused
    status, page = await app.api.get("/api/notifications", token(backup))
    assert page["notifications"] == []
    status, detail = await app.api.get(f"/api/escalations/{escalation_id}", token(first))
    assert detail["escalation"]["state"] == "acknowledged" and detail["escalation"]["step"] == 0
    assert "escalated" not in [line["event"] for line in detail["timeline"]]


@both_engines
@bounded
async def test_a_step_prepared_ahead_is_sent_at_its_time_not_before(start_app):
    first, backup = new_user("supervisor"), new_user("backup")
    app = await start_app(**policy((STEP_SECONDS, {"users": [backup]})),
                          **{"escalation_timers.lookahead_seconds": 5})
    backup_socket = await connected(app, backup)
    notification_id = await escalate(app, first, "call-13")
    status, mine = await app.api.get(f"/api/notifications/{notification_id}", token(first))
    created = datetime.fromisoformat(mine["escalation"]["createdAt"].replace("Z", "+00:00"))
    while not app.escalation_timers.holds(mine["escalation"]["id"]):
        await asyncio.sleep(0.01)
    step = (await backup_socket.expect("notification", timeout=4))["payload"]
    arrived = datetime.now(timezone.utc)
    sent = datetime.fromisoformat(step["timestamp"].replace("Z", "+00:00"))
    assert (sent - created).total_seconds() >= STEP_SECONDS  # stored no earlier than due
    assert (arrived - created).total_seconds() < STEP_SECONDS + 0.5
    assert step["escalation"]["step"] == 1


@pytest.mark.parametrize("escalations, named", [
    ({"payment_recieved": {"steps": [{"after_seconds": 30}]}}, "payment_recieved is not a notification type"),
    ({"call_escalation": {"steps": [{"after_seconds": 90}, {"after_seconds": 30}]}},
     "escalations.call_escalation.steps.1.after_seconds: must be later than the step before"),
    ({"call_escalation": {"steps": [{"after_seconds": 30, "to": {"topic": "a b"}}]}},
     "escalations.call_escalation.steps.0.to.topic"),
    ({"call_escalation": {"repeat": 9}}, "escalations.call_escalation.repeat: must be between 0 and 5"),
])
def test_a_policy_that_cannot_run_stops_start_up_naming_it(make_settings, escalations, named):
    with pytest.raises((StartupError, SettingsError)) as refused:
        NotifyApp(make_settings(escalations=escalations))
    assert named in str(refused.value)


@both_engines
@bounded
async def test_a_topic_send_without_a_key_is_one_escalation_for_every_member(start_app):
    team = [new_user("supervisor") for _ in range(3)]
    app = await start_app(**policy((30, {"users": [new_user()]})))
    await supervisors(app, "floor", team)
    sockets = [await connected(app, user) for user in team]
    status, body = await app.api.post("/api/notifications", SERVICE, {
        "topic": "floor", "type": "call_escalation", "title": "Escalation", "message": "now"})
    assert status == 202 and body["created"] == 3, body
    escalations = [(await socket.expect("notification"))["payload"]["escalation"]
                   for socket in sockets]
    assert len({e["id"] for e in escalations}) == 1
    assert escalations[0]["key"].startswith("escalation:")


@both_engines
@bounded
async def test_an_acknowledgement_right_after_a_step_is_stored_keeps_and_nothing_more_fires(
        start_app):
    first, backup, manager = new_user("supervisor"), new_user("backup"), new_user("manager")
    app = await start_app(**policy((0.5, {"users": [backup]}), (1.0, {"users": [manager]})))
    notification_id = await escalate(app, first, "call-12")
    announce = app.service.announce
    acknowledged = asyncio.Event()

    async def step_stored_then_acknowledged(prepared, stored, *args, **kwargs):
        if any(d.escalation and d.escalation["step"] == 1 for d in prepared.wanted):
            status, _ = await app.api.post(f"/api/notifications/{notification_id}/ack",
                                           token(first))
            assert status == 200
            acknowledged.set()
        return await announce(prepared, stored, *args, **kwargs)

    app.service.announce = step_stored_then_acknowledged
    await asyncio.wait_for(acknowledged.wait(), 4)
    await asyncio.sleep(1.5)  # past step 2's time
    status, page = await app.api.get("/api/notifications", token(backup))
    assert len(page["notifications"]) == 1  # step 1 went: it was stored before the answer
    status, page = await app.api.get("/api/notifications", token(manager))
    assert page["notifications"] == []  # step 2 never did
    status, mine = await app.api.get(f"/api/notifications/{notification_id}", token(first))
    assert mine["escalation"]["state"] == "acknowledged" and mine["escalation"]["step"] == 1


@both_engines
@bounded
@pytest.mark.parametrize("committed", [False, True], ids=["refused", "committed-unanswered"])
async def test_a_step_whose_storage_fails_fires_once(start_app, committed):
    """Storage fails the step's transaction, before it is written (nothing of the step is
    stored: a later round sends it) or after it committed, the answer lost (a write that timed
    out: the stored step is not sent again)."""
    from mojavox_notify.errors import StorageUnavailableError
    first, backup = new_user("supervisor"), new_user("backup")
    app = await start_app(**policy((0.3, {"users": [backup]})))
    change_escalations = app.store.change_escalations
    failed = asyncio.Event()

    async def fails_once_for_the_step(changes, *args, **kwargs):
        if failed.is_set() or not any(change.drafts for change in changes):
            return await change_escalations(changes, *args, **kwargs)
        failed.set()
        if committed:
            await change_escalations(changes, *args, **kwargs)
        raise StorageUnavailableError("the disk stalled")

    app.store.change_escalations = fails_once_for_the_step
    await escalate(app, first, "call-13")
    await asyncio.wait_for(failed.wait(), 3)
    deadline = time.monotonic() + 4
    page = {"notifications": []}
    while time.monotonic() < deadline and not page["notifications"]:
        await asyncio.sleep(0.2)
        status, page = await app.api.get("/api/notifications", token(backup))
    [told] = page["notifications"]
    await asyncio.sleep(1.5)  # later rounds send nothing more
    status, page = await app.api.get("/api/notifications", token(backup))
    assert [n["id"] for n in page["notifications"]] == [told["id"]]
    status, detail = await app.api.get(f"/api/escalations/{told['escalation']['id']}", SERVICE)
    events = [line["event"] for line in detail["timeline"]]
    told_backup = [line for line in detail["timeline"]
                   if line["event"] == "notified" and line.get("userId") == backup]
    assert events.count("escalated") == 1 and len(told_backup) == 1, detail["timeline"]


@bounded
async def test_the_timers_stop_when_cancelled_even_as_they_are_woken(start_app):
    """A cancellation that comes at the moment the timers' wait ends is not lost (Python 3.11's
    asyncio.wait_for could lose it, and an app's stop then never finished)."""
    app = await start_app(**policy((30, {"users": [new_user()]})))
    timers = app.escalation_timers
    for _ in range(20):
        task = asyncio.get_running_loop().create_task(timers.run())
        await asyncio.sleep(0.02)  # waiting for its next look
        timers.wake_at(0)  # its wait ends...
        task.cancel()  # ...as it is cancelled
        done, _ = await asyncio.wait([task], timeout=2)
        assert done, "the timers kept running after their cancellation"
