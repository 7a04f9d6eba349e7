"""JWT verification: the only place that knows about tokens; handlers only see a `Principal`.

The accepted algorithm is pinned by settings, so `none` and algorithm confusion (an HS256 token
signed with a public key) are refused by construction. `exp` is always required.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

import jwt

from . import tenants
from .errors import AuthenticationError, ForbiddenError
from .jwks import JwksKeys
from .logs import CONTROL_CHARACTERS
from .settings import AuthSettings, Settings, SettingsError

log = logging.getLogger(__name__)

DEV_SECRET_FILE = "jwt-secret"
MAX_USER_ID_LENGTH = 128
# Verified tokens remembered per process (each a few hundred bytes), so a repeat costs no signature check.
VERIFIED_TOKENS = 10_000


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's `sub`, its roles, when the token expires (epoch seconds), and
    its `tenant` claim (None: the default tenant; for a service, a platform service)."""

    user_id: str
    roles: frozenset[str]
    expires_at: float
    tenant: str | None = None

    @property
    def key(self) -> str:
        """The caller as a user: its key inside its tenant (tenants.key)."""
        return tenants.key(self.tenant or tenants.DEFAULT, self.user_id)

    @property
    def reach(self) -> tenants.Reach:
        """Where it may act: its tenant, or any tenant for a service token without one."""
        if self.tenant is None:
            return tenants.PLATFORM if "service" in self.roles else tenants.Reach()
        return tenants.Reach(self.tenant)

    def require(self, role: str) -> None:
        if role not in self.roles:
            raise ForbiddenError(f"this action needs the '{role}' role")


def bearer_token(authorization: str) -> str | None:
    """The token of an `Authorization: Bearer <JWT>` header value, or None."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def hs256_secret(settings: Settings) -> str:
    """The configured HS256 secret, or a development secret kept in the data folder.

    With no `JWT_SECRET`, a random secret is created once under `data_dir` so that the server and
    `mojavox-notify token` agree on it without any setup.
    """
    if settings.auth.secret:
        return settings.auth.secret
    path = settings.data_path / DEV_SECRET_FILE
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    path.touch(mode=0o600)
    path.write_text(secret + "\n", encoding="utf-8")
    log.warning("no JWT_SECRET set: created a development secret in %s", path)
    return secret


def existing_hs256_secret(settings: Settings) -> str:
    """The secret a server with these settings verifies with, for minting tokens: never a new
    one (a token signed with a secret no server knows is refused, which is worse than an error)."""
    if settings.auth.secret:
        return settings.auth.secret
    path = settings.data_path / DEV_SECRET_FILE
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    raise SettingsError("auth.secret", f"is not set (JWT_SECRET) and no server has created a "
                        f"development secret in {path} yet: start the server once with these "
                        "settings, pass the server's --settings, or set JWT_SECRET as it has it")


def mint_token(secret: str, user_id: str, roles: list[str], ttl_seconds: int,
               audience: str | None = None, issuer: str | None = None,
               tenant: str | None = None) -> str:
    """Sign an HS256 token for development, tests and the CLI."""
    now = int(time.time())
    claims = {"sub": user_id, "roles": list(roles), "iat": now, "exp": now + int(ttl_seconds)}
    if tenant:
        claims["tenant"] = tenant
    if audience:
        claims["aud"] = audience
    if issuer:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm="HS256")


class TokenVerifier:
    """Checks a bearer token and turns it into a `Principal`, or raises `AuthenticationError`.
    The key is a static one (a shared secret, a PEM public key) or comes from `jwks`."""

    def __init__(self, auth: AuthSettings, static_key: str | None, jwks: JwksKeys | None = None):
        self._auth = auth
        self._static_key = static_key
        self._jwks = jwks
        # Verified tokens (a socket reconnecting, a dashboard polling with one token): SHA-256 of
        # the token (not the token itself) → (principal, key set), least recently used first.
        # Only successes are kept.
        self._verified: OrderedDict[bytes, tuple[Principal, int]] = OrderedDict()

    async def verify(self, token: str | None) -> Principal:
        if not token:
            raise AuthenticationError("a bearer token is required", code="token_missing")
        digest = hashlib.sha256(token.encode()).digest()
        known = self._verified.get(digest)
        if known is not None:
            principal, key_set = known
            if key_set == self._key_set() and self._keys_fresh() and \
                    principal.expires_at + self._auth.leeway_seconds > time.time():
                self._verified.move_to_end(digest)
                return principal
            del self._verified[digest]  # expired (decoding says so) or signed with an older key set
        principal = await self._decode(token)
        self._verified[digest] = (principal, self._key_set())
        if len(self._verified) > VERIFIED_TOKENS:
            self._verified.popitem(last=False)
        return principal

    def close(self) -> None:
        """Release the JWKS fetches' HTTP client (the application's stop)."""
        if self._jwks is not None:
            self._jwks.close()

    async def _decode(self, token: str) -> Principal:
        key = await self._key_for(token)
        try:
            claims = jwt.decode(
                token, key, algorithms=[self._auth.algorithm],
                audience=self._auth.audience, issuer=self._auth.issuer,
                leeway=self._auth.leeway_seconds,
                options={"require": ["exp", "sub", *(["aud"] if self._auth.audience else [])],
                         "verify_aud": self._auth.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise AuthenticationError("the token has expired", code="token_expired") from None
        except jwt.PyJWTError as error:
            raise AuthenticationError(f"the token is invalid: {error}", code="token_invalid") from None
        if not isinstance(claims["exp"], (int, float)) or isinstance(claims["exp"], bool):
            # PyJWT takes "1796000000" (it checks int(exp)); everything after needs a number.
            raise AuthenticationError("the token's exp must be a number of seconds since the epoch",
                                      code="token_invalid")
        longest = self._auth.max_token_lifetime_seconds
        if longest and claims["exp"] - time.time() > longest + self._auth.leeway_seconds:
            raise AuthenticationError(f"the token is valid for longer than the {longest} s this server "
                                      "accepts (auth.max_token_lifetime_seconds)", code="token_invalid")
        return _principal(claims)

    async def _key_for(self, token: str):
        if self._static_key is not None:
            return self._static_key
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            raise AuthenticationError("the token is malformed", code="token_invalid") from None
        key = await self._jwks.key(kid)
        if key is None:
            raise AuthenticationError("the token's key id is not in the JWKS", code="token_invalid")
        return key

    def _keys_fresh(self) -> bool:
        """A static key always is; a JWKS for `auth.jwks_cache_seconds` after it was fetched."""
        return self._jwks is None or self._jwks.fresh()

    def _key_set(self) -> int:
        return 0 if self._jwks is None else self._jwks.generation


def build_verifier(settings: Settings) -> TokenVerifier:
    """The verifier the settings describe: a shared secret, a PEM public key, or a JWKS URL."""
    auth = settings.auth
    if auth.algorithm == "HS256":
        return TokenVerifier(auth, hs256_secret(settings))
    if auth.public_key:
        return TokenVerifier(auth, auth.public_key)
    if auth.public_key_file:
        path = settings.resolve_path(auth.public_key_file)
        try:
            return TokenVerifier(auth, path.read_text(encoding="utf-8"))
        except OSError as error:
            raise SettingsError("auth.public_key_file", f"cannot read {path}: {error.strerror}") from None
    return TokenVerifier(auth, None, JwksKeys(auth.jwks_url, auth.algorithm, auth.jwks_cache_seconds))


def _principal(claims: dict) -> Principal:
    """The user id and roles are written into log lines: a control character in one (a
    newline) would let a token forge lines, so it is refused."""
    user_id = claims.get("sub")
    if not isinstance(user_id, str) or not 1 <= len(user_id) <= MAX_USER_ID_LENGTH \
            or CONTROL_CHARACTERS.search(user_id):
        raise AuthenticationError("the token's sub must be a user id of 1 to 128 characters "
                                  "without control characters", code="token_invalid")
    roles = claims.get("roles", [])
    if isinstance(roles, str):
        roles = roles.split()
    if not isinstance(roles, list) or not all(isinstance(role, str) for role in roles) \
            or any(CONTROL_CHARACTERS.search(role) for role in roles):
        raise AuthenticationError("the token's roles must be a list of strings without control "
                                  "characters", code="token_invalid")
    tenant = claims.get("tenant")
    if tenant is not None and not tenants.valid_tenant(tenant):
        raise AuthenticationError(f"the token's tenant {tenants.TENANT_RULE}", code="token_invalid")
    # A claim naming the default tenant is kept: such a service is the default tenant's, not a
    # platform service (only a token without the claim is).
    return Principal(user_id=user_id, roles=frozenset(roles), expires_at=float(claims["exp"]),
                     tenant=tenant)
