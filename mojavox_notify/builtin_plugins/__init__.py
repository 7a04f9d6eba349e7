"""The event sources MOJAVOX Notify ships, as plugins like any other (datasette's way: the
default behaviours are themselves plugins). They load unless `plugins.enabled` leaves them out
or `plugins.disabled` names them; a deployment's own plugin of the same name replaces one.
"""

NAMES = ("agent_monitor", "call_service", "campaign_service", "payment_service", "system_monitor")
