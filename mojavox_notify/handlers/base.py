"""The one base handler: body limit, bearer authentication, request rate limit, JSON in and out,
and every error as `{"error": {"code", "message"}}` (never an HTML page or a traceback)."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import tornado.web
from tornado.log import access_log

from ..auth import Principal, TokenVerifier, bearer_token
from ..errors import (AuthenticationError, NotifyError, PayloadTooLargeError, RateLimitedError,
                      StorageUnavailableError, ValidationError)
from ..ratelimit import RateLimiter

log = logging.getLogger(__name__)

STATUS_CODES = {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                405: "method_not_allowed", 413: "payload_too_large", 429: "rate_limited",
                503: "storage_unavailable"}


@tornado.web.stream_request_body
class BaseHandler(tornado.web.RequestHandler):
    """Subclasses set `public = True` to skip authentication, and read `self.principal`."""

    public = False

    def initialize(self, verifier: TokenVerifier, request_limiter: RateLimiter,
                   max_body_bytes: int, **collaborators: Any) -> None:
        self.verifier = verifier
        self.request_limiter = request_limiter
        self.max_body_bytes = max_body_bytes
        self.principal: Principal | None = None
        self._chunks: list[bytes] = []
        self._body_size = 0
        for name, value in collaborators.items():
            setattr(self, name, value)

    async def prepare(self) -> None:
        declared = self.request.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise PayloadTooLargeError(f"the body must be at most {self.max_body_bytes} bytes")
        if self.public:
            return
        self.principal = await self.verifier.verify(self._bearer_token())
        await self.request_limiter.acquire([self.principal.user_id])

    def data_received(self, chunk: bytes) -> None:
        # A body without Content-Length is only measured here. Raising would drop the connection
        # with no response, so the excess is discarded and `json_body` answers 413.
        self._body_size += len(chunk)
        if self._body_size > self.max_body_bytes:
            self._chunks.clear()
            return
        self._chunks.append(chunk)

    def _bearer_token(self) -> str:
        token = bearer_token(self.request.headers.get("Authorization", ""))
        if token is None:
            raise AuthenticationError("send the token as 'Authorization: Bearer <JWT>'",
                                      code="token_missing")
        return token

    def json_body(self) -> Any:
        if self._body_size > self.max_body_bytes:
            raise PayloadTooLargeError(f"the body must be at most {self.max_body_bytes} bytes")
        body = b"".join(self._chunks)
        if not body.strip():
            raise ValidationError("body", "must be a JSON object")
        try:
            return json.loads(body)
        except (UnicodeDecodeError, ValueError):
            raise ValidationError("body", "is not valid JSON") from None

    def send_json(self, value: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(value, separators=(",", ":")))

    def query_int(self, name: str, default: int) -> int:
        raw = self.get_query_argument(name, None)
        if raw is None:
            return default
        try:
            return int(raw)
        except ValueError:
            raise ValidationError(name, f"must be an integer (got {raw!r})") from None

    def query_bool(self, name: str, default: bool) -> bool:
        raw = self.get_query_argument(name, None)
        if raw is None:
            return default
        if raw.lower() in ("true", "1", "yes"):
            return True
        if raw.lower() in ("false", "0", "no"):
            return False
        raise ValidationError(name, f"must be true or false (got {raw!r})")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(error, NotifyError):
            code, message = error.code, error.message
            if isinstance(error, RateLimitedError):
                self.set_header("Retry-After", str(max(1, round(error.retry_after))))
        elif isinstance(error, tornado.web.HTTPError) and status_code < 500:
            code = STATUS_CODES.get(status_code, "http_error")
            message = (error.log_message % error.args if error.log_message else self._reason)
        else:
            code, message = "internal_error", "the server failed to handle the request"
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps({"error": {"code": code, "message": message}}, separators=(",", ":")))

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, StorageUnavailableError):
            log.warning("%s %s -> 503 %s", self.request.method, self.request.path, value.message)
            return
        if isinstance(value, NotifyError) and value.status < 500:
            log.info("%s %s -> %s %s", self.request.method, self.request.path, value.status, value.message)
            return
        super().log_exception(typ, value, tb)

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(error, NotifyError):
            status_code = error.status
        super().send_error(status_code, **kwargs)


TOKEN_IN_QUERY = re.compile(r"([?&](?:token|access_token)=)[^&]*")


def log_request(handler: tornado.web.RequestHandler) -> None:
    """tornado's access log line, with a `?token=` JWT replaced so logs never hold credentials."""
    status = handler.get_status()
    method = access_log.info if status < 400 else access_log.warning if status < 500 else access_log.error
    uri = TOKEN_IN_QUERY.sub(r"\1[redacted]", handler.request.uri or "")
    method("%d %s %s (%s) %.2fms", status, handler.request.method, uri,
           handler.request.remote_ip, 1000.0 * handler.request.request_time())


class NotFoundHandler(BaseHandler):
    """Every unknown path: a JSON 404 instead of tornado's HTML page."""

    public = True

    async def prepare(self) -> None:
        raise tornado.web.HTTPError(404, "no such endpoint: %s", self.request.path)
