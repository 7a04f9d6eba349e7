"""The five shipped plugins: each domain event, posted to POST /api/events, becomes exactly the
notification DESIGN.md describes; a bad payload is a 400 naming the field and creates nothing."""

from __future__ import annotations

import pytest

from .support.api import notifications_of, post_event
from .support.tokens import new_user, token

SHIPPED_EVENT_TYPES = ["agent.alert", "call.completed", "call.ended", "call.escalation", "call.high_value",
                       "campaign.milestone", "payment.received", "system.alert"]


async def only_notification(app, event_type: str, data: dict, recipient: str) -> dict:
    """Post the event, check the 202 names one notification, and return that notification as
    the recipient reads it back, without the fields the server chooses (id, timestamp, read)."""
    status, body = await post_event(app, event_type, data)
    assert status == 202, body
    assert list(body) == ["notifications"] and len(body["notifications"]) == 1, body
    stored = await notifications_of(app, recipient)
    assert [n["id"] for n in stored] == body["notifications"]
    notification = dict(stored[0])
    assert notification.pop("read") is False
    assert notification.pop("timestamp").endswith("Z")
    del notification["id"]
    return notification


# -- payment.received --------------------------------------------------------------------------

@pytest.mark.timeout(30)
async def test_payment_received_notifies_the_collector_with_the_amount_in_dollars(start_app):
    app = await start_app()
    collector = new_user("collector")
    data = {"userId": collector, "amount": 2450, "accountId": "AC-2024-1234",
            "debtorName": "John Smith"}
    assert await only_notification(app, "payment.received", data, collector) == {
        "type": "payment_received",
        "priority": "high",
        "title": "Payment Received",
        "message": "John Smith paid $2,450.00 on account #AC-2024-1234",
        "actionUrl": "/payment-history",
        "data": {"amount": 2450, "accountId": "AC-2024-1234", "debtorName": "John Smith",
                 "currency": "USD"},
    }


@pytest.mark.timeout(30)
async def test_payment_in_another_currency_names_the_currency_and_keeps_the_payment_id(start_app):
    app = await start_app()
    collector = new_user("collector")
    data = {"userId": collector, "amount": 1234.5, "accountId": "AC-77", "debtorName": "Ana Ruiz",
            "currency": "EUR", "paymentId": "PAY-9001"}
    assert await only_notification(app, "payment.received", data, collector) == {
        "type": "payment_received",
        "priority": "high",
        "title": "Payment Received",
        "message": "Ana Ruiz paid 1,234.50 EUR on account #AC-77",
        "actionUrl": "/payment-history",
        "data": {"amount": 1234.5, "accountId": "AC-77", "debtorName": "Ana Ruiz",
                 "currency": "EUR", "paymentId": "PAY-9001"},
    }


@pytest.mark.timeout(30)
async def test_payment_amounts_are_rounded_half_up_to_cents_with_thousands_separators(start_app):
    app = await start_app()
    # 2.675 and 1.005 are just below their half-way points as binary floats: rounding must use
    # the decimal the sender wrote, not the float.
    cases = {0: "$0.00", 0.005: "$0.01", 1.005: "$1.01", 2.675: "$2.68", 99.999: "$100.00",
             1234567.891: "$1,234,567.89", 1000000: "$1,000,000.00"}
    for amount, shown in cases.items():
        collector = new_user("collector")
        data = {"userId": collector, "amount": amount, "accountId": "AC-1", "debtorName": "Jo Doe"}
        notification = await only_notification(app, "payment.received", data, collector)
        assert notification["message"] == f"Jo Doe paid {shown} on account #AC-1", amount
        assert notification["data"]["amount"] == amount


@pytest.mark.timeout(30)
async def test_an_amount_or_balance_past_a_quadrillion_is_refused_naming_the_field(start_app):
    app = await start_app()
    user = new_user("collector")
    events = [("payment.received", {"userId": user, "amount": 9.57e110, "accountId": "AC-1",
                                    "debtorName": "Jo Doe"}, "data.amount"),
              ("call.high_value", {"userId": user, "callId": "C-1", "debtorName": "Jo Doe",
                                   "balance": 10 ** 16}, "data.balance")]
    for event_type, data, field in events:
        status, body = await app.api.post("/api/events", token("svc", roles=["service"]),
                                          {"type": event_type, "data": data})
        assert status == 400 and body["error"]["message"].startswith(field), body


# -- call service ------------------------------------------------------------------------------

@pytest.mark.timeout(30)
async def test_call_completed_with_outcome_and_duration_is_a_low_priority_summary(start_app):
    app = await start_app()
    collector = new_user("collector")
    data = {"userId": collector, "agentId": "agent-7", "callId": "CALL-1001",
            "debtorName": "John Smith", "durationSeconds": 272, "outcome": "promise to pay"}
    assert await only_notification(app, "call.completed", data, collector) == {
        "type": "call_completed",
        "priority": "low",
        "title": "Call Completed",
        "message": "agent-7 completed a call with John Smith (promise to pay, 4m 32s)",
        "actionUrl": "/call-history?call=CALL-1001",
        "data": {"agentId": "agent-7", "callId": "CALL-1001", "debtorName": "John Smith",
                 "outcome": "promise to pay", "durationSeconds": 272},
    }


@pytest.mark.timeout(30)
async def test_call_completed_without_outcome_or_duration_leaves_them_out(start_app):
    app = await start_app()
    collector = new_user("collector")
    data = {"userId": collector, "agentId": "agent-7", "callId": "CALL-1002",
            "debtorName": "John Smith"}
    assert await only_notification(app, "call.completed", data, collector) == {
        "type": "call_completed",
        "priority": "low",
        "title": "Call Completed",
        "message": "agent-7 completed a call with John Smith",
        "actionUrl": "/call-history?call=CALL-1002",
        "data": {"agentId": "agent-7", "callId": "CALL-1002", "debtorName": "John Smith"},
    }


@pytest.mark.timeout(30)
async def test_call_completed_duration_alone_is_shown_in_seconds_minutes_or_hours(start_app):
    app = await start_app()
    for seconds, shown in {45: "45s", 272: "4m 32s", 3900: "1h 05m"}.items():
        collector = new_user("collector")
        data = {"userId": collector, "agentId": "agent-2", "callId": "CALL-5",
                "debtorName": "Jo Doe", "durationSeconds": seconds}
        notification = await only_notification(app, "call.completed", data, collector)
        assert notification["message"] == f"agent-2 completed a call with Jo Doe ({shown})"
        assert notification["data"]["durationSeconds"] == seconds


@pytest.mark.timeout(30)
async def test_call_escalation_is_a_critical_notification_for_the_supervisor(start_app):
    app = await start_app()
    supervisor = new_user("supervisor")
    data = {"supervisorId": supervisor, "agentId": "agent-7", "callId": "CALL-42",
            "debtorName": "John Smith", "reason": "debtor disputes the balance"}
    assert await only_notification(app, "call.escalation", data, supervisor) == {
        "type": "call_escalation",
        "priority": "critical",
        "title": "Call Escalation Required",
        "message": "agent-7 requests supervisor intervention on call with John Smith",
        "actionUrl": "/live-monitor?call=CALL-42",
        "data": {"supervisorId": supervisor, "agentId": "agent-7", "callId": "CALL-42",
                 "debtorName": "John Smith", "reason": "debtor disputes the balance"},
    }


@pytest.mark.timeout(30)
async def test_call_escalation_without_reason_and_with_an_odd_call_id_keeps_the_url_safe(start_app):
    app = await start_app()
    supervisor = new_user("supervisor")
    data = {"supervisorId": supervisor, "agentId": "agent-7", "callId": "CALL 7/8&x=1",
            "debtorName": "John Smith"}
    notification = await only_notification(app, "call.escalation", data, supervisor)
    assert notification["actionUrl"] == "/live-monitor?call=CALL%207%2F8%26x%3D1"
    assert notification["data"] == {"supervisorId": supervisor, "agentId": "agent-7",
                                    "callId": "CALL 7/8&x=1", "debtorName": "John Smith"}


@pytest.mark.timeout(30)
async def test_call_high_value_names_the_balance_in_its_currency(start_app):
    app = await start_app()
    collector = new_user("collector")
    data = {"userId": collector, "callId": "CALL-9", "debtorName": "Mary Major", "balance": 15000}
    assert await only_notification(app, "call.high_value", data, collector) == {
        "type": "high_value_call",
        "priority": "high",
        "title": "High-Value Call",
        "message": "Mary Major (balance $15,000.00) is on a call now",
        "actionUrl": "/live-monitor?call=CALL-9",
        "data": {"callId": "CALL-9", "debtorName": "Mary Major", "balance": 15000,
                 "currency": "USD"},
    }
    other = new_user("collector")
    data = {"userId": other, "callId": "CALL-10", "debtorName": "Mary Major",
            "balance": 15000.456, "currency": "GBP"}
    notification = await only_notification(app, "call.high_value", data, other)
    assert notification["message"] == "Mary Major (balance 15,000.46 GBP) is on a call now"
    assert notification["data"]["currency"] == "GBP"


# -- agent monitor and campaign service ----------------------------------------------------------

@pytest.mark.timeout(30)
async def test_agent_alert_with_threshold_shows_value_against_threshold(start_app):
    app = await start_app()
    supervisor = new_user("supervisor")
    data = {"userId": supervisor, "agentId": "agent-3", "metric": "sentiment", "value": 0.42,
            "threshold": 0.6}
    assert await only_notification(app, "agent.alert", data, supervisor) == {
        "type": "agent_alert",
        "priority": "high",
        "title": "Agent Alert",
        "message": "agent-3: sentiment is 0.42 (threshold 0.6)",
        "actionUrl": "/agents?agent=agent-3",
        "data": {"agentId": "agent-3", "metric": "sentiment", "value": 0.42, "threshold": 0.6},
    }


@pytest.mark.timeout(30)
async def test_agent_alert_without_threshold_shows_the_value_alone(start_app):
    app = await start_app()
    supervisor = new_user("supervisor")
    data = {"userId": supervisor, "agentId": "agent-3", "metric": "dropped calls", "value": 12}
    assert await only_notification(app, "agent.alert", data, supervisor) == {
        "type": "agent_alert",
        "priority": "high",
        "title": "Agent Alert",
        "message": "agent-3: dropped calls is 12",
        "actionUrl": "/agents?agent=agent-3",
        "data": {"agentId": "agent-3", "metric": "dropped calls", "value": 12},
    }


@pytest.mark.timeout(30)
async def test_campaign_milestone_is_a_medium_notification_with_the_percentage(start_app):
    app = await start_app()
    manager = new_user("manager")
    data = {"userId": manager, "campaignId": "CMP-Q1", "campaignName": "Q1 Recovery",
            "percent": 75}
    assert await only_notification(app, "campaign.milestone", data, manager) == {
        "type": "campaign_milestone",
        "priority": "medium",
        "title": "Campaign Milestone",
        "message": "Q1 Recovery reached 75% of its target",
        "actionUrl": "/campaigns?campaign=CMP-Q1",
        "data": {"campaignId": "CMP-Q1", "campaignName": "Q1 Recovery", "percent": 75},
    }


# -- system monitor ------------------------------------------------------------------------------

@pytest.mark.timeout(30)
async def test_system_alert_reaches_every_listed_user_with_priority_from_severity(start_app):
    app = await start_app()
    for severity, priority in {"info": "low", "warning": "medium", "error": "high",
                               "critical": "critical"}.items():
        users = [new_user("ops") for _ in range(3)]
        data = {"userIds": users, "severity": severity, "message": f"Storage is {severity}"}
        status, body = await post_event(app, "system.alert", data)
        assert status == 202, body
        assert len(body["notifications"]) == 3
        for user, notification_id in zip(users, body["notifications"]):
            [notification] = await notifications_of(app, user)
            assert notification["id"] == notification_id
            assert {key: notification[key] for key in
                    ("type", "priority", "title", "message", "actionUrl", "data")} == {
                "type": "system_alert",
                "priority": priority,
                "title": "System Alert",
                "message": f"Storage is {severity}",
                "actionUrl": "/system-status",
                "data": {"severity": severity},
            }, severity


@pytest.mark.timeout(30)
async def test_system_alert_uses_its_own_title_and_notifies_a_repeated_user_once(start_app):
    app = await start_app()
    ops = new_user("ops")
    data = {"userIds": [ops, ops], "severity": "error", "message": "Dialer down",
            "title": "Dialer Outage"}
    status, body = await post_event(app, "system.alert", data)
    assert status == 202 and len(body["notifications"]) == 1, body
    [notification] = await notifications_of(app, ops)
    assert (notification["title"], notification["priority"]) == ("Dialer Outage", "high")


# -- bad payloads ------------------------------------------------------------------------------

def valid_payloads() -> dict[str, dict]:
    """One complete, valid payload per shipped event type, every optional field included."""
    user = new_user()
    return {
        "payment.received": {"userId": user, "amount": 10, "accountId": "AC-1", "debtorName": "A B",
                             "currency": "EUR", "paymentId": "P-1"},
        "call.completed": {"userId": user, "agentId": "agent-1", "callId": "C-1",
                           "debtorName": "A B", "durationSeconds": 60, "outcome": "paid"},
        "call.escalation": {"supervisorId": user, "agentId": "agent-1", "callId": "C-1",
                            "debtorName": "A B", "reason": "angry"},
        "call.high_value": {"userId": user, "callId": "C-1", "debtorName": "A B", "balance": 9000,
                            "currency": "USD"},
        "agent.alert": {"userId": user, "agentId": "agent-1", "metric": "m", "value": 1,
                        "threshold": 2},
        "campaign.milestone": {"userId": user, "campaignId": "K-1", "campaignName": "K",
                               "percent": 50},
        "system.alert": {"userIds": [user], "severity": "info", "message": "m", "title": "t"},
    }


REQUIRED_FIELDS = {
    "payment.received": ["userId", "amount", "accountId", "debtorName"],
    "call.completed": ["userId", "agentId", "callId", "debtorName"],
    "call.escalation": ["supervisorId", "agentId", "callId", "debtorName"],
    "call.high_value": ["userId", "callId", "debtorName", "balance"],
    "agent.alert": ["userId", "agentId", "metric", "value"],
    "campaign.milestone": ["userId", "campaignId", "campaignName", "percent"],
    "system.alert": ["userIds", "severity", "message"],
}

# event type → {field: a value of the wrong type or outside what the field allows}
WRONG_VALUES = {
    "payment.received": {"userId": 7, "amount": "2450", "accountId": ["AC"], "debtorName": "",
                         "currency": "usd", "paymentId": 12},
    "call.completed": {"userId": 1, "agentId": {"id": 1}, "callId": 5,
                       "debtorName": True, "durationSeconds": "4m", "outcome": 3},
    "call.escalation": {"supervisorId": ["sup"], "agentId": 7, "callId": 1.5, "debtorName": "  ",
                        "reason": False},
    "call.high_value": {"userId": 1, "callId": 2, "debtorName": 3, "balance": True,
                        "currency": "dollars"},
    "agent.alert": {"userId": 1, "agentId": 2, "metric": 3, "value": "low", "threshold": "high"},
    "campaign.milestone": {"userId": 1, "campaignId": 2, "campaignName": 3, "percent": "75%"},
    "system.alert": {"userIds": "ops-1", "severity": "fatal", "message": 5, "title": 6},
}


@pytest.mark.timeout(30)
async def test_each_missing_required_field_is_a_400_naming_it(start_app):
    app = await start_app()
    for event_type, fields in REQUIRED_FIELDS.items():
        for field in fields:
            data = valid_payloads()[event_type]
            del data[field]
            status, body = await post_event(app, event_type, data)
            assert status == 400, (event_type, field, body)
            assert body["error"]["code"] == "invalid_request"
            assert body["error"]["message"].startswith(f"data.{field}: "), (event_type, body)


@pytest.mark.timeout(30)
async def test_each_wrong_typed_field_is_a_400_naming_it_and_creates_nothing(start_app):
    app = await start_app()
    for event_type, wrong in WRONG_VALUES.items():
        for field, value in wrong.items():
            data = valid_payloads()[event_type]
            recipient = data.get("userId") or data.get("supervisorId") or data["userIds"][0]
            data[field] = value
            status, body = await post_event(app, event_type, data)
            assert status == 400, (event_type, field, body)
            assert body["error"]["message"].startswith(f"data.{field}"), (event_type, body)
            if isinstance(recipient, str):
                assert await notifications_of(app, recipient) == []


@pytest.mark.timeout(30)
async def test_out_of_range_numbers_and_bad_list_items_name_the_field(start_app):
    app = await start_app()
    payloads = valid_payloads()
    cases = [
        ("payment.received", "amount", -1, "data.amount: must be at least 0"),
        ("call.completed", "durationSeconds", -5, "data.durationSeconds: must be at least 0"),
        ("call.high_value", "balance", -0.01, "data.balance: must be at least 0"),
        ("campaign.milestone", "percent", 1001, "data.percent: must be at most 1000"),
        ("system.alert", "userIds", [], "data.userIds: must be a non-empty list of strings"),
        ("system.alert", "userIds", ["ops-1", 2], "data.userIds[1]: "),
        ("system.alert", "severity", "fatal", "data.severity: must be one of info, warning, "
                                              "error, critical"),
    ]
    for event_type, field, value, message in cases:
        data = dict(payloads[event_type], **{field: value})
        status, body = await post_event(app, event_type, data)
        assert status == 400, (event_type, field, body)
        assert body["error"]["message"].startswith(message), body


@pytest.mark.timeout(30)
async def test_event_without_a_data_object_is_a_400_naming_data(start_app):
    app = await start_app()
    for data in (None, [], "text"):
        status, body = await post_event(app, "payment.received", data)
        assert status == 400, body
        assert body["error"]["message"] == "data: must be a JSON object"


@pytest.mark.timeout(30)
async def test_unknown_event_type_is_a_400_listing_the_known_ones(start_app):
    app = await start_app()
    status, body = await post_event(app, "payment.refunded", {"userId": new_user()})
    assert status == 400, body
    assert body["error"]["code"] == "unknown_event_type"
    assert body["error"]["message"] == ("type: unknown event type; known: "
                                        + ", ".join(SHIPPED_EVENT_TYPES))


@pytest.mark.timeout(30)
async def test_only_a_service_token_may_post_events(start_app):
    app = await start_app()
    user = new_user()
    event = {"type": "payment.received", "data": {"userId": user, "amount": 1, "accountId": "A",
                                                  "debtorName": "B"}}
    for roles in ([], ["admin"]):
        status, body = await app.api.post("/api/events", token(user, roles), event)
        assert status == 403, (roles, body)
        assert body["error"]["code"] == "forbidden"
    status, body = await app.api.post("/api/events", None, event)
    assert status == 401, body
    assert await notifications_of(app, user) == []
