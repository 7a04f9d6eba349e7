"""Frames to dashboard sockets, written as WebSocket frames straight to each connection's stream.

It knows streams, bytes and the event loop's turns, and nothing of sessions or users: an
`Outbox` is given its stream, the counter of frames sent, and a `Peer`: what it tells when its
client stops reading and when it is time to close.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import socket
import struct
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable, Protocol

import orjson
from tornado.iostream import IOStream, StreamClosedError

from ..wire.broadcast import MAX_ACTIVE
from ..httpserver import JsonAnswersStream

log = logging.getLogger(__name__)


class Counter(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class Peer(Protocol):
    """What an outbox needs of its connection (the tornado handler; a test's stand-in)."""

    def close(self, code: int, reason: str) -> None:
        """Close the connection with a WebSocket close code."""

    def slow_consumer(self, frames: int, size: int) -> None:
        """Its client stopped reading: `frames` frames of `size` bytes wait (now dropped)."""


class Outbox:
    """Frames to one socket.

    Frames put during one turn of the event loop leave in one write (an alert's `notification`
    and `unread_count`: one system call), with no task per frame (tornado's `write_message`
    makes one) and nothing per socket while idle. Behind a write the kernel has not taken in
    full, frames wait here, bounded: a client that stops reading is dropped (its peer is told)
    instead of growing this process's memory."""

    __slots__ = ("_stream", "_frames_sent", "_peer", "_pending", "_pending_bytes",
                 "_max_messages", "_max_bytes", "_blocked", "_scheduled", "_dropped",
                 "closing_code", "_closing_reason")

    def __init__(self, stream: IOStream, frames_sent: Counter, peer: Peer, max_messages: int,
                 max_bytes: int):
        self._stream = stream
        self._frames_sent = frames_sent
        self._peer = peer
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._blocked = False
        self._scheduled = False
        self._dropped = False
        self.closing_code: int | None = None
        self._closing_reason = ""

    def put(self, frame: dict[str, Any]) -> None:
        if self.closing_code is None and not self._dropped:
            self.put_encoded(websocket_frame(encode_frame(frame)))

    def put_encoded(self, data: bytes) -> None:
        """A complete WebSocket frame, e.g. one encoded once for many sockets."""
        if self.closing_code is not None or self._dropped:
            return
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._blocked:
            if len(self._pending) > self._max_messages or self._pending_bytes > self._max_bytes:
                frames, size = len(self._pending), self._pending_bytes
                self._drop()
                self._peer.slow_consumer(frames, size)
            return
        if not self._scheduled:
            self._scheduled = True
            _flushes_of(asyncio.get_running_loop()).add(self)

    def idle(self) -> bool:
        """Nothing queued, scheduled or blocked: a frame may go straight to the socket."""
        return not (self._pending or self._scheduled or self._blocked or self._dropped
                    or self.closing_code is not None)

    def direct_target(self) -> socket.socket | None:
        """The OS socket, when a frame may be written to it right now from anywhere (nothing
        queued or in flight); else None."""
        stream = self._stream
        if not self.idle() or stream.closed() or stream.writing():
            return None
        return stream.socket

    def sent_directly(self, data: bytes, sent: int) -> None:
        """`data` went straight to the socket (see `deliver_to_all`), `sent` bytes of it; the rest
        waits here like any frame."""
        if sent:
            self._frames_sent.inc()
        if sent < len(data):
            self.put_encoded(data[sent:])

    def flush(self) -> None:
        self._scheduled = False
        if self._dropped or self._blocked:
            return
        if self._pending:
            self._write()
        if not self._blocked and self.closing_code is not None:
            self._peer.close(self.closing_code, self._closing_reason)

    def _write(self) -> None:
        data, count = b"".join(self._pending), len(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        stream = self._stream
        try:
            written = (stream.write_now(data) if isinstance(stream, JsonAnswersStream)
                       else stream.write(data))
        except StreamClosedError:
            self._drop()
            return
        self._frames_sent.inc(count)
        if written is None:  # all of it is with the kernel
            return
        if stream.writing():  # the kernel took only part of it
            self._blocked = True
            written.add_done_callback(self._drained)
        else:
            written.add_done_callback(_consume_outcome)

    def _drained(self, written: asyncio.Future) -> None:
        self._blocked = False
        if written.cancelled() or written.exception() is not None:
            self._drop()
            return
        self.flush()

    def _drop(self) -> None:
        self._dropped = True
        self._pending.clear()
        self._pending_bytes = 0

    def close_after_flush(self, code: int, reason: str) -> None:
        """Send what is queued, then close (graceful shutdown)."""
        self.closing_code = code
        self._closing_reason = reason
        if not self._blocked and not self._scheduled:
            self.flush()

    def cancel(self) -> None:
        self._drop()


def _consume_outcome(written: asyncio.Future) -> None:
    """A write that was already flushed: collect its outcome so none is left unretrieved."""
    if not written.cancelled():
        written.exception()


class _Flushes:
    """The outboxes that got frames during this turn of the event loop, flushed together by one
    callback at its end (a 1,000-user alert schedules one callback, not a thousand). Every
    FLUSH_EVERY outboxes the ones gathered so far leave at once, while the turn goes on: the
    first sockets of a big fan-out start receiving while the rest are still being encoded (their
    frames are complete: a socket's frames of one message are put together)."""

    FLUSH_EVERY = 32

    def __init__(self) -> None:
        self._due: list[Outbox] = []  # (no reference to its loop: the registry's key stays weak)

    def add(self, outbox: Outbox) -> None:
        if not self._due:
            asyncio.get_running_loop().call_soon(self._flush_due)
        elif len(self._due) >= self.FLUSH_EVERY:
            self._flush_due()
        self._due.append(outbox)

    def _flush_due(self) -> None:
        due, self._due = self._due, []
        for outbox in due:
            try:
                outbox.flush()
            except Exception:  # one socket's failure must not keep the others' frames
                log.exception("flushing a socket's frames failed")


_flushes: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Flushes]" = weakref.WeakKeyDictionary()


def _flushes_of(loop: asyncio.AbstractEventLoop) -> _Flushes:
    flushes = _flushes.get(loop)
    if flushes is None:
        flushes = _flushes[loop] = _Flushes()
    return flushes


# -- frames -----------------------------------------------------------------------------------

def encode_frame(frame: dict[str, Any]) -> bytes:
    """Compact JSON of a frame: orjson, or the standard library for what orjson refuses
    (integers past 64 bits in a notification's data)."""
    try:
        return orjson.dumps(frame)
    except orjson.JSONEncodeError:
        return json.dumps(frame, separators=(",", ":"), ensure_ascii=False).encode()


def websocket_frame(payload: bytes) -> bytes:
    """One final, unmasked text frame (RFC 6455 5.2), as a server sends it; compression is off."""
    length = len(payload)
    if length < 126:
        return bytes((0x81, length)) + payload
    if length <= 0xFFFF:
        return struct.pack("!BBH", 0x81, 126, length) + payload
    return struct.pack("!BBQ", 0x81, 127, length) + payload


_broadcast_frames: "collections.OrderedDict[str, bytes]" = collections.OrderedDict()


def broadcast_frame(payload: dict[str, Any]) -> bytes:
    """A broadcast's frame, encoded once per process for all the sockets it goes to (and every
    socket that connects while it is active)."""
    data = _broadcast_frames.get(payload["id"])
    if data is None:
        data = _broadcast_frames[payload["id"]] = websocket_frame(
            encode_frame({"type": "broadcast", "payload": payload}))
        if len(_broadcast_frames) > 2 * MAX_ACTIVE:
            _broadcast_frames.popitem(last=False)
    return data


# -- one frame to every socket ------------------------------------------------------------------

class Addressee(Protocol):
    """A socket a broadcast goes to: its outbox when it is live, or it takes the broadcast its
    own way (queued behind its handshake)."""

    def live_outbox(self) -> Outbox | None: ...

    def broadcast(self, payload: dict[str, Any]) -> None: ...


#: From this many sockets on, a frame for all of them is sent by two threads at once: the
#: kernel's work per send (on loopback, the receiver's side too) is most of a fan-out's cost,
#: and a send does not hold the GIL.
PARALLEL_SENDS_FROM = 512
_send_helper = ThreadPoolExecutor(1, thread_name_prefix="mojavox-fan-out")


def deliver_to_all(addressees: Iterable[Addressee], payload: dict[str, Any]) -> None:
    """The hub's fan-out of a broadcast: one frame, encoded once, to every socket. Sockets with
    nothing else queued get it straight from here (in parallel when they are many); the others
    queue it behind what they have."""
    data = broadcast_frame(payload)
    direct, targets = [], []
    for each in addressees:
        outbox = each.live_outbox()
        target = None if outbox is None else outbox.direct_target()
        if target is None:
            each.broadcast(payload)
        else:
            direct.append(outbox)
            targets.append(target)
    if len(targets) < PARALLEL_SENDS_FROM:
        results = _send_each(targets, data)
    else:
        half = len(targets) // 2
        helper = _send_helper.submit(_send_each, targets[:half], data)
        mine = _send_each(targets[half:], data)
        results = helper.result() + mine
    for outbox, sent in zip(direct, results):
        outbox.sent_directly(data, sent)


def _send_each(targets: list[socket.socket], data: bytes) -> list[int]:
    results = []
    for target in targets:
        try:
            results.append(target.send(data))
        except OSError:  # would block, or broken: the outbox meets it its own way
            results.append(0)
    return results
