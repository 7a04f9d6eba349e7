"""Typed, validated settings: `settings.yaml` plus environment overrides, read once at start-up.

Every key is a dataclass field; its metadata says what is allowed. An unknown key or a bad
value raises `SettingsError` whose message names the dotted key and what it accepts, so
start-up can stop with one clear line.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

# (SettingsError is imported from here by its callers too.)
from .settings_rules import (SettingsError, _between, _check, _key_prefix, _one_of, _path_prefix,
                             _storage_url, _url_with_scheme)
from .stream_settings import IngestSettings, check_ingest


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = _check(_between(1, 65535), default=3001)
    ws_path: str = _check(_path_prefix, default="/ws/notifications")
    max_body_bytes: int = _check(_between(1024, 16 * 1024 * 1024), default=64 * 1024)
    max_message_bytes: int = _check(_between(256, 16 * 1024 * 1024), default=64 * 1024)
    allowed_origins: tuple[str, ...] = ()
    action_url_hosts: tuple[str, ...] = ()
    body_timeout_seconds: float = _check(_between(1, 3600), default=30)
    max_sockets_per_ip: int = _check(_between(0, 1_000_000), default=1000)
    xheaders: bool = False
    workers: int = _check(_between(0, 256), default=1)


@dataclass(frozen=True)
class AuthSettings:
    algorithm: str = _check(_one_of("HS256", "RS256", "ES256"), default="HS256")
    secret: str | None = None
    public_key: str | None = None
    public_key_file: str | None = None
    jwks_url: str | None = _check(_url_with_scheme("http", "https"), default=None)
    jwks_cache_seconds: int = _check(_between(0, 86400), default=300)
    audience: str | None = None
    require_audience: bool = True
    issuer: str | None = None
    leeway_seconds: int = _check(_between(0, 600), default=30)
    token_ttl_seconds: int = _check(_between(60, 30 * 86400), default=3600)
    max_token_lifetime_seconds: int = _check(_between(0, 10 * 365 * 86400), default=30 * 86400)
    failed_per_minute_per_ip: int = _check(_between(0, 1_000_000), default=60)


@dataclass(frozen=True)
class WebSocketSettings:
    ping_interval_seconds: float = _check(_between(1, 3600), default=25)
    ping_timeout_seconds: float = _check(_between(1, 3600), default=10)
    token_expiry_warning_seconds: float = _check(_between(0, 3600), default=30)
    resume_limit: int = _check(_between(1, 10000), default=500)
    max_queued_messages: int = _check(_between(1, 1_000_000), default=1000)
    max_buffered_bytes: int = _check(_between(1024, 1 << 30), default=4 * 1024 * 1024)
    max_sockets_per_user: int = _check(_between(0, 100_000), default=20)
    messages_per_second: float = _check(_between(0, 100_000), default=20)
    close_above_messages_per_second: float = _check(_between(0, 1_000_000), default=100)


@dataclass(frozen=True)
class StorageSettings:
    url: str = _check(_storage_url, default="embedded")
    sqlite_synchronous: str = _check(_one_of("normal", "full"), default="normal")
    sqlite_inline_limit: int = _check(_between(0, 10_000), default=64)
    sqlite_cache_mib: int = _check(_between(1, 4096), default=64)
    busy_timeout_seconds: float = _check(_between(0.1, 600), default=5)
    operation_timeout_seconds: float = _check(_between(0.1, 600), default=1)
    probe_interval_seconds: float = _check(_between(0.1, 3600), default=1)
    exit_after_seconds: float = _check(_between(0, 86400), default=60)


@dataclass(frozen=True)
class MongoSettings:
    database: str = "mojavox_notify"
    startup_timeout_seconds: float = _check(_between(1, 300), default=20)
    server_selection_timeout_seconds: float = _check(_between(0.1, 300), default=5)


@dataclass(frozen=True)
class RedisSettings:
    url: str | None = _check(_url_with_scheme("redis", "rediss", "unix"), default=None)
    key_prefix: str = _check(_key_prefix, default="mojavox-notify")
    timeout_seconds: float = _check(_between(0.05, 60), default=0.5)
    reconnect_max_seconds: float = _check(_between(0.1, 300), default=5)
    presence_ttl_seconds: float = _check(_between(3, 3600), default=30)


@dataclass(frozen=True)
class PushSettings:
    vapid_public_key: str | None = None
    vapid_private_key: str | None = None
    vapid_subject: str = "mailto:admin@mojavox.ai"
    payload: str = _check(_one_of("full", "minimal"), default="full")
    icon: str | None = None
    only_when_offline: bool = True
    default_priorities: tuple[str, ...] = ("high", "critical")
    allowed_insecure_hosts: tuple[str, ...] = ()
    concurrency: int = _check(_between(2, 1000), default=32)
    concurrency_per_host: int = _check(_between(1, 1000), default=8)
    concurrency_per_user: int = _check(_between(1, 1000), default=4)
    max_subscriptions_per_user: int = _check(_between(1, 1000), default=20)
    give_up_after_seconds: float = _check(_between(10, 7 * 86400), default=3600)


@dataclass(frozen=True)
class RateLimitSettings:
    notifications_per_minute: int = _check(_between(0, 1_000_000), default=120)
    requests_per_minute: int = _check(_between(0, 1_000_000), default=600)
    max_tracked_keys: int = _check(_between(100, 10_000_000), default=100_000)


@dataclass(frozen=True)
class RetentionSettings:
    days: int = _check(_between(1, 3650), default=90)
    idempotency_hours: int = _check(_between(1, 24 * 365), default=24)
    cleanup_interval_minutes: int = _check(_between(0, 10080), default=60)


@dataclass(frozen=True)
class PluginSettings:
    builtin: bool = True
    directory: str | None = "plugins"
    enabled: tuple[str, ...] = ()
    disabled: tuple[str, ...] = ()


@dataclass(frozen=True)
class MetricsSettings:
    access: str = _check(_one_of("admin", "port", "off"), default="admin")
    host: str = "127.0.0.1"
    port: int = _check(_between(0, 65535), default=9464)  # 0: any free port
    tenant_label: bool = False


@dataclass(frozen=True)
class LoggingSettings:
    level: str = _check(_one_of("DEBUG", "INFO", "WARNING", "ERROR"), default="INFO")
    format: str = _check(_one_of("text", "json"), default="text")


@dataclass(frozen=True)
class WebSettings:
    """The browser side: CORS for /api/* and the notification center page at `/`."""

    page: bool = True
    cors_max_age_seconds: int = _check(_between(0, 86400), default=600)
    demo_user: str = _check(lambda value: None if value.strip() else "must name a user",
                            default="supervisor")
    action_base_url: str | None = _check(_url_with_scheme("http", "https"), default=None)


@dataclass(frozen=True)
class EscalationTargetSettings:
    """Who a step tells: a topic's members and named users, of the escalation's tenant (and
    whoever the `mojavox_escalation_targets` hook adds)."""

    topic: str | None = _check(lambda value: None if value.strip() else "must name a topic",
                               default=None)
    users: tuple[str, ...] = ()


@dataclass(frozen=True)
class EscalationStepSettings:
    after_seconds: float = _check(_between(0.1, 86400), default=30)
    to: EscalationTargetSettings = field(default_factory=EscalationTargetSettings)


@dataclass(frozen=True)
class EscalationPolicySettings:
    """`escalations.<type>`: what happens to an unacknowledged notification of that type."""

    claim: bool = True
    steps: tuple[EscalationStepSettings, ...] = ()
    repeat: int = _check(_between(0, 5), default=0)
    unanswered_after_seconds: float | None = _check(_between(0.1, 86400), default=None)


@dataclass(frozen=True)
class EscalationTimerSettings:
    """How every process watches the stored due steps (escalations/timers.py)."""

    poll_interval_seconds: float = _check(_between(0.05, 10), default=0.25)
    batch: int = _check(_between(1, 10_000), default=500)
    lookahead_seconds: float = _check(_between(0, 30), default=2.0)
    #: `serve` fires the steps from one process of their own, at a lower CPU priority, instead
    #: of in every serving process (a burst then takes no CPU or GIL of theirs); needs redis.url.
    own_process: bool = False


@dataclass(frozen=True)
class Settings:
    data_dir: str = "./data"
    server: ServerSettings = field(default_factory=ServerSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    websocket: WebSocketSettings = field(default_factory=WebSocketSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    mongodb: MongoSettings = field(default_factory=MongoSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    push: PushSettings = field(default_factory=PushSettings)
    rate_limits: RateLimitSettings = field(default_factory=RateLimitSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    plugins: PluginSettings = field(default_factory=PluginSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    web: WebSettings = field(default_factory=WebSettings)
    escalation_timers: EscalationTimerSettings = field(default_factory=EscalationTimerSettings)
    ingest: IngestSettings = field(default_factory=IngestSettings)
    # By notification type; not settable from the environment (a mapping of mappings).
    escalations: Mapping[str, EscalationPolicySettings] = field(
        default_factory=dict, metadata={"mapping": EscalationPolicySettings})
    base_dir: str = field(default=".", metadata={"internal": True})

    def resolve_path(self, path: str) -> Path:
        """Relative paths in settings are relative to the settings file's folder."""
        candidate = Path(path).expanduser()
        return candidate if candidate.is_absolute() else Path(self.base_dir) / candidate

    @property
    def data_path(self) -> Path:
        return self.resolve_path(self.data_dir)


# Every key also has a variable of its own: MOJAVOX_<SECTION>__<KEY> (MOJAVOX_DATA_DIR for the
# top-level key), applied after the seed's names below, so it wins over them.
ENVIRONMENT_PREFIX = "MOJAVOX_"
# Not settings: the CLI's settings file and the token `emit` sends.
RESERVED_VARIABLES = {"MOJAVOX_SETTINGS", "MOJAVOX_TOKEN"}
# The seed's environment variable → dotted settings key. DATABASE_URL only counts when it is a
# MongoDB URL.
ENVIRONMENT_OVERRIDES = {
    "WS_PORT": "server.port",
    "WS_PATH": "server.ws_path",
    "JWT_SECRET": "auth.secret",
    "MONGODB_URL": "storage.url",
    "REDIS_URL": "redis.url",
    "VAPID_PUBLIC_KEY": "push.vapid_public_key",
    "VAPID_PRIVATE_KEY": "push.vapid_private_key",
    "VAPID_SUBJECT": "push.vapid_subject",
}


def load_settings(path: str | os.PathLike | None = None,
                  environ: Mapping[str, str] | None = None,
                  overrides: Mapping[str, Any] | None = None) -> Settings:
    """Read `path` (or nothing), apply the environment, then explicit overrides, and validate."""
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    base_dir = Path.cwd()
    if path is not None:
        raw = _read_yaml(Path(path))
        base_dir = Path(path).resolve().parent
    from_environment: dict[str, str] = {}
    for name, key in ENVIRONMENT_OVERRIDES.items():
        if environ.get(name):
            _set_dotted(raw, key, environ[name], source=name)
            from_environment[key] = name
    database_url = environ.get("DATABASE_URL", "")
    if database_url.startswith(("mongodb://", "mongodb+srv://")) and not environ.get("MONGODB_URL"):
        _set_dotted(raw, "storage.url", database_url, source="DATABASE_URL")
        from_environment["storage.url"] = "DATABASE_URL"
    for name, key in _prefixed_variables(environ):
        _set_dotted(raw, key, environ[name], source=name)
        from_environment[key] = name
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(raw, key, value, source=key)
            from_environment.pop(key, None)
    _move_legacy_storage_url(raw, from_environment)
    try:
        settings = _build(Settings, raw, prefix="")
        settings = dataclasses.replace(settings, base_dir=str(base_dir))
        _check_combinations(settings)
    except SettingsError as error:
        variable = from_environment.get(error.key)
        if variable is None:
            raise
        raise SettingsError(error.key, f"{error.problem} (set by {variable})") from None
    return settings


def environment_variable(key: str) -> str:
    """The variable that sets a dotted key: server.allowed_origins → MOJAVOX_SERVER__ALLOWED_ORIGINS."""
    return ENVIRONMENT_PREFIX + key.replace(".", "__").upper()


def _prefixed_variables(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """(variable, dotted key) for every MOJAVOX_ variable; an unknown one is an error, since a
    misspelt setting that silently does nothing is worse than none."""
    known = {environment_variable(key): key for key in _all_keys(Settings)}
    found = []
    for name in sorted(environ):
        if not name.startswith(ENVIRONMENT_PREFIX) or name in RESERVED_VARIABLES:
            continue
        if name not in known:
            raise SettingsError(name, "is not a setting; the scheme is MOJAVOX_<SECTION>__<KEY>, "
                                "e.g. MOJAVOX_SERVER__ALLOWED_ORIGINS")
        found.append((name, known[name]))
    return found


def _all_keys(cls, prefix: str = "") -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls)
    for spec in dataclasses.fields(cls):
        if spec.metadata.get("internal") or spec.metadata.get("mapping"):
            continue
        if dataclasses.is_dataclass(hints[spec.name]):
            keys.extend(_all_keys(hints[spec.name], f"{prefix}{spec.name}."))
        elif _dataclass_elements(hints[spec.name]) is not None:
            continue  # a list of sections (ingest.redis_streams) is set in the file only
        else:
            keys.append(prefix + spec.name)
    return keys


def _move_legacy_storage_url(raw: dict[str, Any], from_environment: dict[str, str]) -> None:
    """`mongodb.url` named the storage before there were two engines; it still does, unless
    `storage.url` (or MONGODB_URL) says otherwise."""
    mongodb = raw.get("mongodb")
    if not isinstance(mongodb, dict) or "url" not in mongodb:
        return
    legacy = mongodb.pop("url")
    storage = raw.setdefault("storage", {})
    if not isinstance(storage, dict):
        raise SettingsError("storage", "must be a mapping")
    if "url" in storage and storage["url"] != legacy and "storage.url" not in from_environment:
        raise SettingsError("mongodb.url", "is the old name of storage.url; set only storage.url")
    storage.setdefault("url", legacy)
    if "storage.url" not in from_environment and storage["url"] == legacy:
        from_environment.setdefault("storage.url", "mongodb.url")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise SettingsError(str(path), f"cannot be read ({error.strerror or error})") from None
    except UnicodeDecodeError as error:
        line = path.read_bytes()[:error.start].count(b"\n") + 1
        raise SettingsError(str(path), f"is not UTF-8 text (line {line})") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "somewhere"
        raise SettingsError(str(path), f"is not valid YAML ({where})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise SettingsError(str(path), "must hold a mapping of sections")
    return loaded


def _set_dotted(raw: dict, key: str, value: Any, source: str) -> None:
    *sections, name = key.split(".")
    target = raw
    for depth, section in enumerate(sections):
        target = target.setdefault(section, {})
        if not isinstance(target, dict):
            raise SettingsError(".".join(sections[:depth + 1]),
                                f"must be a mapping (while applying {source})")
    target[name] = value


def _build(cls, raw: Any, prefix: str):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SettingsError(prefix.rstrip(".") or "settings", "must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        key = prefix + str(unknown[0])
        raise SettingsError(key, f"unknown key; allowed: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in raw.items():
        key = prefix + name
        spec = fields[name]
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, key + ".")
            continue
        if spec.metadata.get("mapping"):
            values[name] = _build_mapping(spec.metadata["mapping"], value, key)
            continue
        element = _dataclass_elements(hint)
        if element is not None:
            values[name] = _build_list(element, value, key)
            continue
        value = _coerce(key, hint, value)
        check = spec.metadata.get("check")
        problem = check(value) if check and value is not None else None
        if problem:
            raise SettingsError(key, f"{problem} (got {value!r})")
        values[name] = value
    return cls(**values)


def _build_mapping(cls, raw: Any, key: str) -> dict[str, Any]:
    """`{name: section}`: each section built as `cls` under `key.name.`."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SettingsError(key, "must be a mapping of notification types to policies")
    return {str(name): _build(cls, value, f"{key}.{name}.") for name, value in raw.items()}


def _dataclass_elements(hint: Any) -> type | None:
    """The element class of a `tuple[SomeSettings, ...]` field, else None."""
    if typing.get_origin(hint) is tuple:
        arguments = typing.get_args(hint)
        if arguments and dataclasses.is_dataclass(arguments[0]):
            return arguments[0]
    return None


def _build_list(cls, raw: Any, key: str) -> tuple:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise SettingsError(key, "must be a list")
    return tuple(_build(cls, value, f"{key}.{index}.") for index, value in enumerate(raw))


BOOLEAN_WORDS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def _coerce(key: str, hint: Any, value: Any) -> Any:
    """Turn a YAML or environment value into the field's type, or name what was expected."""
    optional = type(None) in typing.get_args(hint)
    if value is None:
        if optional:
            return None
        raise SettingsError(key, "must not be empty")
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint) if optional else hint
    origin = typing.get_origin(base)
    if origin is tuple:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise SettingsError(key, "must be a list of strings")
        return tuple(value)
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in BOOLEAN_WORDS:  # from the environment
            return BOOLEAN_WORDS[value.lower()]
        raise SettingsError(key, f"must be true or false (got {value!r})")
    if base in (int, float):
        if isinstance(value, bool):
            raise SettingsError(key, f"must be a number (got {value!r})")
        try:
            number = base(value)
        except (TypeError, ValueError):
            raise SettingsError(key, f"must be {'an integer' if base is int else 'a number'} "
                                     f"(got {value!r})") from None
        if base is int and isinstance(value, float) and not value.is_integer():
            raise SettingsError(key, f"must be an integer (got {value!r})")
        return number
    if base is str:
        if isinstance(value, (dict, list)):
            raise SettingsError(key, "must be a string")
        return str(value)
    return value


def _check_combinations(settings: Settings) -> None:
    auth = settings.auth
    if auth.algorithm == "HS256":
        if auth.secret is not None and len(auth.secret.encode()) < 32:
            raise SettingsError("auth.secret", "must be at least 32 bytes for HS256 (JWT_SECRET)")
    else:
        sources = [auth.public_key, auth.public_key_file, auth.jwks_url]
        if sum(source is not None for source in sources) != 1:
            raise SettingsError("auth.algorithm", f"{auth.algorithm} needs exactly one of "
                                "auth.public_key, auth.public_key_file or auth.jwks_url")
        if auth.audience is None and auth.require_audience:
            raise SettingsError("auth.audience", f"must be set with {auth.algorithm}: an identity "
                                "provider signs other applications' tokens too, and without an "
                                "audience theirs are accepted here, roles and all; set it to the "
                                "aud your provider puts in this service's tokens, or set "
                                "auth.require_audience: false if it issues tokens for this "
                                "service alone")
    push = settings.push
    if (push.vapid_public_key is None) != (push.vapid_private_key is None):
        missing = "push.vapid_private_key" if push.vapid_private_key is None else "push.vapid_public_key"
        raise SettingsError(missing, "must be set too: the VAPID keys come as a pair "
                            "(VAPID_PUBLIC_KEY and VAPID_PRIVATE_KEY)")
    unknown = sorted(set(push.default_priorities) - {"low", "medium", "high", "critical"})
    if unknown:
        raise SettingsError("push.default_priorities", f"{unknown[0]} is not a priority; "
                            "allowed: low, medium, high, critical")
    if not push.vapid_subject.startswith(("mailto:", "https://")):
        raise SettingsError("push.vapid_subject", "must start with mailto: or https://")
    for share in ("concurrency_per_host", "concurrency_per_user"):
        if getattr(push, share) >= push.concurrency:
            raise SettingsError(f"push.{share}", f"must be less than push.concurrency "
                                f"({push.concurrency}), so that one push service or one user "
                                "never takes every send")
    check_ingest(settings.ingest, settings.redis.url)
    if settings.plugins.enabled and settings.plugins.disabled:
        overlap = set(settings.plugins.enabled) & set(settings.plugins.disabled)
        if overlap:
            raise SettingsError("plugins.disabled", f"lists {sorted(overlap)[0]}, which is also enabled")
