"""One exception type per kind of failure; the handlers map them to status codes and JSON."""

from .redaction import shorten

# How much of a client's input (a field name, a query value, a path) a message repeats: enough
# to recognize it, never the 60 KB a client may send (each message is logged too).
ECHO_CHARS = 200
# A validation message past this (one that quotes a client's value at length) is cut.
MESSAGE_CHARS = 1000


class NotifyError(Exception):
    """Base class: carries an HTTP status and a stable machine-readable code."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ValidationError(NotifyError):
    """`field` names what is wrong (it may be a client's own key: it is shown shortened, as a
    message that quotes a client's value is)."""

    status = 400
    code = "invalid_request"

    def __init__(self, field: str, message: str, *, code: str | None = None):
        field = shorten(field, ECHO_CHARS)
        message = shorten(message, MESSAGE_CHARS)
        super().__init__(f"{field}: {message}" if field else message, code=code)
        self.field = field


class AuthenticationError(NotifyError):
    status = 401
    code = "unauthorized"


class ForbiddenError(NotifyError):
    status = 403
    code = "forbidden"


class NotFoundError(NotifyError):
    status = 404
    code = "not_found"


class ConflictError(NotifyError):
    """The request contradicts what is stored (another user's push endpoint, say); `escalation`
    is what an escalation's conflict answers with besides (who took it)."""

    status = 409
    code = "conflict"

    def __init__(self, message: str, *, code: str | None = None,
                 escalation: dict | None = None):
        super().__init__(message, code=code)
        self.escalation = escalation


class PayloadTooLargeError(NotifyError):
    status = 413
    code = "payload_too_large"


class RateLimitedError(NotifyError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


class StorageUnavailableError(NotifyError):
    status = 503
    code = "storage_unavailable"
