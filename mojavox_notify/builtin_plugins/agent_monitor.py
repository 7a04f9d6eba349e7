"""Agent monitor: an AI agent's performance metric crossed its threshold."""

from urllib.parse import quote

from mojavox_notify import NotificationType, hookimpl
from mojavox_notify.eventdata import EventData


@hookimpl
def mojavox_register_types():
    return [NotificationType("agent_alert", "high", "An agent's performance needs attention")]


@hookimpl
def mojavox_event_types():
    return {"agent.alert": "an agent metric crossed its threshold"}


@hookimpl
def mojavox_event_to_drafts(event):
    if event.type != "agent.alert":
        return None
    data = EventData(event.data)
    user_id = data.text("userId", max_length=128)
    agent_id = data.text("agentId")
    metric = data.text("metric")
    value = data.number("value")
    threshold = data.number("threshold", optional=True)
    details = {"agentId": agent_id, "metric": metric, "value": value}
    message = f"{agent_id}: {metric} is {_number(value)}"
    if threshold is not None:
        details["threshold"] = threshold
        message += f" (threshold {_number(threshold)})"
    return [{
        "userId": user_id, "type": "agent_alert", "title": "Agent Alert",
        "message": message, "priority": "high", "data": details,
        "actionUrl": f"/agents?agent={quote(agent_id, safe='')}",
    }]


def _number(value):
    """12 rather than 12.0; 0.87 as given."""
    return f"{value:g}" if isinstance(value, float) else str(value)
