"""tornado's HTTP server, with the answers it makes below the application in the API's error
shape: a malformed request (400), a body past what is drained (413), headers past their limit
(431). tornado writes these itself (a bare status line, or nothing at all for headers) before
any handler exists, so they are rewritten at the connection's stream.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import tornado.httpserver
from tornado.iostream import IOStream, UnsatisfiableReadError

BARE_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\n\r\n"
REASONS = {400: "Bad Request", 413: "Content Too Large", 431: "Request Header Fields Too Large"}
ANSWERS = {
    400: ("invalid_request", "malformed HTTP request"),
    413: ("payload_too_large", "the body is larger than this server accepts"),
    431: ("headers_too_large", "the request's headers are larger than this server accepts"),
}
DRAIN_BYTES = 16 * 1024 * 1024
# What the handler of the stream's current request knows, for the rewriting below.
REFUSAL = "_mojavox_refusal"  # 413 once it has seen the body is too large
ANSWERED = "_mojavox_answered"  # True once it has sent a complete answer


def error_response(status: int, message: str | None = None) -> bytes:
    """A complete HTTP/1.1 answer that closes the connection, with a JSON error body."""
    code, default = ANSWERS[status]
    body = json.dumps({"error": {"code": code, "message": message or default}},
                      separators=(",", ":")).encode()
    head = (f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode() + body


def drain_limit(max_body_bytes: int) -> int:
    """How much of an oversized body is read (and discarded) so the client can read its 413:
    16 MiB, or four times the accepted size if that is more. Past it the connection is closed
    after the 413, and a client still sending may see a reset instead."""
    return max(DRAIN_BYTES, 4 * max_body_bytes)


def new_request(stream: Any) -> None:
    """A request starts on this stream: forget what the previous one told."""
    setattr(stream, REFUSAL, 400)
    setattr(stream, ANSWERED, False)


def refuse_body(stream: Any) -> None:
    """This request's body is too large: if tornado stops reading it, answer 413, not 400."""
    setattr(stream, REFUSAL, 413)


def answered(stream: Any) -> None:
    """This request has its answer (sent before its body was read, e.g. a 401): if tornado then
    finds the body malformed, it must not write a second answer after it."""
    setattr(stream, ANSWERED, True)


class NotifyHTTPServer(tornado.httpserver.HTTPServer):
    def handle_stream(self, stream: IOStream, address: tuple) -> None:
        _rewrite_bare_answers(stream)
        super().handle_stream(stream, address)


def _rewrite_bare_answers(stream: IOStream) -> None:
    write, close, read_until_regex = stream.write, stream.close, stream.read_until_regex
    reading_headers = False  # tornado reads request headers, and nothing else, up to a regex

    def read_headers(regex: bytes, max_bytes: int | None = None) -> Any:
        nonlocal reading_headers
        reading_headers = True
        future = read_until_regex(regex, max_bytes)
        future.add_done_callback(lambda _: _headers_read())
        return future

    def _headers_read() -> None:
        nonlocal reading_headers
        reading_headers = False

    def write_in_json(data: bytes | memoryview) -> Any:
        if len(data) == len(BARE_BAD_REQUEST) and bytes(data) == BARE_BAD_REQUEST:
            data = b"" if getattr(stream, ANSWERED, False) else error_response(getattr(stream, REFUSAL, 400))
        return write(data)

    def close_with_431(exc_info: Any = False) -> None:
        error = exc_info[1] if isinstance(exc_info, tuple) else exc_info
        if (isinstance(error, UnsatisfiableReadError) and reading_headers and not stream.closed()
                and not stream.writing()):
            _send_now(stream.socket, error_response(431))
        close(exc_info=exc_info)

    stream.read_until_regex = read_headers  # type: ignore[method-assign]
    stream.write = write_in_json  # type: ignore[method-assign]
    stream.close = close_with_431  # type: ignore[method-assign]


def _send_now(sock: socket.socket | None, data: bytes) -> None:
    """Best effort: a small answer fits the socket's send buffer; if not, the client only
    sees the connection close, as before."""
    if sock is None:
        return
    try:
        sock.send(data)
    except OSError:
        pass
