"""Payment service: a debtor's payment becomes a high-priority notification for the collector."""

from mojavox_notify import NotificationType, hookimpl
from mojavox_notify.eventdata import MAX_AMOUNT, EventData, format_money


@hookimpl
def mojavox_register_types():
    return [NotificationType("payment_received", "high", "A debtor made a payment")]


@hookimpl
def mojavox_event_types():
    return {"payment.received": "a debtor paid on an account"}


@hookimpl
def mojavox_event_to_drafts(event):
    if event.type != "payment.received":
        return None
    data = EventData(event.data)
    user_id = data.text("userId", max_length=128)
    amount = data.number("amount", minimum=0, maximum=MAX_AMOUNT)
    account_id = data.text("accountId")
    debtor = data.text("debtorName")
    currency = data.currency()
    payment_id = data.text("paymentId", optional=True)
    details = {"amount": amount, "accountId": account_id, "debtorName": debtor, "currency": currency}
    if payment_id:
        details["paymentId"] = payment_id
    return [{
        "userId": user_id,
        "type": "payment_received",
        "title": "Payment Received",
        "message": f"{debtor} paid {format_money(amount, currency)} on account #{account_id}",
        "priority": "high",
        "data": details,
        "actionUrl": "/payment-history",
    }]
