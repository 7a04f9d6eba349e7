"""A browser's push subscription, as it registers (`PushSubscription.toJSON()`) and leaves."""

from __future__ import annotations

import re
from typing import Any, Mapping
from urllib.parse import urlparse

from ..errors import ValidationError
from ..model import PushSubscription
from .schema import Checker, object_schema

BASE64URL = {"type": "string", "pattern": "^[A-Za-z0-9_-]+={0,2}$", "maxLength": 256,
             "x-error": "must be a base64url string"}


PUSH_SUBSCRIPTION = {
    "type": "object", "required": ["endpoint", "keys"],
    "description": "The browser's PushSubscription.toJSON()",
    "properties": {
        "endpoint": {"type": "string", "maxLength": 2048, "format": "uri",
                     "x-error": "must be an https URL of at most 2048 characters from the "
                                "browser's push service"},
        "expirationTime": {"type": ["number", "null"]},
        "keys": {"type": "object", "required": ["p256dh", "auth"],
                 "x-error": "must be an object with p256dh and auth",
                 "properties": {"p256dh": BASE64URL, "auth": BASE64URL}},
    },
}


ENDPOINT = {"type": "object", "required": ["endpoint"],
            "properties": {"endpoint": {"type": "string", "maxLength": 2048,
                                        "x-error": "must be the subscription's endpoint URL"}}}


VAPID_KEY = object_schema({"publicKey": {"type": "string"}})


_SUBSCRIPTION_CHECK = Checker(PUSH_SUBSCRIPTION)
_ENDPOINT_CHECK = Checker(ENDPOINT)
BASE64URL_TEXT = re.compile(r"^[A-Za-z0-9_-]+={0,2}$")


def check_push_subscription(raw: Any) -> PushSubscription:
    """A browser's PushSubscription JSON: an https endpoint and its two base64url keys."""
    _SUBSCRIPTION_CHECK.check(raw)
    if not isinstance(raw, Mapping):
        raise ValidationError("body", "must be a JSON object")
    endpoint = raw.get("endpoint")
    if not isinstance(endpoint, str) or len(endpoint) > 2048:
        raise ValidationError("endpoint", "must be a URL of at most 2048 characters")
    parsed = urlparse(endpoint)
    if parsed.scheme not in ("https", "http") or not parsed.hostname:
        raise ValidationError("endpoint", "must be an https URL from the browser's push service")
    keys = raw.get("keys")
    if not isinstance(keys, Mapping):
        raise ValidationError("keys", "must be an object with p256dh and auth")
    for name in ("p256dh", "auth"):
        value = keys.get(name)
        if not isinstance(value, str) or not BASE64URL_TEXT.match(value) or len(value) > 256:
            raise ValidationError(f"keys.{name}", "must be a base64url string")
    return PushSubscription(endpoint=endpoint, p256dh=keys["p256dh"], auth=keys["auth"])


def check_endpoint_body(raw: Any) -> str:
    """`{"endpoint"}` of the subscription to forget."""
    _ENDPOINT_CHECK.check(raw)
    if not isinstance(raw, Mapping) or not isinstance(raw.get("endpoint"), str):
        raise ValidationError("endpoint", "must be the subscription's endpoint URL")
    return raw["endpoint"]
