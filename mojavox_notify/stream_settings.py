"""`ingest`: the settings of the durable streams the server consumes (streams/), with the checks
that span their keys (called by settings.py when the whole file is read)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .settings_rules import SettingsError, _between, _check, _url_with_scheme


def _stream_key(value: str) -> str | None:
    """A stream, group or consumer name (short enough that `<kind>:<stream>/<entry id>` stays
    a valid event id of at most 128 characters)."""
    if value and len(value) <= 64 and not any(c.isspace() for c in value):
        return None
    return "must be 1 to 64 characters without spaces"


def _nats_subject(value: str) -> str | None:
    if value and not any(c.isspace() for c in value) and ".." not in value:
        return None
    return "must be a NATS subject such as mojavox.dead.events"


def _subject_covers(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` stands for one token, a final `>` for one or more."""
    wanted, given = pattern.split("."), subject.split(".")
    for index, token in enumerate(wanted):
        if token == ">":
            return len(given) > index
        if index >= len(given) or token not in ("*", given[index]):
            return False
    return len(given) == len(wanted)


@dataclass(frozen=True)
class RedisStreamSettings:
    """`ingest.redis_streams[]`: one Redis stream read by a consumer group (streams/redis_streams.py)
    on the Redis of `redis.url`; each entry's `event` field is a `POST /api/events` body."""

    stream: str = _check(_stream_key, default="mojavox:events")
    group: str = _check(_stream_key, default="mojavox-notify")
    batch: int = _check(_between(1, 10_000), default=100)
    block_ms: int = _check(_between(10, 60_000), default=1000)
    claim_idle_seconds: float = _check(_between(0.1, 86400), default=30)
    max_deliveries: int = _check(_between(1, 1000), default=10)
    dead_letter: str | None = _check(_stream_key, default=None)

    @property
    def dead_letter_stream(self) -> str:
        """Where poison entries go: `dead_letter`, else `<stream>:dead`."""
        return self.dead_letter or f"{self.stream}:dead"


@dataclass(frozen=True)
class NatsSettings:
    """`ingest.nats`: a NATS JetStream stream read by a durable pull consumer; off while `url`
    is null."""

    url: str | None = _check(_url_with_scheme("nats", "tls"), default=None)
    stream: str = _check(_stream_key, default="MOJAVOX")
    subjects: tuple[str, ...] = ("mojavox.events.>",)
    durable: str = _check(_stream_key, default="mojavox-notify")
    max_deliver: int = _check(_between(1, 1000), default=10)
    ack_wait_seconds: float = _check(_between(1, 86400), default=30)
    # Not under mojavox.events.>: a dead letter must not land in the stream it came from.
    dead_letter_subject: str = _check(_nats_subject, default="mojavox.dead.events")


@dataclass(frozen=True)
class IngestSettings:
    """Durable streams the server consumes events from, besides `POST /api/events`
    (docs/streams.md)."""

    redis_streams: tuple[RedisStreamSettings, ...] = ()
    nats: NatsSettings = field(default_factory=NatsSettings)


def check_ingest(ingest: IngestSettings, redis_url: str | None) -> None:
    """Redis streams are read on the Redis of `redis.url`, each listed once, and no dead letter
    is a stream that is read (a poison entry would come round again)."""
    streams = ingest.redis_streams
    if streams and not redis_url:
        raise SettingsError("ingest.redis_streams", "needs redis.url (REDIS_URL): the streams "
                            "are read on that Redis")
    seen: set[str] = set()
    for index, stream in enumerate(streams):
        if stream.stream in seen:
            raise SettingsError(f"ingest.redis_streams.{index}.stream",
                                f"{stream.stream} is listed twice")
        seen.add(stream.stream)
    for index, stream in enumerate(streams):
        if stream.dead_letter_stream in seen:
            raise SettingsError(f"ingest.redis_streams.{index}.dead_letter",
                                f"{stream.dead_letter_stream} is a stream that is read; a dead "
                                "letter must be a stream of its own")
    nats = ingest.nats
    if nats.url is not None and not nats.subjects:
        raise SettingsError("ingest.nats.subjects", "must name at least one subject")
    if {"*", ">"} & set(nats.dead_letter_subject.split(".")):
        raise SettingsError("ingest.nats.dead_letter_subject",
                            f"{nats.dead_letter_subject} has a wildcard: dead letters are "
                            "published to it, so it must be one literal subject")
    for subject in nats.subjects:
        problem = _nats_subject(subject)
        if problem:
            raise SettingsError("ingest.nats.subjects", f"{subject!r} {problem}")
        if _subject_covers(subject, nats.dead_letter_subject):
            # The source would consume its own dead letters (and dead-letter them again).
            raise SettingsError("ingest.nats.dead_letter_subject",
                                f"{nats.dead_letter_subject} is covered by the stream's subject "
                                f"{subject}: dead letters would be read again")
