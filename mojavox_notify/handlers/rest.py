"""The REST API under /api/notifications: a user's own notifications, settings and push
subscriptions (each user inside their token's tenant: `Principal.key`); services create
notifications directly, inside their reach. Under /api/broadcasts: announcements to every user
of a tenant, or of every tenant."""

from __future__ import annotations

from ..service import NotificationService
from .base import BaseHandler


class NotificationsHandler(BaseHandler):
    service: NotificationService

    async def get(self) -> None:
        user_id = self.principal.key
        page = await self.service.list(
            user_id,
            limit=self.query_int("limit", 50),
            offset=self.query_int("offset", 0),
            unread_only=self.query_bool("unreadOnly", False),
        )
        page["unreadCount"] = (await self.service.unread(user_id))["count"]
        self.send_json(page)

    async def post(self) -> None:
        self.principal.require("service")
        key = self.request.headers.get("Idempotency-Key")
        if key is None:
            notification = await self.service.create(self.json_body(), self.principal.reach)
        else:
            notification, replayed = await self.service.create_once(
                self.json_body(), self.principal.key, key, self.principal.reach)
            if replayed:
                self.set_header("Idempotent-Replayed", "true")
        if notification is None:
            self.send_json({"notification": None, "muted": True}, status=202)
        elif "topic" in notification:  # one per member: {"topic", "created", "muted"}
            self.send_json(notification, status=202)
        else:
            self.send_json(notification, status=201)


class UnreadCountHandler(BaseHandler):
    service: NotificationService

    async def get(self) -> None:
        self.send_json(await self.service.unread(self.principal.key))


class MarkReadHandler(BaseHandler):
    service: NotificationService

    async def post(self, notification_id: str) -> None:
        await self.service.mark_read(self.principal.key, notification_id)
        self.send_json({"success": True})


class MarkAllReadHandler(BaseHandler):
    service: NotificationService

    async def post(self) -> None:
        await self.service.mark_all_read(self.principal.key)
        self.send_json({"success": True})


class NotificationHandler(BaseHandler):
    service: NotificationService

    async def get(self, notification_id: str) -> None:
        self.send_json(await self.service.get(self.principal.key, notification_id))

    async def delete(self, notification_id: str) -> None:
        await self.service.delete(self.principal.key, notification_id)
        self.send_json({"success": True})


class SettingsHandler(BaseHandler):
    service: NotificationService

    async def get(self) -> None:
        self.send_json(await self.service.preferences(self.principal.key))

    async def put(self) -> None:
        self.send_json(await self.service.update_preferences(self.principal.key, self.json_body()))


class PushSubscriptionHandler(BaseHandler):
    service: NotificationService

    async def post(self) -> None:
        await self.service.save_push_subscription(self.principal.key, self.json_body())
        self.send_json({"success": True})

    async def delete(self) -> None:
        await self.service.remove_push_subscription(self.principal.key, self.json_body())
        self.send_json({"success": True})


class BroadcastsHandler(BaseHandler):
    service: NotificationService

    async def get(self) -> None:
        tenant = self.principal.reach.tenant_named(self.get_query_argument("tenant", None))
        self.send_json({"broadcasts": await self.service.active_broadcasts(tenant)})

    async def post(self) -> None:
        self.principal.require("service")
        self.send_json(await self.service.broadcast(self.json_body(), self.principal.reach),
                       status=201)


class VapidPublicKeyHandler(BaseHandler):
    """The application server key browsers need for `pushManager.subscribe`."""

    public = True
    vapid_public_key: str | None

    async def get(self) -> None:
        if not self.vapid_public_key:
            self.send_json({"error": {"code": "push_not_configured",
                                      "message": "web push is not configured (VAPID_PUBLIC_KEY)"}},
                           status=404)
            return
        self.send_json({"publicKey": self.vapid_public_key})
