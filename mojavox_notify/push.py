"""Web Push (RFC 8030/8291/8292): what a push says, and sending one.

`PushSender.send` encrypts a payload for one browser subscription (aes128gcm with the
subscription's p256dh key and auth secret), signs a VAPID JWT for the push service's origin,
and posts it with an async HTTP client of push's own (`push_http_client`: its own connections,
so push services that stall never hold up JWKS fetches, and a resolver that connects only to
public addresses, see `push_addresses.py`). Where a push may go is `push_addresses.py`'s; what
to do with the answer (retry, forget the subscription) is the worker's (`push_worker.py`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.utils
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import urlparse

import py_vapid
import pywebpush
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.netutil import Resolver

from .push_addresses import AddressRefused, PublicResolver
from .settings import PushSettings, SettingsError

log = logging.getLogger(__name__)

MAX_PAYLOAD_BYTES = 3072
# How long the push service keeps an undelivered push, and how urgently it wakes a device.
TTL_SECONDS = {"low": 86400, "medium": 86400, "high": 4 * 3600, "critical": 3600}
URGENCY = {"low": "low", "medium": "normal", "high": "high", "critical": "high"}
VAPID_LIFETIME_SECONDS = 12 * 3600  # RFC 8292: at most 24 hours
SEND_TIMEOUT_SECONDS = 10
#: RFC 8030 5.4: a Topic is at most 32 characters of the URL-safe base64 alphabet.
TOPIC = re.compile(r"[A-Za-z0-9_-]{1,32}")
#: An escalation in these states needs nobody any more: its push replaces the one on screen.
SETTLED = ("acknowledged", "resolved")


def push_topic(notification: Mapping[str, Any]) -> str | None:
    """The Web Push `Topic` of a notification's pushes: its escalation's id (24 hex digits),
    so that a newer push of the escalation (taken, resolved) replaces one the push service
    still holds for an offline browser. None for other notifications."""
    escalation = notification.get("escalation")
    if escalation is None or not TOPIC.fullmatch(str(escalation["id"])):
        return None
    return str(escalation["id"])


def settled_title(escalation: Mapping[str, Any]) -> str:
    """What replaces an escalation's notification once someone has it."""
    if escalation["state"] == "resolved":
        return f"Resolved: {escalation['resolution']}" if escalation.get("resolution") else "Resolved"
    return f"Taken by {escalation['acknowledgedBy']}" if escalation.get("acknowledgedBy") else "Taken"


def push_payload(notification: Mapping[str, Any], mode: str, icon: str | None) -> str:
    """The JSON a service worker receives: the seed's `{title, body, icon, tag, data}`, or with
    `minimal` only `{id, type, priority}` so no debtor data passes through a third-party push
    service. At most 3 KB: the body is shortened first, then a long `actionUrl` is left out
    (the service worker can fetch it by id), then the icon, and the title last.

    A notification of an escalation carries `escalation: {id, state}` beside its id (in `data`
    when full) and is tagged `escalation-<id>`; once the escalation is taken or resolved, the
    full payload says so instead ("Taken by bob", "Resolved: call ended", the notification's
    title as the body): the service worker closes what that tag shows and puts this quietly in
    its place."""
    reference = {"id": notification["id"], "type": notification["type"],
                 "priority": notification["priority"]}
    escalation = notification.get("escalation")
    if escalation is not None:
        reference["escalation"] = {"id": escalation["id"], "state": escalation["state"]}
    if mode == "minimal":
        return _compact(reference)
    payload = {"title": notification["title"], "body": notification["message"],
               "tag": f"mojavox-{notification['id']}", "data": dict(reference)}
    if escalation is not None:
        payload["tag"] = f"escalation-{escalation['id']}"
        if escalation["state"] in SETTLED:
            payload["title"], payload["body"] = settled_title(escalation), notification["title"]
    if icon:
        payload["icon"] = icon
    if notification.get("actionUrl") and (escalation is None or escalation["state"] not in SETTLED):
        payload["data"]["actionUrl"] = notification["actionUrl"]
    text = _compact(payload)
    for shorten in (_shorten_body, _drop_action_url, _drop_icon, _shorten_title):
        while (overflow := len(text.encode()) - MAX_PAYLOAD_BYTES) > 0 and shorten(payload, overflow):
            text = _compact(payload)
    return text


def _compact(payload: dict) -> str:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def _shortened(text: str, overflow: int) -> str:
    """`text` cut by at least `overflow` bytes of its UTF-8 form, with an ellipsis if cut."""
    encoded = text.encode()
    keep = len(encoded) - overflow - len("…".encode())
    return encoded[:keep].decode(errors="ignore") + "…" if keep > 0 else ""


# Each way of making a payload smaller says whether it could.

def _shorten_body(payload: dict, overflow: int) -> bool:
    before, payload["body"] = payload["body"], _shortened(payload["body"], overflow)
    return payload["body"] != before


def _drop_action_url(payload: dict, overflow: int) -> bool:
    return payload["data"].pop("actionUrl", None) is not None


def _shorten_title(payload: dict, overflow: int) -> bool:
    before, payload["title"] = payload["title"], _shortened(payload["title"], overflow)
    return payload["title"] != before


def _drop_icon(payload: dict, overflow: int) -> bool:
    return payload.pop("icon", None) is not None


@dataclass(frozen=True)
class PushOutcome:
    """One send's result: delivered, gone (forget the subscription), retry (after
    `retry_after` seconds, when the service said), or failed for good."""

    kind: str  # "delivered" | "gone" | "retry" | "failed"
    status: int | None = None
    retry_after: float | None = None
    detail: str = ""


def push_http_client(settings: PushSettings, resolver: Resolver | None = None) -> AsyncHTTPClient:
    """An HTTP client for pushes alone: `push.concurrency` connections at most (more requests
    wait their turn inside it), resolving through `PublicResolver` over `resolver`."""
    public = PublicResolver(allowed_insecure_hosts=settings.allowed_insecure_hosts, resolver=resolver)
    return AsyncHTTPClient(force_instance=True, max_clients=settings.concurrency, resolver=public)


class PushSender:
    def __init__(self, settings: PushSettings, vapid: py_vapid.Vapid02, http: AsyncHTTPClient):
        """`vapid` from `load_vapid_key`; `http` from `push_http_client`, closed by `close()`."""
        self._settings = settings
        self._vapid = vapid
        self._http = http

    @property
    def public_key(self) -> str:
        return self._settings.vapid_public_key

    def close(self) -> None:
        self._http.close()

    async def send(self, subscription: Mapping[str, Any], payload: str, priority: str,
                   topic: str | None = None) -> PushOutcome:
        """`topic` (see `push_topic`) goes out as the `Topic` header when it is a valid one."""
        endpoint = subscription["endpoint"]
        try:
            body = pywebpush.WebPusher({"endpoint": endpoint, "keys": subscription["keys"]}).encode(
                payload.encode(), "aes128gcm")["body"]
        except (pywebpush.WebPushException, ValueError, binascii.Error) as error:
            return PushOutcome("failed", detail=f"cannot encrypt for this subscription: {error}")
        parsed = urlparse(endpoint)
        claims = {"aud": f"{parsed.scheme}://{parsed.netloc}",
                  "exp": int(time.time()) + VAPID_LIFETIME_SECONDS,
                  "sub": self._settings.vapid_subject}
        headers = {**self._vapid.sign(claims), "Content-Encoding": "aes128gcm",
                   "Content-Type": "application/octet-stream",
                   "TTL": str(TTL_SECONDS[priority]), "Urgency": URGENCY[priority]}
        if topic is not None and TOPIC.fullmatch(topic):
            headers["Topic"] = topic
        request = HTTPRequest(endpoint, method="POST", headers=headers, body=body,
                              request_timeout=SEND_TIMEOUT_SECONDS, follow_redirects=False)
        try:
            response = await self._http.fetch(request, raise_error=False)
        except AddressRefused as error:
            return PushOutcome("failed", detail=str(error))
        except (OSError, HTTPClientError, asyncio.TimeoutError) as error:
            return PushOutcome("retry", detail=f"cannot reach the push service: {error}")
        status = response.code
        if status in (200, 201, 202):
            return PushOutcome("delivered", status)
        if status in (404, 410):
            return PushOutcome("gone", status)
        if status == 429 or status >= 500 or status == 599:
            return PushOutcome("retry", status, _retry_after(response.headers.get("Retry-After")),
                               detail=(response.body or b"")[:200].decode(errors="replace"))
        return PushOutcome("failed", status, detail=(response.body or b"")[:200].decode(errors="replace"))


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: a number of seconds or an HTTP date."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


def load_vapid_key(settings: PushSettings) -> py_vapid.Vapid02:
    """The VAPID signing key from `VAPID_PRIVATE_KEY` (base64url, raw 32-byte P-256 scalar, as
    `mojavox-notify vapid-keys` prints it); it must match `VAPID_PUBLIC_KEY`."""
    try:
        vapid = py_vapid.Vapid02.from_raw(settings.vapid_private_key.encode())
    except (ValueError, binascii.Error, TypeError) as error:
        raise SettingsError("push.vapid_private_key", "must be a base64url raw P-256 private "
                            f"key as `mojavox-notify vapid-keys` prints it ({error})") from None
    if _public_key_text(vapid.public_key) != settings.vapid_public_key.rstrip("="):
        raise SettingsError("push.vapid_public_key", "does not belong to push.vapid_private_key "
                            "(VAPID_PUBLIC_KEY and VAPID_PRIVATE_KEY must be one pair)")
    return vapid


def new_vapid_pair() -> tuple[str, str]:
    """A fresh VAPID key pair in the web-push convention: (public, private), base64url of the
    uncompressed P-256 point and of the raw 32-byte private scalar."""
    key = ec.generate_private_key(ec.SECP256R1())
    return _public_key_text(key.public_key()), b64url(key.private_numbers().private_value.to_bytes(32, "big"))


def _public_key_text(public_key: ec.EllipticCurvePublicKey) -> str:
    return b64url(public_key.public_bytes(serialization.Encoding.X962,
                                          serialization.PublicFormat.UncompressedPoint))


def b64url(raw: bytes) -> str:
    """Unpadded base64url, the encoding of every key in web push."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
