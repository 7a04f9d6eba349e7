"""Settings: built-in defaults, the shipped settings.yaml, environment overrides, and the one-line
errors that name the dotted key of a bad value."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mojavox_notify.auth import build_verifier
from mojavox_notify.settings import Settings, SettingsError, load_settings
from mojavox_notify.store import sqlite_path, storage_url

ROOT = Path(__file__).resolve().parent.parent
LONG_SECRET = "a-secret-that-is-long-enough-for-hs256-0123"


def write_settings(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "settings.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def settings_error(path=None, environ=None, overrides=None) -> SettingsError:
    with pytest.raises(SettingsError) as caught:
        load_settings(path, environ=environ or {}, overrides=overrides)
    message = str(caught.value)
    assert "\n" not in message, "a settings error must be one line"
    return caught.value


# -- defaults and the shipped file -------------------------------------------------------------

def test_defaults_with_no_file_serve_a_local_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(None, environ={})
    assert settings.server.host == "127.0.0.1"
    assert settings.server.port == 3001
    assert settings.server.ws_path == "/ws/notifications"
    assert settings.storage.url == "embedded"
    assert settings.redis.url is None
    assert settings.auth.algorithm == "HS256"
    assert settings.auth.secret is None
    assert settings.push.vapid_public_key is None
    assert settings.data_path == tmp_path / "data"


def test_shipped_settings_yaml_loads_and_matches_the_built_in_defaults():
    path = ROOT / "settings.yaml"
    settings = load_settings(path, environ={})
    defaults = dataclasses.replace(Settings(), base_dir=str(ROOT))
    assert settings == defaults


def test_empty_settings_file_means_defaults(tmp_path):
    path = write_settings(tmp_path, "# nothing here\n")
    settings = load_settings(path, environ={})
    assert settings.server.port == 3001
    assert settings.storage.url == "embedded"


def test_file_values_are_read_and_typed(tmp_path):
    path = write_settings(tmp_path, (
        "server:\n"
        "  port: 4100\n"
        "  allowed_origins: [https://app.mojavox.ai]\n"
        "  action_url_hosts: [app.mojavox.ai]\n"
        "rate_limits:\n"
        "  notifications_per_minute: 5\n"
        "websocket:\n"
        "  ping_interval_seconds: 2\n"))
    settings = load_settings(path, environ={})
    assert settings.server.port == 4100
    assert settings.server.allowed_origins == ("https://app.mojavox.ai",)
    assert settings.server.action_url_hosts == ("app.mojavox.ai",)
    assert settings.rate_limits.notifications_per_minute == 5
    assert settings.websocket.ping_interval_seconds == 2.0


# -- environment overrides ---------------------------------------------------------------------

def test_environment_overrides_every_documented_variable():
    settings = load_settings(None, environ={
        "WS_PORT": "4321",
        "WS_PATH": "/live",
        "JWT_SECRET": LONG_SECRET,
        "MONGODB_URL": "mongodb://db.internal:27017/notify",
        "REDIS_URL": "redis://cache.internal:6379/0",
        "VAPID_PUBLIC_KEY": "public-key",
        "VAPID_PRIVATE_KEY": "private-key",
        "VAPID_SUBJECT": "https://mojavox.ai/contact",
    })
    assert settings.server.port == 4321
    assert settings.server.ws_path == "/live"
    assert settings.auth.secret == LONG_SECRET
    assert settings.storage.url == "mongodb://db.internal:27017/notify"
    assert settings.redis.url == "redis://cache.internal:6379/0"
    assert settings.push.vapid_public_key == "public-key"
    assert settings.push.vapid_private_key == "private-key"
    assert settings.push.vapid_subject == "https://mojavox.ai/contact"


def test_environment_wins_over_the_settings_file(tmp_path):
    path = write_settings(tmp_path, "server:\n  port: 5000\n  ws_path: /from-file\n")
    settings = load_settings(path, environ={"WS_PORT": "6000"})
    assert settings.server.port == 6000
    assert settings.server.ws_path == "/from-file"


def test_empty_environment_variable_does_not_override(tmp_path):
    path = write_settings(tmp_path, "server:\n  port: 5000\n")
    assert load_settings(path, environ={"WS_PORT": ""}).server.port == 5000


def test_database_url_is_used_only_when_it_is_a_mongodb_url():
    postgres = load_settings(None, environ={"DATABASE_URL": "postgresql://db/notify"})
    assert postgres.storage.url == "embedded"
    mongo = load_settings(None, environ={"DATABASE_URL": "mongodb://db.internal/notify"})
    assert mongo.storage.url == "mongodb://db.internal/notify"


def test_mongodb_url_wins_over_database_url():
    settings = load_settings(None, environ={"DATABASE_URL": "mongodb://legacy/notify",
                                            "MONGODB_URL": "mongodb://primary/notify"})
    assert settings.storage.url == "mongodb://primary/notify"


def test_bad_environment_value_names_the_key_it_sets():
    error = settings_error(environ={"WS_PORT": "not-a-port"})
    assert error.key == "server.port"
    assert "server.port" in str(error)


def test_short_jwt_secret_from_environment_is_refused():
    error = settings_error(environ={"JWT_SECRET": "too-short"})
    assert "auth.secret" in str(error)
    assert "32 bytes" in str(error)


# -- validation errors name the dotted key -----------------------------------------------------

def test_unknown_top_level_key_is_named(tmp_path):
    error = settings_error(write_settings(tmp_path, "colour: blue\n"))
    assert error.key == "colour"
    assert "unknown key" in str(error)
    assert "server" in str(error), "the message lists the allowed keys"


def test_unknown_nested_key_is_named_with_its_section(tmp_path):
    error = settings_error(write_settings(tmp_path, "server:\n  prot: 3001\n"))
    assert error.key == "server.prot"
    assert "settings: server.prot: unknown key" in str(error)
    assert "port" in str(error)


def test_wrong_type_names_the_key_and_the_expected_type(tmp_path):
    error = settings_error(write_settings(tmp_path, "server:\n  port: three-thousand\n"))
    assert error.key == "server.port"
    assert "integer" in str(error)


def test_fractional_number_for_an_integer_key_is_refused(tmp_path):
    error = settings_error(write_settings(tmp_path, "retention:\n  days: 1.5\n"))
    assert error.key == "retention.days"


def test_boolean_for_a_number_key_is_refused(tmp_path):
    error = settings_error(write_settings(tmp_path, "server:\n  port: true\n"))
    assert error.key == "server.port"


def test_list_key_with_a_mapping_is_refused(tmp_path):
    error = settings_error(write_settings(tmp_path, "server:\n  allowed_origins: {a: b}\n"))
    assert error.key == "server.allowed_origins"
    assert "list of strings" in str(error)


def test_out_of_range_port_names_the_key_and_the_range(tmp_path):
    error = settings_error(write_settings(tmp_path, "server:\n  port: 70000\n"))
    assert error.key == "server.port"
    assert "between 1 and 65535" in str(error)
    assert "70000" in str(error)


def test_value_outside_the_allowed_choices_lists_them(tmp_path):
    error = settings_error(write_settings(tmp_path, "logging:\n  level: LOUD\n"))
    assert error.key == "logging.level"
    assert "DEBUG, INFO, WARNING, ERROR" in str(error)


def test_ws_path_must_be_an_absolute_path():
    error = settings_error(environ={"WS_PATH": "ws/notifications"})
    assert error.key == "server.ws_path"


def test_storage_url_must_be_embedded_sqlite_or_mongodb():
    error = settings_error(environ={"MONGODB_URL": "postgresql://db/notify"})
    assert error.key == "storage.url"
    assert "embedded" in str(error) and "sqlite:///" in str(error) and "MONGODB_URL" in str(error)


def test_sqlite_url_is_relative_to_the_settings_file(tmp_path):
    path = tmp_path / "deployment" / "settings.yaml"
    path.parent.mkdir()
    path.write_text("storage:\n  url: sqlite:///state/notify.db\n", encoding="utf-8")
    settings = load_settings(path, environ={})
    assert sqlite_path(settings, storage_url(settings)) == path.parent / "state" / "notify.db"
    absolute = load_settings(None, environ={}, overrides={"storage.url": "sqlite:////srv/n.db"})
    assert sqlite_path(absolute, storage_url(absolute)) == Path("/srv/n.db")


def test_embedded_is_the_sqlite_file_in_the_data_folder(tmp_path):
    path = tmp_path / "settings.yaml"
    path.write_text("data_dir: ./var\n", encoding="utf-8")
    settings = load_settings(path, environ={})
    assert storage_url(settings) == f"sqlite:///{tmp_path / 'var' / 'notify.db'}"


def test_mongodb_url_is_still_read_as_the_old_name_of_storage_url(tmp_path):
    path = tmp_path / "settings.yaml"
    path.write_text("mongodb:\n  url: mongodb://db.internal/notify\n", encoding="utf-8")
    assert load_settings(path, environ={}).storage.url == "mongodb://db.internal/notify"
    path.write_text("storage:\n  url: embedded\nmongodb:\n  url: mongodb://db/notify\n",
                    encoding="utf-8")
    with pytest.raises(SettingsError) as caught:
        load_settings(path, environ={})
    assert caught.value.key == "mongodb.url"


def test_redis_url_must_be_a_redis_url():
    error = settings_error(environ={"REDIS_URL": "http://cache:6379"})
    assert error.key == "redis.url"


def test_section_that_is_not_a_mapping_is_named(tmp_path):
    error = settings_error(write_settings(tmp_path, "server: 3001\n"))
    assert error.key == "server"


def test_invalid_yaml_names_the_file_and_line(tmp_path):
    path = write_settings(tmp_path, "server:\n  port: [3001\n")
    error = settings_error(path)
    assert str(path) in str(error)
    assert "line" in str(error)


def test_missing_settings_file_is_named(tmp_path):
    path = tmp_path / "nowhere.yaml"
    error = settings_error(path)
    assert str(path) in str(error)


def test_short_hs256_secret_in_file_is_refused(tmp_path):
    error = settings_error(write_settings(tmp_path, "auth:\n  secret: short\n"))
    assert error.key == "auth.secret"


def test_hs256_secret_of_exactly_32_bytes_is_accepted():
    settings = load_settings(None, environ={"JWT_SECRET": "x" * 32})
    assert settings.auth.secret == "x" * 32


def test_rs256_without_a_key_is_refused(tmp_path):
    error = settings_error(write_settings(tmp_path, "auth:\n  algorithm: RS256\n"))
    assert error.key == "auth.algorithm"
    assert "auth.public_key" in str(error) and "auth.jwks_url" in str(error)


def test_rs256_with_two_key_sources_is_refused(tmp_path):
    error = settings_error(write_settings(tmp_path, (
        "auth:\n  algorithm: ES256\n  public_key: PEM\n  jwks_url: https://id.example/jwks\n")))
    assert error.key == "auth.algorithm"


@pytest.mark.parametrize("algorithm, source", [("RS256", "public_key: PEM"),
                                               ("ES256", "public_key_file: idp.pem"),
                                               ("RS256", "jwks_url: https://id.example/jwks")])
def test_a_public_key_algorithm_without_an_audience_is_refused(tmp_path, algorithm, source):
    """An identity provider signs other applications' tokens too: without an audience, theirs
    would be accepted here (with their roles)."""
    error = settings_error(write_settings(tmp_path, f"auth:\n  algorithm: {algorithm}\n  {source}\n"))
    assert error.key == "auth.audience"
    assert algorithm in str(error) and "auth.require_audience: false" in str(error)


def test_an_audience_or_require_audience_false_satisfies_a_public_key_algorithm(tmp_path):
    path = write_settings(tmp_path, "auth:\n  algorithm: RS256\n  jwks_url: https://id.example/jwks\n"
                                    "  audience: mojavox-notify\n")
    assert load_settings(path, environ={}).auth.audience == "mojavox-notify"
    path = write_settings(tmp_path, "auth:\n  algorithm: ES256\n  public_key: PEM\n"
                                    "  require_audience: false\n")
    assert load_settings(path, environ={}).auth.require_audience is False


def test_unknown_algorithm_is_refused(tmp_path):
    error = settings_error(write_settings(tmp_path, "auth:\n  algorithm: none\n"))
    assert error.key == "auth.algorithm"
    assert "HS256, RS256, ES256" in str(error)


@pytest.mark.parametrize("variable, missing", [("VAPID_PUBLIC_KEY", "push.vapid_private_key"),
                                               ("VAPID_PRIVATE_KEY", "push.vapid_public_key")])
def test_vapid_key_set_alone_is_refused_naming_the_missing_one(variable, missing):
    error = settings_error(environ={variable: "some-key"})
    assert error.key == missing
    assert "VAPID_PUBLIC_KEY" in str(error) and "VAPID_PRIVATE_KEY" in str(error)


def test_vapid_subject_must_be_mailto_or_https():
    error = settings_error(environ={"VAPID_SUBJECT": "admin@mojavox.ai"})
    assert error.key == "push.vapid_subject"


@pytest.mark.parametrize("share", ["push.concurrency_per_host", "push.concurrency_per_user"])
def test_a_push_share_must_leave_sends_for_everyone_else(share):
    shares = {"push.concurrency": 8, "push.concurrency_per_host": 2, "push.concurrency_per_user": 2}
    error = settings_error(overrides={**shares, share: 8})
    assert error.key == share and "less than push.concurrency (8)" in str(error)
    assert load_settings(None, environ={}, overrides={**shares, share: 7})


def test_explicit_overrides_are_validated_like_the_file():
    error = settings_error(overrides={"server.port": 0})
    assert error.key == "server.port"


# -- paths -------------------------------------------------------------------------------------

def test_relative_paths_resolve_against_the_settings_file_folder(tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    folder = tmp_path / "deploy"
    path = write_settings(folder, "data_dir: ./state\nplugins:\n  directory: my-plugins\n")
    settings = load_settings(path, environ={})
    assert settings.data_path == folder / "state"
    assert settings.resolve_path(settings.plugins.directory) == folder / "my-plugins"


def test_absolute_paths_are_kept(tmp_path):
    target = tmp_path / "absolute-data"
    path = write_settings(tmp_path / "deploy", f"data_dir: {target}\n")
    assert load_settings(path, environ={}).data_path == target


def test_relative_public_key_file_is_read_from_the_settings_file_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "deploy"
    path = write_settings(folder, "auth:\n  algorithm: RS256\n  public_key_file: keys/idp.pem\n"
                                  "  audience: mojavox-notify\n")
    (folder / "keys").mkdir()
    (folder / "keys" / "idp.pem").write_text("-----BEGIN PUBLIC KEY-----\n", encoding="utf-8")
    settings = load_settings(path, environ={})
    assert settings.resolve_path(settings.auth.public_key_file) == folder / "keys" / "idp.pem"
    build_verifier(settings)  # reads the file; a wrong base folder would raise SettingsError


def test_unreadable_public_key_file_names_the_key(tmp_path):
    path = write_settings(tmp_path, "auth:\n  algorithm: RS256\n  public_key_file: missing.pem\n"
                                    "  audience: mojavox-notify\n")
    settings = load_settings(path, environ={})
    with pytest.raises(SettingsError) as caught:
        build_verifier(settings)
    assert caught.value.key == "auth.public_key_file"


def test_a_settings_file_that_is_not_utf8_is_one_clear_error(tmp_path):
    path = tmp_path / "settings.yaml"
    path.write_bytes(b"server:\n  host: 127.0.0.1\n  # caf\xe9 in Latin-1\n")
    with pytest.raises(SettingsError) as raised:
        load_settings(path, environ={})
    assert "is not UTF-8 text (line 3)" in str(raised.value)


def test_every_key_can_be_set_from_the_environment_by_one_scheme():
    settings = load_settings(None, environ={
        "MOJAVOX_SERVER__ALLOWED_ORIGINS": "https://app.mojavox.ai, https://ops.mojavox.ai",
        "MOJAVOX_SERVER__XHEADERS": "true", "MOJAVOX_LOGGING__FORMAT": "json",
        "MOJAVOX_RATE_LIMITS__NOTIFICATIONS_PER_MINUTE": "10", "MOJAVOX_DATA_DIR": "/var/lib/mojavox",
        "WS_PORT": "4000", "MOJAVOX_SERVER__PORT": "4001"})
    assert settings.server.allowed_origins == ("https://app.mojavox.ai", "https://ops.mojavox.ai")
    assert settings.server.xheaders is True and settings.logging.format == "json"
    assert settings.rate_limits.notifications_per_minute == 10
    assert settings.data_dir == "/var/lib/mojavox"
    assert settings.server.port == 4001  # the scheme's own variable wins over the seed's name


def test_the_environment_scheme_covers_every_key():
    """Each key's variable, set to the key's default as text, loads and gives that default."""
    from mojavox_notify.settings import _all_keys, environment_variable
    defaults = Settings()
    def value_of(settings, key):
        for part in key.split("."):
            settings = getattr(settings, part)
        return settings

    for key in _all_keys(Settings):
        default = value_of(defaults, key)
        if default in (None, ()):
            continue
        text = (", ".join(default) if isinstance(default, tuple) else
                str(default).lower() if isinstance(default, bool) else str(default))
        settings = load_settings(None, environ={environment_variable(key): text})
        assert value_of(settings, key) == default, key


def test_an_unknown_mojavox_variable_is_one_clear_error():
    with pytest.raises(SettingsError) as raised:
        load_settings(None, environ={"MOJAVOX_SERVER__PROT": "1"})
    assert "MOJAVOX_SERVER__PROT: is not a setting" in str(raised.value)
    with pytest.raises(SettingsError) as raised:
        load_settings(None, environ={"MOJAVOX_SERVER__PORT": "x"})
    assert "(set by MOJAVOX_SERVER__PORT)" in str(raised.value)


def test_a_nested_section_is_set_from_the_environment_by_its_dotted_path():
    settings = load_settings(None, environ={"MOJAVOX_INGEST__NATS__URL": "nats://bus.internal:4222",
                                            "MOJAVOX_INGEST__NATS__MAX_DELIVER": "4"})
    assert settings.ingest.nats.url == "nats://bus.internal:4222"
    assert settings.ingest.nats.max_deliver == 4


def test_redis_streams_take_their_defaults_and_need_a_redis_url(tmp_path):
    path = tmp_path / "settings.yaml"
    path.write_text("redis: {url: 'redis://127.0.0.1:6379/0'}\n"
                    "ingest:\n  redis_streams:\n    - stream: dialer:events\n", encoding="utf-8")
    [stream] = load_settings(path, environ={}).ingest.redis_streams
    assert (stream.group, stream.batch, stream.max_deliveries) == ("mojavox-notify", 100, 10)
    assert stream.dead_letter_stream == "dialer:events:dead"
    path.write_text("ingest:\n  redis_streams:\n    - stream: dialer:events\n", encoding="utf-8")
    with pytest.raises(SettingsError, match="ingest.redis_streams: needs redis.url"):
        load_settings(path, environ={})


def test_a_stream_listed_twice_or_a_bad_stream_key_is_named(tmp_path):
    path = tmp_path / "settings.yaml"
    path.write_text("redis: {url: 'redis://127.0.0.1:6379/0'}\n"
                    "ingest:\n  redis_streams: [{stream: a}, {stream: a}]\n", encoding="utf-8")
    with pytest.raises(SettingsError, match=r"ingest.redis_streams.1.stream: a is listed twice"):
        load_settings(path, environ={})
    path.write_text("redis: {url: 'redis://127.0.0.1:6379/0'}\n"
                    "ingest:\n  redis_streams: [{stream: a, batch: 0}]\n", encoding="utf-8")
    with pytest.raises(SettingsError, match=r"ingest.redis_streams.0.batch: must be between"):
        load_settings(path, environ={})
    path.write_text("redis: {url: 'redis://127.0.0.1:6379/0'}\n"
                    "ingest:\n  redis_streams: [{stream: a, dead_letter: b}, {stream: b}]\n",
                    encoding="utf-8")
    with pytest.raises(SettingsError, match=r"ingest.redis_streams.0.dead_letter: b is a stream"):
        load_settings(path, environ={})
