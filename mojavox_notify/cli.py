"""`mojavox-notify`: serve, mint a development token, make VAPID keys, emit an event, clean up,
and check a deployment. A wrong setting ends with one line naming it and exit status 2."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import signal
import sys
import urllib.error
import urllib.request
from typing import Callable, Sequence


from . import streams, tenants
from .app import NotifyApp, StartupError
from .auth import existing_hs256_secret, mint_token
from .errors import StorageUnavailableError
from .httpserver import listen_sockets
from .logs import configure_logging
from .plugins import PluginError
from .push import new_vapid_pair
from .redis_link import REDIS_ERRORS, RedisLink
from .settings import Settings, SettingsError, load_settings
from .store import sqlite_path, storage_url
from .store.importer import import_nx27017
from .store.nx27017 import Nx27017Error
from .store.sqlite import SqliteStore
from .workers import lower_cpu_priority, reserve_port, run_workers, timers_process, worker_count

log = logging.getLogger("mojavox_notify")

# `serve` ends with this when storage stayed unavailable past storage.exit_after_seconds, so a
# supervisor (systemd Restart=on-failure, Kubernetes) starts a fresh process.
EXIT_STORAGE_LOST = 3

DEFAULT_SETTINGS_FILE = "settings.yaml"

EXPECTED_ERRORS = (SettingsError, PluginError, StartupError, Nx27017Error, StorageUnavailableError,
                   streams.StreamUnavailableError, FileNotFoundError)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    return _reporting_errors(lambda: args.run(args))


def _reporting_errors(run: Callable[[], int]) -> int:
    """An expected failure is one line on stderr and status 2, never a traceback."""
    try:
        return run()
    except EXPECTED_ERRORS as error:
        print(f"mojavox-notify: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `mojavox-notify token ... | head -c 10`: the reader left; say nothing more to it.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mojavox-notify", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="MOJAVOX Notify: real-time notifications for dashboards (WebSocket, REST, "
                    "web push) with event-source plugins.",
        epilog="Settings come from --settings, else $MOJAVOX_SETTINGS, else ./settings.yaml if "
               "present, else the defaults;\nenvironment variables override them "
               "(MOJAVOX_<SECTION>__<KEY>, and WS_PORT, JWT_SECRET, ...).\n"
               "Run `mojavox-notify COMMAND --help` for each command.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = _command(commands, "serve", "run the HTTP and WebSocket server",
                     "Serve REST and the dashboard socket until SIGTERM or SIGINT, which stop it "
                     "cleanly.\nExit status 3: storage stayed unavailable past "
                     "storage.exit_after_seconds.",
                     "mojavox-notify serve --settings /etc/mojavox/settings.yaml --port 3001")
    serve.add_argument("--host", help="address to bind (server.host)")
    serve.add_argument("--port", type=int, help="port to listen on (server.port, WS_PORT)")
    serve.add_argument("--workers", type=int, metavar="N",
                       help="server processes on this port, fanned out through Redis; "
                            "0 = one per core (server.workers)")
    serve.set_defaults(run=_serve)

    token = _command(commands, "token", "print a JWT signed with the server's HS256 secret",
                     "Mint a token for development and tests with the secret the server uses "
                     "(auth.secret / JWT_SECRET,\nor the development secret it created in "
                     "data_dir). RS256/ES256 tokens come from your identity provider.",
                     "mojavox-notify token --user alice\n"
                     "  mojavox-notify token --user billing-service --roles service --ttl 86400\n"
                     "  mojavox-notify token --user alice --tenant north-collections")
    token.add_argument("--user", required=True, help="the user id (sub claim)")
    token.add_argument("--tenant", type=_tenant, default=None,
                       help="the tenant claim (default: none, the default tenant; a service "
                            "token without one is a platform service)")
    token.add_argument("--roles", default="", help="comma-separated roles, e.g. service,admin")
    token.add_argument("--ttl", type=_positive_int, default=None,
                       help="lifetime in seconds (default: auth.token_ttl_seconds)")
    token.set_defaults(run=_token)

    vapid = _command(commands, "vapid-keys", "print a new VAPID key pair as environment lines",
                     "Print VAPID_PUBLIC_KEY and VAPID_PRIVATE_KEY (base64url, raw P-256) for "
                     "web push.", "mojavox-notify vapid-keys >> /etc/mojavox/env", settings=False)
    vapid.set_defaults(run=_vapid_keys)

    emit = _command(commands, "emit", "post one domain event to a running server",
                    "POST /api/events with a service token: minted from the server's HS256 "
                    "secret, or given with --token;\nwith --stream, add it to a configured "
                    "stream (ingest) and print the entry's id.",
                    "mojavox-notify emit payment.received --id pay-1 \\\n"
                    "    --data '{\"userId\":\"alice\",\"amount\":2450,\"accountId\":\"AC-1\","
                    "\"debtorName\":\"John Smith\"}'")
    emit.add_argument("type", metavar="TYPE", help="event type, e.g. payment.received")
    emit.add_argument("--data", required=True, help="the event's data as a JSON object")
    emit.add_argument("--id", dest="event_id", help="event id; repeating it creates nothing new")
    emit.add_argument("--stream", metavar="NAME",
                      help="add the event to this configured stream instead (as /healthz names "
                           "it, e.g. redis:mojavox:events), for the server to consume")
    emit.add_argument("--url", help="server base URL (default: from the settings)")
    emit.add_argument("--token", help="a token with the service role (default: minted from the "
                                      "server's HS256 secret); also $MOJAVOX_TOKEN")
    emit.set_defaults(run=_emit)

    cleanup = _command(commands, "cleanup", "delete expired and past-retention notifications",
                       "Delete notifications past their expiresAt or retention.days, once (the "
                       "server also does it every\nretention.cleanup_interval_minutes). Safe "
                       "beside a running server.", "mojavox-notify cleanup --settings settings.yaml")
    cleanup.set_defaults(run=_cleanup)

    importer = _command(commands, "import-nx27017", "copy the earlier embedded storage "
                        "(data_dir/mongo) into SQLite, once",
                        "Copy notifications, settings, push subscriptions and event ids of the "
                        "nx-27017 data folder into the\nSQLite file, with the server stopped.",
                        "mojavox-notify import-nx27017 --settings settings.yaml")
    importer.set_defaults(run=_import_nx27017)

    check = _command(commands, "check", "validate settings, plugins and connectivity",
                     "Load the settings and plugins and reach storage; exit 2 with one line "
                     "naming what is wrong.", "mojavox-notify check --settings settings.yaml")
    check.set_defaults(run=_check)
    return parser


def _command(commands, name: str, summary: str, description: str, example: str,
             settings: bool = True) -> argparse.ArgumentParser:
    command = commands.add_parser(name, help=summary, description=description,
                                  epilog=f"example:\n  {example}",
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    if settings:
        command.add_argument("--settings", metavar="PATH",
                             help="settings file (default: $MOJAVOX_SETTINGS, else ./settings.yaml "
                                  "if present, else the defaults)")
    return command


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive whole number of seconds (got {text!r})")
    return value


def _load(args, **overrides) -> Settings:
    return load_settings(settings_file(args.settings), overrides=overrides)


def settings_file(given: str | None) -> str | None:
    """--settings, else $MOJAVOX_SETTINGS, else ./settings.yaml when there is one."""
    if given:
        return given
    if os.environ.get("MOJAVOX_SETTINGS"):
        return os.environ["MOJAVOX_SETTINGS"]
    return DEFAULT_SETTINGS_FILE if os.path.exists(DEFAULT_SETTINGS_FILE) else None


def _serve(args) -> int:
    settings = _load(args, **{"server.host": args.host, "server.port": args.port,
                              "server.workers": args.workers})
    configure_logging(settings.logging)
    if settings_file(args.settings) is None:
        log.info("no settings file (--settings, $MOJAVOX_SETTINGS or ./settings.yaml): running on "
                 "the defaults and the environment; `mojavox-notify check` tells what is in use")
    count = worker_count(settings)
    own_timers = timers_process(settings)
    if count == 1 and not own_timers:
        return asyncio.run(_serve_until_signalled(settings))
    try:
        settings = reserve_port(settings)
    except OSError as error:
        raise StartupError(f"cannot listen on {settings.server.host}:{settings.server.port}: "
                           f"{error.strerror or error}") from None
    asyncio.run(_update_embedded_file(settings))

    def worker(settings: Settings, index: int, ready: Callable[[], None]) -> int:
        return _reporting_errors(lambda: asyncio.run(_serve_until_signalled(
            settings, worker=index, ready=ready, role="serve" if own_timers else "all")))

    def timers(settings: Settings, index: int, ready: Callable[[], None]) -> int:
        lower_cpu_priority()
        return _reporting_errors(lambda: asyncio.run(
            _serve_until_signalled(settings, worker=index, ready=ready, role="fire")))

    return run_workers(settings, count, worker, timers if own_timers else None)


async def _update_embedded_file(settings: Settings) -> None:
    """Before the workers start: bring an embedded file of an earlier schema up to date here
    (about a minute per million notifications), not in the first worker, whose start-up the
    supervisor gives 120 s. A failure is left for the workers to report."""
    url = storage_url(settings)
    if url.startswith("mongodb"):
        return
    store = SqliteStore(sqlite_path(settings, url), settings.storage)
    try:
        await store.open()
    except StorageUnavailableError:
        pass
    finally:
        await store.close()


async def _serve_until_signalled(settings: Settings, worker: int | None = None,
                                 ready: Callable[[], None] | None = None, role: str = "all") -> int:
    """Serve until SIGTERM/SIGINT. As one of several workers (`worker` is its index), listen
    with SO_REUSEPORT beside the others and call `ready()` once listening. With `role` "fire"
    (the escalation timers' own process) only fire escalation steps, listening nowhere."""
    app = NotifyApp(settings, worker=worker, role=role)
    if not len(app.plugins.types):
        log.warning("no notification types are registered: is plugins.directory (%s) right?",
                    settings.resolve_path(settings.plugins.directory or "."))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        sockets = None
        if worker is not None and app.serves:
            sockets = listen_sockets(settings.server.port, settings.server.host, reuse_port=True)
        await app.start(sockets=sockets)
    except OSError as error:
        await app.stop()
        if not app.serves:  # its one address: /metrics after the workers'
            address = f"{settings.metrics.host}:{app.metrics_bind_port} (metrics.port)"
        else:
            address = f"{settings.server.host}:{settings.server.port}"
        raise StartupError(f"cannot listen on {address}: {error.strerror or error}") from None
    except BaseException:
        await app.stop()
        raise
    _tune_garbage_collection()
    broker = app.broker.name if app.redis is None else f"redis {app.redis.description}"
    if not app.serves:
        log.info("MOJAVOX Notify escalation timers firing (pid %d) · storage: %s · broker: %s",
                 os.getpid(), app.storage_name, broker)
    else:
        log.info("MOJAVOX Notify serving on %s (WebSocket %s) · storage: %s · broker: %s%s",
                 app.url, settings.server.ws_path, app.storage_name, broker,
                 "" if worker is None else f" · worker {worker} (pid {os.getpid()})")
    if not worker and app.serves:  # once, not once per worker
        _print_page_link(settings, app.url)
    if ready is not None:
        ready()
    signalled = asyncio.ensure_future(stop.wait())
    storage_lost = asyncio.ensure_future(app.storage_health.lost.wait())
    await asyncio.wait([signalled, storage_lost], return_when=asyncio.FIRST_COMPLETED)
    signalled.cancel()
    storage_lost.cancel()
    log.info("shutting down")
    await app.stop()
    log.info("stopped")
    if app.storage_health.lost.is_set():
        return EXIT_STORAGE_LOST
    return 0


def _print_page_link(settings: Settings, url: str) -> None:
    """With the development secret (HS256, no JWT_SECRET), a link that opens the notification
    center signed in as `web.demo_user`: nothing else to set up for a first look. Never with a
    real secret or an identity provider's keys."""
    auth = settings.auth
    if not settings.web.page or auth.algorithm != "HS256" or auth.secret:
        return
    token = mint_token(existing_hs256_secret(settings), settings.web.demo_user, [], auth.token_ttl_seconds,
                       auth.audience, auth.issuer)
    print(f"Notification center for {settings.web.demo_user} (development token, valid "
          f"{auth.token_ttl_seconds // 60} min):\n  {url}/#token={token}", flush=True)


def _tune_garbage_collection() -> None:
    """Keep the cyclic collector from pausing fan-out: what start-up built lives as long as the
    process (frozen out of collections), and young collections run every 50,000 allocations
    instead of 700, so a 1,000-user alert no longer triggers full collections over every
    socket's objects (measured: 100-150 ms pauses on one alert in three)."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def _tenant(value: str) -> str:
    if not tenants.valid_tenant(value):
        raise argparse.ArgumentTypeError(tenants.TENANT_RULE)
    return value


def _token(args) -> int:
    settings = _load(args)
    if settings.auth.algorithm != "HS256":
        raise SettingsError("auth.algorithm", "the token command only signs HS256 tokens; "
                            f"{settings.auth.algorithm} tokens come from your identity provider")
    roles = [role.strip() for role in args.roles.split(",") if role.strip()]
    ttl = args.ttl if args.ttl is not None else settings.auth.token_ttl_seconds
    longest = settings.auth.max_token_lifetime_seconds
    if longest and ttl > longest:
        raise SettingsError("auth.max_token_lifetime_seconds", f"is {longest}: the server would "
                            f"refuse a token valid for {ttl} s; ask for a shorter --ttl")
    print(mint_token(existing_hs256_secret(settings), args.user, roles, ttl,
                     settings.auth.audience, settings.auth.issuer, args.tenant), flush=True)
    return 0


def _vapid_keys(args) -> int:
    public, private = new_vapid_pair()
    print(f"VAPID_PUBLIC_KEY={public}")
    print(f"VAPID_PRIVATE_KEY={private}")
    return 0


def _emit(args) -> int:
    settings = _load(args)
    try:
        data = json.loads(args.data)
    except ValueError:
        raise SettingsError("--data", "must be a JSON object") from None
    event = {"type": args.type, "data": data}
    if args.event_id:
        event["id"] = args.event_id
    if args.stream:
        print(asyncio.run(streams.publish(settings, args.stream, event)))
        return 0
    base = (args.url or f"http://127.0.0.1:{settings.server.port}").rstrip("/")
    token = args.token or os.environ.get("MOJAVOX_TOKEN")
    if not token:
        if settings.auth.algorithm != "HS256":
            raise SettingsError("--token", f"is needed: {settings.auth.algorithm} tokens come "
                                "from your identity provider (a token with the service role)")
        token = mint_token(existing_hs256_secret(settings), "mojavox-notify-cli", ["service"], 300,
                           settings.auth.audience, settings.auth.issuer)
    request = urllib.request.Request(
        f"{base}/api/events", data=json.dumps(event).encode(), method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            created = json.loads(response.read())["notifications"]
    except urllib.error.HTTPError as error:
        print(f"mojavox-notify: {error.code}: {_error_message(error)}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as error:
        print(f"mojavox-notify: cannot reach {base}: {getattr(error, 'reason', error)}", file=sys.stderr)
        return 1
    for notification_id in created:
        print(notification_id)
    if not created:
        print("no notification was created (muted by the recipient's settings)", file=sys.stderr)
    return 0


def _error_message(error: urllib.error.HTTPError) -> str:
    try:
        return json.loads(error.read())["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return error.reason


def _cleanup(args) -> int:
    settings = _load(args)
    configure_logging(settings.logging)

    async def run() -> int:
        app = NotifyApp(settings)
        await app.open_storage()
        try:
            return await app.service.cleanup()
        finally:
            await app.stop()

    removed = asyncio.run(run())
    print(f"removed {removed} expired or past-retention notifications")
    return 0


def _import_nx27017(args) -> int:
    settings = _load(args)
    configure_logging(settings.logging)
    url = storage_url(settings)
    if not url.startswith("sqlite:///"):
        raise SettingsError("storage.url", "import-nx27017 copies into the embedded SQLite "
                            "engine: set storage.url to embedded or a sqlite:/// URL")

    async def run():
        store = SqliteStore(sqlite_path(settings, url), settings.storage)
        await store.open()
        try:
            return await import_nx27017(settings, store)
        finally:
            await store.close()

    report = asyncio.run(run())
    print(f"imported {report.notifications} notifications of {report.users} users, "
          f"{report.preferences} channel settings, {report.subscriptions} push subscriptions "
          f"and {report.events} event records from {report.folder} into "
          f"{sqlite_path(settings, url)}")
    return 0


def _check(args) -> int:
    settings = _load(args)
    print(f"settings: ok ({settings_file(args.settings) or 'built-in defaults'})")
    app = NotifyApp(settings)
    if not len(app.plugins.types):
        raise SettingsError("plugins.directory", "no plugin registers a notification type; "
                            f"looked in {settings.resolve_path(settings.plugins.directory or '.')}")
    print(f"plugins: ok ({', '.join(name for name, _ in app.plugins.manager.list_name_plugin()) or 'none'}; "
          f"{len(app.plugins.types)} notification types, {len(app.plugins.event_types)} event types)")

    async def connectivity() -> tuple[str, list[dict]]:
        try:
            await app.open_storage()
            return app.storage_name, [await source.health()
                                      for source in app.build_stream_sources()]
        finally:
            await app.stop()

    storage, sources = asyncio.run(connectivity())
    print(f"storage: ok ({storage})")
    print(f"broker: ok ({asyncio.run(_check_broker(settings))})")
    for report in sources:
        if not report["ok"]:
            raise StartupError(f"stream {report['name']}: does not answer: {report['error']} "
                               "(ingest)")
        print(f"stream {report['name']}: ok ({_backlog(report)})")
    count = worker_count(settings)
    print(f"workers: ok ({count}{' = one per core' if not settings.server.workers else ''}"
          f"{'; escalation timers in a process of their own' if timers_process(settings) else ''})")
    return 0


def _backlog(report: dict) -> str:
    """A source's health as `check` prints it: its group and how far behind it is."""
    shown = [f"{key} {report[key]}" for key in ("group", "durable", "pending", "lag")
             if report.get(key) is not None]
    return ", ".join(shown) or "answers"


async def _check_broker(settings: Settings) -> str:
    """`in-process`, or the Redis URL and its PING time; StartupError when it does not answer."""
    if not settings.redis.url:
        return "in-process"
    link = RedisLink(settings.redis)
    try:
        seconds = await link.ping()
    except REDIS_ERRORS as error:
        raise StartupError(f"broker: redis {link.description} does not answer within "
                           f"{settings.redis.timeout_seconds:g} s: {error or type(error).__name__} "
                           "(redis.url, REDIS_URL)") from None
    finally:
        await link.close()
    return f"redis {link.description}, PING {seconds * 1000:.1f} ms"
