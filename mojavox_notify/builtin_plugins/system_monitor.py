"""System monitor: a system warning or error for a list of users, or for every member of a
topic, prioritized by severity."""

from mojavox_notify import NotificationType, hookimpl
from mojavox_notify.errors import ValidationError
from mojavox_notify.eventdata import EventData

PRIORITY_OF_SEVERITY = {"info": "low", "warning": "medium", "error": "high", "critical": "critical"}


@hookimpl
def mojavox_register_types():
    return [NotificationType("system_alert", "medium", "A system warning or error")]


@hookimpl
def mojavox_event_types():
    return {"system.alert": "a system warning or error for a list of users (userIds), or for "
                            "every member of a topic (topic)"}


@hookimpl
def mojavox_event_to_drafts(event):
    if event.type != "system.alert":
        return None
    data = EventData(event.data)
    topic = data.text("topic", optional=True, max_length=128)
    if topic is not None and "userIds" in event.data:
        raise ValidationError("data.topic", "an alert goes to userIds or to a topic, not both")
    user_ids = None if topic is not None else data.text_list("userIds")
    severity = data.choice("severity", PRIORITY_OF_SEVERITY)
    message = data.text("message", max_length=2000)
    title = data.text("title", optional=True, max_length=255) or "System Alert"
    shared = {"type": "system_alert", "title": title, "message": message,
              "priority": PRIORITY_OF_SEVERITY[severity], "data": {"severity": severity},
              "actionUrl": "/system-status"}
    if topic is not None:  # the service expands it to one notification per member
        return [{"topic": topic, **shared}]
    # one set of field objects for every recipient: the service checks them once
    return [{"userId": user_id, **shared} for user_id in user_ids]
