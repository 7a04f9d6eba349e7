"""Tenants: many call centers on one deployment, each a world of its own.

A user is `(tenant, user id)`. Everything a user owns (notifications, counters, channel settings,
push subscriptions, sockets, presence, rate limits) is keyed by one string, the user's *key*:
the plain user id in the default tenant, so a single-customer deployment and the data of earlier
releases are unchanged, and `<tenant>\\x1f<user id>` in any other. The separator is a control
character, which neither a token's `sub` nor a draft's `userId` may hold, so two users of two
tenants never share a key, and every storage query keyed by it stays inside one tenant by
construction. Topic keys and event ids are qualified the same way.

A caller's *reach* is where it may act: a user and a tenant service act inside their token's
tenant; a platform service (a service token without a `tenant` claim) may name any tenant in a
body, and addresses the default one when it names none.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .errors import ForbiddenError, ValidationError

#: How the default tenant is called on the wire (`tenant` fields, the `connected` frame); its
#: users' keys are their plain ids.
DEFAULT = "default"
#: A broadcast's audience of every tenant (platform maintenance).
EVERYONE = "*"
TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SEPARATOR = "\x1f"
TENANT_RULE = "must be a tenant of 1 to 64 characters: letters, digits, '.', '_' or '-', " \
              "starting with a letter or digit"


def valid_tenant(value: Any) -> bool:
    return isinstance(value, str) and TENANT.fullmatch(value) is not None


def key(tenant: str, name: str) -> str:
    """The key of a user id (or a topic key, an event id) inside `tenant`."""
    return name if tenant == DEFAULT else f"{tenant}{SEPARATOR}{name}"


def split(qualified: str) -> tuple[str, str]:
    """(tenant, name) of a key made by `key`."""
    tenant, separator, name = qualified.partition(SEPARATOR)
    return (tenant, name) if separator else (DEFAULT, qualified)


def name_of(qualified: str) -> str:
    """The user id (or topic key) of a key, as its tenant knows it."""
    return split(qualified)[1]


def tenant_of(qualified: str) -> str:
    return split(qualified)[0]


def shown(qualified: str) -> str:
    """For log lines: `tenant/user` outside the default tenant, else the user id."""
    tenant, name = split(qualified)
    return name if tenant == DEFAULT else f"{tenant}/{name}"


@dataclass(frozen=True, slots=True)
class Reach:
    """Where a caller may act: `tenant`, or any tenant when `platform` (then `tenant` is the one
    it addresses when a body names none: the default)."""

    tenant: str = DEFAULT
    platform: bool = False

    def tenant_named(self, named: Any, field: str = "tenant", everyone: bool = False) -> str:
        """The tenant a body addresses: `named` (its `tenant` field, None when absent) checked
        against this reach. A tenant caller naming another tenant is refused with 403
        `tenant_forbidden`; `everyone` allows a platform caller's `*`."""
        if named is None:
            return self.tenant
        if everyone and named == EVERYONE:
            if not self.platform:
                raise ForbiddenError(f"{field}: only a platform service addresses every tenant",
                                     code="tenant_forbidden")
            return EVERYONE
        if not valid_tenant(named):
            raise ValidationError(field, TENANT_RULE)
        if not self.platform and named != self.tenant:
            raise ForbiddenError(f"{field}: this token acts inside its own tenant only",
                                 code="tenant_forbidden")
        return named


PLATFORM = Reach(platform=True)
