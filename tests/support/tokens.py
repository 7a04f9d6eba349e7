"""Who a test acts as: fresh user ids, and HS256 tokens the test apps accept."""

from __future__ import annotations

import time
import uuid
from typing import Any

import jwt

TEST_SECRET = "test-secret-for-mojavox-notify-0123456789"
SERVICE = "test-service"


def new_user(prefix: str = "user") -> str:
    """A user id no other test uses, so tests never need to wipe shared state."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def token(user: str, roles: tuple[str, ...] | list[str] = (), ttl: float | None = 3600,
          secret: str = TEST_SECRET, **claims: Any) -> str:
    """An HS256 token; `ttl=None` leaves out `exp`, extra claims are added as given."""
    now = time.time()
    payload = {"sub": user, "roles": list(roles), "iat": int(now), **claims}
    if ttl is not None:
        payload["exp"] = now + ttl
    return jwt.encode(payload, secret, algorithm="HS256")
