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
import tornado.netutil
from tornado.iostream import IOStream, UnsatisfiableReadError

BARE_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\n\r\n"
REASONS = {400: "Bad Request", 413: "Content Too Large", 431: "Request Header Fields Too Large"}
ANSWERS = {
    400: ("invalid_request", "malformed HTTP request"),
    413: ("payload_too_large", "the body is larger than this server accepts"),
    431: ("headers_too_large", "the request's headers are larger than this server accepts"),
}
DRAIN_BYTES = 16 * 1024 * 1024
#: Connections the kernel queues for a listening socket before the server accepts them. After a
#: worker dies, its sockets' tabs all reconnect at once: with tornado's 128, the SYNs past it
#: were dropped and retried by the clients' kernels after 1, 3, 7, 15, 31 s (measured: tabs
#: still reconnecting a minute after a worker was killed). The kernel caps it at
#: net.core.somaxconn.
LISTEN_BACKLOG = 4096


def error_response(status: int, message: str | None = None) -> bytes:
    """A complete HTTP/1.1 answer that closes the connection, with a JSON error body."""
    code, default = ANSWERS[status]
    body = json.dumps({"error": {"code": code, "message": message or default}},
                      separators=(",", ":")).encode()
    head = (f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode() + body


def listen_sockets(port: int, host: str, reuse_port: bool = False) -> list[socket.socket]:
    """The server's listening sockets, with a backlog for a reconnect storm."""
    return tornado.netutil.bind_sockets(port, host, backlog=LISTEN_BACKLOG, reuse_port=reuse_port)


def drain_limit(max_body_bytes: int) -> int:
    """How much of an oversized body is read (and discarded) so the client can read its 413:
    16 MiB, or four times the accepted size if that is more. Past it the connection is closed
    after the 413, and a client still sending may see a reset instead."""
    return max(DRAIN_BYTES, 4 * max_body_bytes)


# What the handler of a stream's current request tells the rewriting below. Streams not served
# by NotifyHTTPServer (none in the app; a test may build one) are left alone.

def new_request(stream: Any) -> None:
    """A request starts on this stream: forget what the previous one told."""
    if isinstance(stream, JsonAnswersStream):
        stream.__dict__.pop("refusal", None)
        stream.__dict__.pop("answered", None)


def refuse_body(stream: Any) -> None:
    """This request's body is too large: if tornado stops reading it, answer 413, not 400."""
    if isinstance(stream, JsonAnswersStream):
        stream.refusal = 413


def answered(stream: Any) -> None:
    """This request has its answer (sent before its body was read, e.g. a 401): if tornado then
    finds the body malformed, it must not write a second answer after it."""
    if isinstance(stream, JsonAnswersStream):
        stream.answered = True


class NotifyHTTPServer(tornado.httpserver.HTTPServer):
    def handle_stream(self, stream: IOStream, address: tuple) -> None:
        # tornado builds every connection's IOStream itself; the subclass below only adds
        # behaviour (no state of its own until needed), so the stream is switched to it in place
        # rather than wrapping its methods in closures kept for the connection's whole life.
        stream.__class__ = JsonAnswersStream
        super().handle_stream(stream, address)


class JsonAnswersStream(IOStream):
    """An IOStream whose bare answers from tornado are rewritten in the API's error shape."""

    refusal = 400  # 413 once the handler has seen the body is too large
    answered = False  # True once the handler has sent a complete answer
    _reading_headers = False  # tornado reads request headers, and nothing else, up to a regex

    def read_until_regex(self, regex: bytes, max_bytes: int | None = None) -> Any:
        self._reading_headers = True
        future = super().read_until_regex(regex, max_bytes)
        future.add_done_callback(self._headers_read)
        return future

    def _headers_read(self, future: Any) -> None:
        self._reading_headers = False

    def write(self, data: bytes | memoryview) -> Any:
        if len(data) == len(BARE_BAD_REQUEST) and bytes(data) == BARE_BAD_REQUEST:
            data = b"" if self.answered else error_response(self.refusal)
        return super().write(data)

    def write_now(self, data: bytes) -> Any:
        """`write`, but straight to the socket while nothing of this stream's waits to be sent
        (the usual case for a dashboard socket), skipping tornado's buffer, future and callback;
        what the kernel does not take goes through `write`. None when all of it was sent."""
        if not self.writing() and not self.closed():
            try:
                sent = self.socket.send(data)
            except OSError:  # would block, or broken: `write` meets it and closes its own way
                sent = 0
            if sent == len(data):
                return None
            data = data[sent:]
        return self.write(data)

    def close(self, exc_info: Any = False) -> None:
        error = exc_info[1] if isinstance(exc_info, tuple) else exc_info
        if (isinstance(error, UnsatisfiableReadError) and self._reading_headers
                and not self.closed() and not self.writing()):
            _send_now(self.socket, error_response(431))
        super().close(exc_info=exc_info)


def _send_now(sock: socket.socket | None, data: bytes) -> None:
    """Best effort: a small answer fits the socket's send buffer; if not, the client only
    sees the connection close, as before."""
    if sock is None:
        return
    try:
        sock.send(data)
    except OSError:
        pass
