"""Call service: completed calls, escalations to a supervisor, high-value debtors on a call,
and the end of a call, which resolves its escalation (`call:<callId>`)."""

from urllib.parse import quote

from mojavox_notify import NotificationType, ResolveEscalation, hookimpl
from mojavox_notify.eventdata import MAX_AMOUNT, EventData, format_duration, format_money


@hookimpl
def mojavox_register_types():
    return [
        NotificationType("call_completed", "low", "An AI agent completed a call"),
        NotificationType("call_escalation", "critical", "An AI agent requests a supervisor"),
        NotificationType("high_value_call", "high", "A high-value debtor is on a call"),
    ]


@hookimpl
def mojavox_event_types():
    return {
        "call.completed": "an AI agent finished a call",
        "call.escalation": "an AI agent asks a supervisor to step in",
        "call.high_value": "a debtor with a high balance is on a call",
        "call.ended": "a call ended: its escalation, if any, is resolved",
    }


@hookimpl
def mojavox_event_to_drafts(event):
    handler = HANDLERS.get(event.type)
    return handler(EventData(event.data)) if handler else None


def _completed(data):
    user_id = data.text("userId", max_length=128)
    agent_id = data.text("agentId")
    call_id = data.text("callId")
    debtor = data.text("debtorName")
    duration = data.number("durationSeconds", optional=True, minimum=0)
    outcome = data.text("outcome", optional=True)
    details = {"agentId": agent_id, "callId": call_id, "debtorName": debtor}
    message = f"{agent_id} completed a call with {debtor}"
    extras = []
    if outcome:
        details["outcome"] = outcome
        extras.append(outcome)
    if duration is not None:
        details["durationSeconds"] = duration
        extras.append(format_duration(duration))
    if extras:
        message += f" ({', '.join(extras)})"
    return [{
        "userId": user_id, "type": "call_completed", "title": "Call Completed",
        "message": message, "priority": "low", "data": details,
        "actionUrl": f"/call-history?call={quote(call_id, safe='')}",
    }]


def _escalation(data):
    supervisor_id = data.text("supervisorId", max_length=128)
    agent_id = data.text("agentId")
    call_id = data.text("callId")
    debtor = data.text("debtorName")
    reason = data.text("reason", optional=True, max_length=1000)
    details = {"supervisorId": supervisor_id, "agentId": agent_id, "callId": call_id,
               "debtorName": debtor}
    if reason:
        details["reason"] = reason
    return [{
        "userId": supervisor_id, "type": "call_escalation", "title": "Call Escalation Required",
        "message": f"{agent_id} requests supervisor intervention on call with {debtor}",
        "priority": "critical", "data": details,
        "actionUrl": f"/live-monitor?call={quote(call_id, safe='')}",
        "escalationKey": f"call:{call_id}",
    }]


def _ended(data):
    call_id = data.text("callId")
    outcome = data.text("outcome", optional=True, max_length=200)
    return [ResolveEscalation(f"call:{call_id}", f"call ended: {outcome}" if outcome else "call ended")]


def _high_value(data):
    user_id = data.text("userId", max_length=128)
    call_id = data.text("callId")
    debtor = data.text("debtorName")
    balance = data.number("balance", minimum=0, maximum=MAX_AMOUNT)
    currency = data.currency()
    return [{
        "userId": user_id, "type": "high_value_call", "title": "High-Value Call",
        "message": f"{debtor} (balance {format_money(balance, currency)}) is on a call now",
        "priority": "high",
        "data": {"callId": call_id, "debtorName": debtor, "balance": balance, "currency": currency},
        "actionUrl": f"/live-monitor?call={quote(call_id, safe='')}",
    }]


HANDLERS = {"call.completed": _completed, "call.escalation": _escalation,
            "call.high_value": _high_value, "call.ended": _ended}
