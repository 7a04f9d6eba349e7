"""Campaign service: a campaign reached a share of its target."""

from urllib.parse import quote

from mojavox_notify import NotificationType, hookimpl
from mojavox_notify.eventdata import EventData


@hookimpl
def mojavox_register_types():
    return [NotificationType("campaign_milestone", "medium", "A campaign reached a target percentage")]


@hookimpl
def mojavox_event_types():
    return {"campaign.milestone": "a campaign reached a percentage of its target"}


@hookimpl
def mojavox_event_to_drafts(event):
    if event.type != "campaign.milestone":
        return None
    data = EventData(event.data)
    user_id = data.text("userId", max_length=128)
    campaign_id = data.text("campaignId")
    name = data.text("campaignName")
    percent = data.number("percent", minimum=0, maximum=1000)
    return [{
        "userId": user_id, "type": "campaign_milestone", "title": "Campaign Milestone",
        "message": f"{name} reached {percent:g}% of its target",
        "priority": "medium",
        "data": {"campaignId": campaign_id, "campaignName": name, "percent": percent},
        "actionUrl": f"/campaigns?campaign={quote(campaign_id, safe='')}",
    }]
