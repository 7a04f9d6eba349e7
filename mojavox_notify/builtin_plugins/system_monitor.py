"""System monitor: a system warning or error for a list of users, prioritized by severity."""

from mojavox_notify import NotificationType, hookimpl
from mojavox_notify.eventdata import EventData

PRIORITY_OF_SEVERITY = {"info": "low", "warning": "medium", "error": "high", "critical": "critical"}


@hookimpl
def mojavox_register_types():
    return [NotificationType("system_alert", "medium", "A system warning or error")]


@hookimpl
def mojavox_event_types():
    return {"system.alert": "a system warning or error for a list of users"}


@hookimpl
def mojavox_event_to_drafts(event):
    if event.type != "system.alert":
        return None
    data = EventData(event.data)
    user_ids = data.text_list("userIds")
    severity = data.choice("severity", PRIORITY_OF_SEVERITY)
    message = data.text("message", max_length=2000)
    title = data.text("title", optional=True, max_length=255) or "System Alert"
    shared = {"type": "system_alert", "title": title, "message": message,
              "priority": PRIORITY_OF_SEVERITY[severity], "data": {"severity": severity},
              "actionUrl": "/system-status"}
    # one set of field objects for every recipient: the service checks them once
    return [{"userId": user_id, **shared} for user_id in user_ids]
