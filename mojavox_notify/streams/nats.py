"""NATS JetStream as a stream source: every process pulls from one durable consumer.

The durable consumer (`ingest.nats.durable`) is shared: each `serve` process, and each worker of
`serve --workers N`, binds a pull subscription to it, so JetStream spreads the messages between
them and redelivers, after `ack_wait_seconds`, what a process took and never answered (it died).
A message is acknowledged only once its notifications are stored. While a batch is handled,
JetStream is told every third of `ack_wait_seconds` that it is in progress, so a slow batch is
not delivered to another process meanwhile. When storage is away, the messages it could not
take are held, unanswered and kept in progress, and tried again once storage answers: an
outage of any length costs them no delivery. One that failed for another passing cause (a
rate limit, its id held elsewhere) is answered `nak` with a delay that doubles with each
delivery, and that delivery is not counted towards `max_deliver` (by this process: one that
moves to another process is counted there once). One that failed for its own sake, the
plugin raising on it say, is `nak`ed and counted. An invalid or unhandled event is published
to `dead_letter_subject` and then terminated (`term`), as is one counted `max_deliver` times,
and one delivered that often without an answer (an event that kills its worker). What a
process leaves unanswered when it stops is given back at once (`nak`). Event ids make
redeliveries harmless; a message whose event has no `id` is known by its stream sequence.

Formats (docs/streams.md): the message body is a `POST /api/events` body; the optional header
`Mojavox-Tenant` names its tenant. A dead letter keeps the original body byte for byte (it can be
published again as it is) and says what happened in `Mojavox-*` headers.

nats-py reconnects by itself (also when the server is away at start-up), retrying every
RECONNECT_WAIT_SECONDS and replaying the subscription; this module only stops pulling while it is
disconnected, logs the outage once (and once when it is back) and reports it in `health()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy, RetentionPolicy,
                         StreamConfig)

from ..settings import Settings
from ..stream_settings import NatsSettings
from .intake import StreamIntake
from .source import (DEAD, RETRY, STORED, SourceStats, StreamEntry, StreamSource,
                     StreamUnavailableError, Verdict)

log = logging.getLogger(__name__)

KIND = "nats"

TENANT_HEADER = "Mojavox-Tenant"
#: Headers of a dead letter (its body is the original message's body).
ERROR_HEADER = "Mojavox-Error"
STREAM_HEADER = "Mojavox-Stream"
SEQUENCE_HEADER = "Mojavox-Sequence"
SUBJECT_HEADER = "Mojavox-Subject"
DELIVERIES_HEADER = "Mojavox-Deliveries"

FETCH_BATCH = 100
#: How long one pull waits for messages before it is sent again (it also bounds shutdown).
FETCH_WAIT_SECONDS = 1.0
NAK_FIRST_SECONDS = 0.5
NAK_MAX_SECONDS = 30.0
RECONNECT_WAIT_SECONDS = 1.0
#: Each JetStream API call (stream and consumer info, a dead letter's publish) gives up after this.
API_TIMEOUT_SECONDS = 5.0
#: The backlog figures (pending, lag, oldest unacknowledged) are refreshed this often.
BACKLOG_SECONDS = 2.0
#: `check` and `emit --stream` give up connecting after this long.
PROBE_TIMEOUT_SECONDS = 3.0
#: Messages whose transient naks a process remembers at most.
WAITED_LIMIT = 10_000
#: A batch being handled is reported in progress at most this often (a third of ack_wait).
PROGRESS_MIN_SECONDS = 0.2
#: The longest error text a dead letter's header carries.
ERROR_HEADER_LIMIT = 1000

#: What the connection, the JetStream API and a dead letter's publish raise when NATS is away.
NATS_ERRORS = (nats.errors.Error, OSError, asyncio.TimeoutError)
#: What nats-py reports, before its disconnected callback, when the server went away.
CONNECTION_LOST = (nats.errors.StaleConnectionError, OSError)


def nak_delay(deliveries: int) -> float:
    """Seconds before a message that could not be stored is delivered again."""
    return min(NAK_MAX_SECONDS, NAK_FIRST_SECONDS * 2 ** max(0, deliveries - 1))


def shown_address(url: str) -> str:
    """The server's host and port, never credentials in the URL."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 4222}"


class NatsSource(StreamSource):
    def __init__(self, settings: NatsSettings, intake: StreamIntake, consumer: str):
        """`consumer` names this process (host, pid, worker): it is the name of its NATS
        connection, which `nats server report connections` shows."""
        self.settings = settings
        self.name = f"{KIND}:{settings.stream}"
        self.stats = SourceStats()
        self.consumer = consumer
        self._intake = intake
        self._client: Client | None = None
        self._js: JetStreamContext | None = None
        self._connected = asyncio.Event()
        self._running = False
        self._ready = False
        self._closing = False
        self._error: str | None = "not connected yet"
        self._failing_since: float | None = None
        self._backlog_due = 0.0
        #: Transient naks this process gave, by stream sequence (see _own_deliveries).
        self._waited: dict[int, int] = {}

    # -- the consuming loop -----------------------------------------------------------------------

    async def run(self) -> None:
        """Consume until cancelled; NATS outages are waited out, never raised. (Another error
        ends it, and the supervisor runs it again, from a new connection.)"""
        self._running, self._closing = True, False
        self._connected.clear()
        try:
            while True:
                try:
                    await self._consume()
                except NATS_ERRORS as error:
                    self._lost(describe(error))
                    await asyncio.sleep(RECONNECT_WAIT_SECONDS)
        finally:
            self._running = self._ready = False
            self._closing = True
            if self._client is not None:
                await self._client.close()
                self._client = None

    async def _consume(self) -> None:
        """Set up (again, after an error), then pull until cancelled or NATS fails us."""
        self._ready = False
        if self._client is None or self._client.is_closed:
            self._client = await self._connect()
        js = self._js = self._client.jetstream(timeout=API_TIMEOUT_SECONDS)
        await declare_stream(js, self.settings)
        await self._declare_dead_letters(js)
        await self._declare_consumer(js)
        subscription = await js.pull_subscribe_bind(durable=self.settings.durable,
                                                    stream=self.settings.stream)
        self._ready = True
        self._back()
        try:
            await self._pull(js, subscription)
        finally:
            self._ready = False
            with contextlib.suppress(*NATS_ERRORS):
                await subscription.unsubscribe()

    async def _pull(self, js: JetStreamContext,
                    subscription: JetStreamContext.PullSubscription) -> None:
        while True:
            await self._connected.wait()
            if asyncio.get_running_loop().time() >= self._backlog_due:
                await self._refresh_backlog(subscription)
            try:
                messages = await subscription.fetch(FETCH_BATCH, timeout=FETCH_WAIT_SECONDS)
            except asyncio.TimeoutError:  # nothing to deliver (nats-py raises either kind)
                continue
            async with self._in_progress(messages):
                held, naked = await self._handle(js, messages)
                while held:  # storage away: the same messages once it answers, not redelivered
                    await self._wait_for_storage()
                    held, more = await self._handle(js, held)
                    naked = naked or more
            if naked:
                await asyncio.sleep(NAK_FIRST_SECONDS)  # what could not be stored comes back

    @contextlib.asynccontextmanager
    async def _in_progress(self, messages: list[Msg]):
        """While a batch is handled (and held for storage), JetStream hears every third of
        ack_wait that its unanswered messages are being worked on; what is still unanswered at
        the end (stopped, or the connection lost) is given back for a redelivery at once."""
        keeping = asyncio.get_running_loop().create_task(self._keep_in_progress(messages))
        try:
            yield
        finally:
            keeping.cancel()
            for message in messages:
                if not message.is_acked:
                    with contextlib.suppress(*NATS_ERRORS):
                        await message.nak()

    async def _keep_in_progress(self, messages: list[Msg]) -> None:
        interval = max(PROGRESS_MIN_SECONDS, self.settings.ack_wait_seconds / 3)
        while True:
            await asyncio.sleep(interval)
            for message in messages:
                if not message.is_acked:
                    with contextlib.suppress(*NATS_ERRORS):
                        await message.in_progress()

    async def _connect(self) -> Client:
        """Connected, or still trying: nats-py retries the first connection forever too."""
        client = await nats.connect(
            self.settings.url, name=f"mojavox-notify {self.consumer}", connect_timeout=2,
            reconnect_time_wait=RECONNECT_WAIT_SECONDS, max_reconnect_attempts=-1,
            error_cb=self._client_error, disconnected_cb=self._disconnected,
            reconnected_cb=self._reconnected)
        self._connected.set()
        return client

    async def _declare_dead_letters(self, js: JetStreamContext) -> None:
        """Dead letters are kept: unless a stream already captures the subject, a stream
        `<stream>_DEAD` is made for it."""
        try:
            await js.find_stream_name_by_subject(self.settings.dead_letter_subject)
        except nats.js.errors.NotFoundError:
            await js.add_stream(StreamConfig(name=f"{self.settings.stream}_DEAD",
                                             subjects=[self.settings.dead_letter_subject]))

    async def _declare_consumer(self, js: JetStreamContext) -> None:
        """The durable pull consumer, made or brought to these settings. JetStream's own
        `max_deliver` is left unlimited: the source counts deliveries itself and moves a message
        delivered `max_deliver` times to the dead letters on its next delivery, unhandled (one
        that kills its worker never reaches an answer of its own), and a dead letter whose
        publish failed is tried again after ack_wait instead of being stranded by a limit."""
        await js.add_consumer(self.settings.stream, ConsumerConfig(
            durable_name=self.settings.durable, ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL, ack_wait=self.settings.ack_wait_seconds,
            max_deliver=-1))

    # -- one batch --------------------------------------------------------------------------------

    async def _handle(self, js: JetStreamContext, messages: list[Msg]) -> tuple[list[Msg], bool]:
        """Answer each message, but those storage could not take (it is away): those are held,
        unanswered, and returned; and whether any was answered `nak`."""
        fresh = []
        for message in messages:
            spent = self._own_deliveries(message) - 1
            if spent >= self.settings.max_deliver:
                await self._dead_letter(js, message, f"delivered {spent} times without being "
                                        "stored (ingest.nats.max_deliver)")
            else:
                fresh.append(message)
        if not fresh:
            return [], False
        verdicts = await self._intake.handle(self.name, [entry_of(message) for message in fresh])
        held, naked = [], False
        storage_away = not self._intake.storage_answers()
        for message, verdict in zip(fresh, verdicts):
            if verdict.kind == RETRY and verdict.transient and storage_away:
                held.append(message)
                self.stats.failed += 1
            elif not await self._answer(js, message, verdict):
                naked = True
        return held, naked

    def _own_deliveries(self, message: Msg) -> int:
        """Its deliveries, this one included, less those this process answered with a transient
        nak: what counts towards `max_deliver` (a delivery whose worker died counts too, which
        is how an event that kills its worker is given up)."""
        metadata = message.metadata
        return metadata.num_delivered - self._waited.get(metadata.sequence.stream, 0)

    async def _answer(self, js: JetStreamContext, message: Msg, verdict: Verdict) -> bool:
        sequence = message.metadata.sequence.stream
        if verdict.kind == STORED:
            await message.ack()
            self._waited.pop(sequence, None)
            self.stats.processed += 1
            return True
        if verdict.kind == DEAD:
            await self._dead_letter(js, message, verdict.error or "refused")
            return True
        if not verdict.transient and self._own_deliveries(message) >= self.settings.max_deliver:
            await self._dead_letter(js, message, f"delivered {self._own_deliveries(message)} "
                                    f"times (ingest.nats.max_deliver); last error: {verdict.error}")
            return True
        await message.nak(delay=nak_delay(message.metadata.num_delivered))
        if verdict.transient:
            self._wait_out(sequence)
        self.stats.failed += 1
        return False

    def _wait_out(self, sequence: int) -> None:
        """Remember a transient nak, so its redelivery here is not counted. Bounded: the oldest
        are forgotten first (one that another process went on to store lingers until then)."""
        self._waited[sequence] = self._waited.pop(sequence, 0) + 1
        while len(self._waited) > WAITED_LIMIT:
            self._waited.pop(next(iter(self._waited)))

    async def _dead_letter(self, js: JetStreamContext, message: Msg, error: str) -> None:
        """Publish the message to the dead letters, then `term` it. A publish that fails leaves
        the message unanswered: it comes back after ack_wait and is dead-lettered again (the
        `Nats-Msg-Id` lets JetStream drop the copy if the first publish did land)."""
        metadata = message.metadata
        headers = {ERROR_HEADER: " ".join(error.split())[:ERROR_HEADER_LIMIT],
                   STREAM_HEADER: metadata.stream,
                   SEQUENCE_HEADER: str(metadata.sequence.stream),
                   SUBJECT_HEADER: message.subject,
                   DELIVERIES_HEADER: str(metadata.num_delivered),
                   "Nats-Msg-Id": f"{metadata.stream}:{metadata.sequence.stream}:dead"}
        tenant = (message.headers or {}).get(TENANT_HEADER)
        if tenant is not None:
            headers[TENANT_HEADER] = tenant
        try:
            await js.publish(self.settings.dead_letter_subject, message.data, headers=headers)
        except NATS_ERRORS as failure:
            log.warning("%s: could not publish the dead letter of sequence %d (%s); it is "
                        "delivered again after ack_wait", self.name, metadata.sequence.stream,
                        describe(failure))
            return
        await message.term()
        self._waited.pop(metadata.sequence.stream, None)
        self.stats.dead_lettered += 1
        log.warning("%s: sequence %d sent to %s: %s", self.name, metadata.sequence.stream,
                    self.settings.dead_letter_subject, headers[ERROR_HEADER])

    async def _wait_for_storage(self) -> None:
        """Pull again once storage answers its probe, NAK_FIRST_SECONDS later at the soonest:
        while it is away, pulling would only deliver again, and count, what it cannot store."""
        await asyncio.sleep(NAK_FIRST_SECONDS)
        while not self._intake.storage_answers():
            await asyncio.sleep(0.1)

    # -- connection state -------------------------------------------------------------------------

    async def _disconnected(self) -> None:
        self._connected.clear()
        if not self._closing:
            self._lost("disconnected")

    async def _reconnected(self) -> None:
        self._connected.set()
        if self._ready:
            self._back()

    async def _client_error(self, error: Exception) -> None:
        """nats-py reports every failed connection attempt here (logged once per outage), and
        errors of a live connection, such as a permission refused."""
        if self._connected.is_set() and not isinstance(error, CONNECTION_LOST):
            log.warning("%s: NATS client error: %s", self.name, describe(error))
            return
        self._lost(describe(error))

    def _lost(self, error: str) -> None:
        if self._failing_since is None:
            log.error("%s: NATS at %s unavailable: %s; reconnecting every %g s", self.name,
                      shown_address(self.settings.url), error, RECONNECT_WAIT_SECONDS)
            self._failing_since = time.monotonic()
        self._error = error

    def _back(self) -> None:
        if self._failing_since is not None:
            log.warning("%s: NATS at %s is back after %.1f s", self.name,
                        shown_address(self.settings.url), time.monotonic() - self._failing_since)
        self._failing_since = None
        self._error = None

    # -- health and backlog -----------------------------------------------------------------------

    async def _refresh_backlog(self, subscription: JetStreamContext.PullSubscription) -> None:
        """The consumer's figures: `pending` delivered and not acknowledged (num_ack_pending),
        `lag` not delivered yet (num_pending), and the age of the oldest message of either."""
        self._backlog_due = asyncio.get_running_loop().time() + BACKLOG_SECONDS
        info = await subscription.consumer_info()
        await self._record_backlog(info)

    async def _record_backlog(self, info: ConsumerInfo) -> None:
        self.stats.pending = info.num_ack_pending
        self.stats.lag = info.num_pending
        waiting = info.num_pending + info.num_ack_pending
        self.stats.oldest_unacknowledged_seconds = (
            await self._oldest_unacknowledged_age(info) if waiting else 0.0)

    async def _oldest_unacknowledged_age(self, info: ConsumerInfo) -> float | None:
        """Every message up to the ack floor is acknowledged, so the next one is the oldest
        that is not (None if it is gone, e.g. past the stream's max_age)."""
        try:
            oldest = await self._js.get_msg(self.settings.stream, seq=info.ack_floor.stream_seq + 1)
        except nats.js.errors.NotFoundError:
            return None
        if oldest.time is None:
            return None
        return round(max(0.0, (datetime.now(timezone.utc) - oldest.time).total_seconds()), 3)

    async def health(self) -> dict[str, Any]:
        """While running, from the last contact (no I/O); otherwise (`check`) asked of the
        server right now."""
        if not self._running:
            await self._probe()
        answering = self._ready and self._connected.is_set()
        report: dict[str, Any] = {"name": self.name, "ok": answering,
                                  "server": shown_address(self.settings.url),
                                  "durable": self.settings.durable, "consumer": self.consumer}
        if not answering:
            report["error"] = self._error or "not connected"
            if self._failing_since is not None:
                report["unavailableForSeconds"] = round(time.monotonic() - self._failing_since, 1)
            return report
        report.update(pending=self.stats.pending, lag=self.stats.lag,
                      oldestUnacknowledgedSeconds=self.stats.oldest_unacknowledged_seconds)
        return report

    async def _probe(self) -> None:
        """`check`: does the server answer, and how far behind is the durable consumer (when
        the stream and the consumer exist yet)."""
        self._ready = False
        try:
            client = await connect_once(self.settings.url)
        except NATS_ERRORS as error:
            self._error = describe(error)
            return
        try:
            self._js = client.jetstream(timeout=PROBE_TIMEOUT_SECONDS)
            try:
                await self._record_backlog(await self._js.consumer_info(
                    self.settings.stream, self.settings.durable))
            except nats.js.errors.NotFoundError:
                pass
            self._ready = True
            self._connected.set()
        except NATS_ERRORS as error:
            self._error = describe(error)
        finally:
            await client.close()
            self._js = None


async def connect_once(url: str) -> Client:
    """A connection for one question (`check`, `emit --stream`): one attempt, an error raised
    rather than printed. (nats-py retries even with allow_reconnect off, `max_reconnect_attempts`
    times, and never stops at 0.)"""

    async def raised_anyway(error: Exception) -> None:
        """The failure is raised by connect itself."""

    return await nats.connect(url, connect_timeout=PROBE_TIMEOUT_SECONDS, allow_reconnect=False,
                              max_reconnect_attempts=1, reconnect_time_wait=0.1,
                              error_cb=raised_anyway)


def describe(error: BaseException) -> str:
    """An exception as one line: nats-py's often have no text of their own."""
    text = str(error)
    name = type(error).__name__
    return f"{name}: {text}" if text and text != name else name


def entry_of(message: Msg) -> StreamEntry:
    """The intake's view of a message: its stream sequence is its entry id, which stands for a
    missing event id (`nats:<stream>/<sequence>`)."""
    return StreamEntry(entry_id=str(message.metadata.sequence.stream), event=message.data,
                       tenant=(message.headers or {}).get(TENANT_HEADER),
                       deliveries=message.metadata.num_delivered)


async def declare_stream(js: JetStreamContext, settings: NatsSettings) -> None:
    """The stream, made when missing as a work queue on disk (a message leaves it once stored
    or dead-lettered). An existing stream is left as its operator made it."""
    try:
        await js.stream_info(settings.stream)
    except nats.js.errors.NotFoundError:
        await js.add_stream(StreamConfig(name=settings.stream, subjects=list(settings.subjects),
                                         retention=RetentionPolicy.WORK_QUEUE))


def emit_subject(settings: NatsSettings, event_type: str) -> str:
    """Where `emit --stream` publishes: the stream's first subject, a wildcard in it filled with
    the event's type (`mojavox.events.>` → `mojavox.events.payment.received`; a `*` stands for
    one token, so there the type's dots become underscores)."""
    tokens = []
    for token in settings.subjects[0].split("."):
        if token == ">":
            tokens.append(event_type)
        elif token == "*":
            tokens.append(event_type.replace(".", "_"))
        else:
            tokens.append(token)
    return ".".join(tokens)


# -- the kind's entry points (streams/__init__.py) ------------------------------------------------

def names(settings: Settings) -> list[str]:
    nats_settings = settings.ingest.nats
    return [f"{KIND}:{nats_settings.stream}"] if nats_settings.url else []


def build(settings: Settings, intake: StreamIntake, consumer: str) -> list[StreamSource]:
    if not settings.ingest.nats.url:
        return []
    return [NatsSource(settings.ingest.nats, intake, consumer)]


async def publish(settings: Settings, name: str, event: dict[str, Any]) -> str:
    """`emit --stream`: publish one event through JetStream, which answers once it has stored
    it (making the stream first if it is missing); returns its stream sequence. The event's
    `id`, when it has one, is also the `Nats-Msg-Id`, so JetStream drops a copy published again
    within its duplicate window (two minutes by default)."""
    nats_settings = settings.ingest.nats
    address = shown_address(nats_settings.url)
    try:
        client = await connect_once(nats_settings.url)
    except NATS_ERRORS as error:
        raise StreamUnavailableError(f"{name}: NATS at {address} does not answer: "
                                     f"{describe(error)}") from None
    try:
        js = client.jetstream(timeout=PROBE_TIMEOUT_SECONDS)
        await declare_stream(js, nats_settings)
        headers = {"Nats-Msg-Id": str(event["id"])} if event.get("id") else None
        acknowledgement = await js.publish(emit_subject(nats_settings, str(event["type"])),
                                           json.dumps(event).encode(), headers=headers)
    except NATS_ERRORS as error:
        raise StreamUnavailableError(f"{name}: JetStream at {address} did not take the event: "
                                     f"{describe(error)}") from None
    finally:
        await client.close()
    return str(acknowledgement.seq)
