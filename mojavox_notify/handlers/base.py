"""The one base handler: body limit, bearer authentication, request rate limit, JSON in and out,
and every error as `{"error": {"code", "message"}}` (never an HTML page or a traceback)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

import tornado.httputil
import tornado.web

from .. import tenants
from ..auth import Principal, TokenVerifier, bearer_token
from ..errors import (ECHO_CHARS, AuthenticationError, ConflictError, ForbiddenError, NotifyError,
                      PayloadTooLargeError, RateLimitedError, StorageUnavailableError,
                      ValidationError)
from ..httpserver import answered, new_request, refuse_body
from ..logs import log_access
from ..wire.input import INT64_MAX, INT64_MIN, parse_json
from ..ratelimit import RateLimiter
from ..redaction import shorten

log = logging.getLogger(__name__)

INTEGER = re.compile(r"-?[0-9]{1,19}")
STATUS_CODES = {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                405: "method_not_allowed", 409: "conflict", 413: "payload_too_large",
                429: "rate_limited", 503: "storage_unavailable"}


class InFlight:
    """The requests being handled, so a stopping server can let them finish before it closes
    storage under them."""

    def __init__(self) -> None:
        self._handlers: set[tornado.web.RequestHandler] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def begin(self, handler: tornado.web.RequestHandler) -> None:
        self._handlers.add(handler)
        self._idle.clear()

    def end(self, handler: tornado.web.RequestHandler) -> None:
        self._handlers.discard(handler)
        if not self._handlers:
            self._idle.set()

    def __len__(self) -> int:
        return len(self._handlers)

    async def drained(self, timeout: float) -> bool:
        """Wait until no request is in flight, at most `timeout` seconds; True if none is."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True



# -- CORS for /api/* ------------------------------------------------------------------------------

CORS_ALLOWED_HEADERS = "Authorization, Content-Type, Idempotency-Key"
CORS_EXPOSED_HEADERS = "Retry-After"
HANDLER_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH")


def implemented_methods(handler_class: type[tornado.web.RequestHandler]) -> list[str]:
    """The methods a handler class answers itself: tornado's own answer to the others is 405."""
    return [method for method in HANDLER_METHODS
            if getattr(handler_class, method.lower()) is not getattr(tornado.web.RequestHandler,
                                                                     method.lower())]


class Cors:
    """Which origins may call /api/* from a browser: `server.allowed_origins` (empty: none but
    the server's own). Tokens travel in `Authorization`, never in cookies, so no credentials
    mode is needed."""

    def __init__(self, allowed_origins: tuple[str, ...], max_age_seconds: int):
        self.allowed_origins = frozenset(origin.rstrip("/") for origin in allowed_origins)
        self.max_age = str(max_age_seconds)

    def applies(self, request: tornado.httputil.HTTPServerRequest) -> str | None:
        """The request's Origin when it is an allowed cross-origin call to /api/*, else None."""
        origin = request.headers.get("Origin")
        if origin is None or not request.path.startswith("/api/"):
            return None
        return origin if origin in self.allowed_origins else None


class CorsHandlerMixin:
    """Answers on /api/* carry CORS headers for allowed origins (errors included, so a page can
    read them), and `OPTIONS` preflights are answered before authentication."""

    cors: Cors | None = None

    def set_cors_headers(self) -> None:
        origin = self.cors.applies(self.request) if self.cors else None
        if origin is None:
            if self.request.path.startswith("/api/"):
                self.set_header("Vary", "Origin")
            return
        self.set_header("Access-Control-Allow-Origin", origin)
        self.set_header("Access-Control-Expose-Headers", CORS_EXPOSED_HEADERS)
        self.set_header("Vary", "Origin")

    def is_preflight(self) -> bool:
        return self.request.method == "OPTIONS"

    def answer_preflight(self) -> None:
        """204 with the allowed methods and headers for an allowed origin; 403 otherwise."""
        if self.cors is None or self.cors.applies(self.request) is None:
            raise ForbiddenError("this origin may not call the API (server.allowed_origins)",
                                 code="origin_not_allowed")
        self.set_header("Access-Control-Allow-Methods", ", ".join(implemented_methods(type(self))))
        self.set_header("Access-Control-Allow-Headers", CORS_ALLOWED_HEADERS)
        self.set_header("Access-Control-Max-Age", self.cors.max_age)
        self.set_status(204)
        self.finish()


# -- the base handler -------------------------------------------------------------------------------

@tornado.web.stream_request_body
class BaseHandler(CorsHandlerMixin, tornado.web.RequestHandler):
    """Subclasses set `public = True` to skip authentication, and read `self.principal`."""

    public = False

    def initialize(self, verifier: TokenVerifier, request_limiter: RateLimiter,
                   auth_failures: RateLimiter, max_body_bytes: int, in_flight: "InFlight",
                   cors: Cors | None = None, **collaborators: Any) -> None:
        self.in_flight = in_flight
        in_flight.begin(self)
        self.verifier = verifier
        self.request_limiter = request_limiter
        self.auth_failures = auth_failures
        self.max_body_bytes = max_body_bytes
        self.cors = cors
        self.principal: Principal | None = None
        self._chunks: list[bytes] = []
        self._body_size = 0
        self._stream = getattr(self.request.connection, "stream", None)
        if self._stream is not None:
            new_request(self._stream)
        for name, value in collaborators.items():
            setattr(self, name, value)
        self.set_cors_headers()

    def set_default_headers(self) -> None:
        # Also called by clear() when an error replaces the answer: errors keep CORS headers.
        self.set_cors_headers()

    async def options(self, *args: Any) -> None:
        self.answer_preflight()

    async def prepare(self) -> None:
        if self.is_preflight():
            return
        declared = self.request.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            self._refuse_body()
            if self.request.headers.get("Expect", "").lower() == "100-continue":
                raise self._too_large()  # the client waits for this before sending the body
        if self.public:
            return
        await self._authenticate()
        await self.request_limiter.acquire([self.principal.key])

    async def _authenticate(self) -> None:
        """Each attempt takes a failure from its address's allowance before the token is
        verified (429 when none is left) and gives it back when the token is good: charged
        after verifying, a burst would all pass the check while verifications wait (for a JWKS
        fetch)."""
        address = self.request.remote_ip or ""
        self.auth_failures.take([address])
        self.principal = await self.verifier.verify(self._bearer_token())
        self.auth_failures.give_back(address)

    def data_received(self, chunk: bytes) -> None:
        # An oversized body is read and discarded, then `json_body` answers 413: answering
        # while the client is still sending would close the connection under it, and a client
        # that does not wait for `100 Continue` would see a reset instead of the 413. tornado
        # stops reading past the drain limit (see httpserver.py), and then answers 413 itself.
        self._body_size += len(chunk)
        if self._body_size > self.max_body_bytes:
            if self._body_size - len(chunk) <= self.max_body_bytes:  # the first chunk past it
                self._chunks.clear()
                self._refuse_body()
            return
        self._chunks.append(chunk)

    def _refuse_body(self) -> None:
        if self._stream is not None:
            refuse_body(self._stream)

    def on_finish(self) -> None:
        self.in_flight.end(self)
        if self._stream is not None:
            answered(self._stream)

    def on_connection_close(self) -> None:
        self.in_flight.end(self)
        super().on_connection_close()

    def _too_large(self) -> PayloadTooLargeError:
        return PayloadTooLargeError(f"the body must be at most {self.max_body_bytes} bytes")

    def _bearer_token(self) -> str:
        token = bearer_token(self.request.headers.get("Authorization", ""))
        if token is None:
            raise AuthenticationError("send the token as 'Authorization: Bearer <JWT>'",
                                      code="token_missing")
        return token

    def json_body(self) -> Any:
        if self._body_size > self.max_body_bytes:
            raise self._too_large()
        body = b"".join(self._chunks)
        if not body.strip():
            raise ValidationError("body", "must be a JSON object")
        return parse_json(body)

    def send_json(self, value: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(value, separators=(",", ":")))

    def query_int(self, name: str, default: int) -> int:
        raw = self.get_query_argument(name, None)
        if raw is None:
            return default
        if not INTEGER.fullmatch(raw) or not INT64_MIN <= int(raw) <= INT64_MAX:
            raise ValidationError(name, f"must be an integer (got {raw[:40]!r})")
        return int(raw)

    def query_bool(self, name: str, default: bool) -> bool:
        raw = self.get_query_argument(name, None)
        if raw is None:
            return default
        if raw.lower() in ("true", "1", "yes"):
            return True
        if raw.lower() in ("false", "0", "no"):
            return False
        raise ValidationError(name, f"must be true or false (got {shorten(raw, ECHO_CHARS)!r})")

    def allowed_methods(self) -> list[str]:
        """What a 405's Allow names: the methods this route implements, and OPTIONS where
        preflights are answered (/api/*)."""
        methods = implemented_methods(type(self))
        if self.request.path.startswith("/api/"):
            methods.append("OPTIONS")
        return methods

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None, None))[1]
        if status_code == 405:  # RFC 9110: a 405 says what the route allows
            self.set_header("Allow", ", ".join(self.allowed_methods()))
        if isinstance(error, NotifyError):
            code, message = error.code, error.message
            if isinstance(error, RateLimitedError):
                self.set_header("Retry-After", str(max(1, round(error.retry_after))))
        elif isinstance(error, tornado.web.HTTPError) and status_code < 500:
            code = STATUS_CODES.get(status_code, "http_error")
            message = (error.log_message % error.args if error.log_message else self._reason)
        else:
            code, message = "internal_error", "the server failed to handle the request"
        self.answered_error = (code, message)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        body: dict[str, Any] = {"error": {"code": code, "message": message}}
        if isinstance(error, ConflictError) and error.escalation is not None:
            body["escalation"] = error.escalation
        self.finish(json.dumps(body, separators=(",", ":")))

    def log_exception(self, typ, value, tb) -> None:
        """An answered error is in the request's access line (`log_request`); only a failure of
        the server itself gets its traceback logged besides."""
        if isinstance(value, NotifyError) and (value.status < 500 or isinstance(value, StorageUnavailableError)):
            return
        if isinstance(value, tornado.web.HTTPError) and value.status_code < 500:
            return
        super().log_exception(typ, value, tb)

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(error, NotifyError):
            status_code = error.status
        super().send_error(status_code, **kwargs)


class NotFoundHandler(BaseHandler):
    """Every unknown path: a JSON 404 instead of tornado's HTML page."""

    public = True

    async def prepare(self) -> None:
        raise tornado.web.HTTPError(404, "no such endpoint: %s",
                                    shorten(self.request.path, ECHO_CHARS))


def log_request(handler: tornado.web.RequestHandler) -> None:
    """The application's access log: one line per request. A socket's line is written when it
    closes (its whole life, with its user and client id), not at the handshake."""
    status = handler.get_status()
    if status == 101:
        return
    principal = getattr(handler, "principal", None)
    log_access(handler.request.method or "-", handler.request.path, status,
               handler.request.request_time(), tenants.shown(principal.key) if principal else None,
               handler.request.remote_ip, getattr(handler, "answered_error", None))
