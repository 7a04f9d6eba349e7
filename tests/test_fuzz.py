"""Fuzzing a running server with hypothesis: REST bodies, query strings and paths, socket frames.

Whatever arrives, the server answers: no 5xx, every error in `{"error": {"code", "message"}}`,
a socket survives any bad frame, and the server is healthy afterwards. The app runs on its own
event loop in a thread for the module; each example is one real request over loopback.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
import uuid
from typing import Any

import pytest
import tornado.httpclient
import tornado.websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mojavox_notify.settings import load_settings

from .support.apps import LiveApp
from .support.engines import ENGINES
from .support.paths import PLUGINS_DIR
from .support.sockets import check_server_frame
from .support.tokens import TEST_SECRET, token

FUZZ = settings(deadline=None, suppress_health_check=list(HealthCheck), database=None)
SERVICE = token("fuzz-service", ["service"], ttl=3600)
ENDPOINTS = [
    ("POST", "/api/notifications"), ("GET", "/api/notifications"), ("PUT", "/api/notifications/settings"),
    ("POST", "/api/notifications/push-subscription"), ("DELETE", "/api/notifications/push-subscription"),
    ("POST", "/api/events"), ("PUT", "/api/notifications/{id}/read"), ("DELETE", "/api/notifications/{id}"),
    ("GET", "/api/notifications/unread-count"), ("PUT", "/api/notifications/read-all"),
]


@pytest.fixture(scope="module", params=ENGINES)
def live(request, tmp_path_factory):
    """On both engines: what one stores without complaint (SQLite keeps a 65-bit integer as
    JSON text) another refuses (BSON has no such integer), and neither may answer 500."""
    folder = tmp_path_factory.mktemp("fuzz")
    storage = ({"storage.url": f"sqlite:///{folder / 'notify.db'}"} if request.param == "sqlite" else
               {"storage.url": request.getfixturevalue("mongo_url"),
                "mongodb.database": f"fuzz_{uuid.uuid4().hex[:12]}"})
    live = LiveApp(load_settings(None, environ={}, overrides={
        "data_dir": str(folder), **storage,
        "auth.secret": TEST_SECRET, "plugins.directory": str(PLUGINS_DIR),
        "retention.cleanup_interval_minutes": 0, "rate_limits.requests_per_minute": 0,
        "rate_limits.notifications_per_minute": 0, "auth.failed_per_minute_per_ip": 0,
        "websocket.messages_per_second": 0, "websocket.close_above_messages_per_second": 0}))
    yield live
    status, health = live.run(live.request("GET", "/healthz", None, None))
    live.stop()
    assert status == 200 and health["status"] == "ok", health


# -- strategies ----------------------------------------------------------------------------------

any_char = st.characters(codec=None, categories=None)  # surrogates and NUL included
texts = st.one_of(st.text(max_size=40), st.text(alphabet=any_char, max_size=12),
                  st.sampled_from(["payment_received", "call_escalation", "high", "critical", "all",
                                   "/payment-history", "https://push.example.com/x", "", " "]))
numbers = st.one_of(st.integers(), st.integers(min_value=2 ** 63 - 2, max_value=2 ** 70),
                    st.integers(max_value=-(2 ** 63) + 2, min_value=-(2 ** 70)),
                    st.floats(allow_nan=True, allow_infinity=True))
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
json_values = st.recursive(scalars, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(texts, children, max_size=4)), max_leaves=12)
FIELDS = ["userId", "type", "title", "message", "priority", "data", "actionUrl", "expiresAt", "id",
          "channels", "endpoint", "keys", "occurredAt", "userIds", "amount", "accountId", "debtorName"]
objects = st.dictionaries(st.one_of(st.sampled_from(FIELDS), texts), json_values, max_size=8)


def encode(value: Any) -> bytes:
    """JSON as a careless client would send it: NaN and huge integers, lone surrogates escaped."""
    return json.dumps(value, allow_nan=True, ensure_ascii=True).encode()


# Valid requests with one field replaced or added: these get past the first checks, so hostile
# values reach sanitizing, storage and the wire.
VALID = {
    "draft": {"userId": "fuzz-user", "type": "payment_received", "title": "Paid", "message": "$1",
              "data": {"amount": 1}},
    "event": {"type": "payment.received", "id": "e-1",
              "data": {"userId": "fuzz-user", "amount": 1, "accountId": "A-1", "debtorName": "D"}},
    "subscription": {"endpoint": "https://push.example.com/send/1",
                     "keys": {"p256dh": "BKey", "auth": "secret"}},
    "settings": {"channels": {"payment_received": {"push": True}}},
}


@st.composite
def mutated(draw) -> dict:
    value = json.loads(json.dumps(VALID[draw(st.sampled_from(sorted(VALID)))]))
    target = value
    if "data" in value and draw(st.booleans()):
        target = value["data"]
    elif "keys" in value and draw(st.booleans()):
        target = value["keys"]
    target[draw(st.one_of(st.sampled_from(sorted(target)), st.sampled_from(FIELDS), texts))] = draw(json_values)
    return value


bodies = st.one_of(mutated().map(encode), mutated().map(encode), objects.map(encode),
                   json_values.map(encode), st.binary(max_size=200),
                   st.sampled_from([b"", b"[" * 5000, b'{"a":' * 200, b"\xff\xfe", b"null"]))
who = st.sampled_from(["service", "user", "none", "garbage"])


def bearer(live: LiveApp, kind: str) -> str | None:
    return {"service": SERVICE, "user": token(live.user), "none": None, "garbage": "eyJ.x.y"}[kind]


def assert_answered(status: int, body: Any) -> None:
    assert status < 500, (status, body)
    if status >= 400:
        assert isinstance(body, dict) and set(body) == {"error"}, (status, body)
        assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str)


# -- REST ------------------------------------------------------------------------------------

@settings(FUZZ, max_examples=1000)
@given(endpoint=st.sampled_from(ENDPOINTS), body=bodies, caller=who,
       key=st.one_of(st.none(), st.text(max_size=20).filter(lambda k: "\n" not in k and "\r" not in k)))
def test_fuzzed_rest_bodies_never_get_a_5xx(live, endpoint, body, caller, key):
    method, path = endpoint
    headers = {"Content-Type": "application/json"}
    if key is not None and key.isascii():
        headers["Idempotency-Key"] = key
    status, answer = live.run(live.request(method, path.format(id=live.notification_id),
                                           bearer(live, caller), body, headers))
    assert_answered(status, answer)


query_values = st.one_of(texts, st.integers(min_value=-(2 ** 70), max_value=2 ** 70).map(str),
                         st.sampled_from(["1e3", "0x10", "-0", "9" * 5000, "true", "%ff"]))


@settings(FUZZ, max_examples=400)
@given(params=st.dictionaries(st.sampled_from(["limit", "offset", "unreadOnly", "token", "x"]),
                              query_values, max_size=4),
       segment=st.one_of(st.none(), st.text(alphabet=any_char, max_size=30)))
def test_fuzzed_query_strings_and_paths_never_get_a_5xx(live, params, segment):
    query = urllib.parse.urlencode(params, encoding="utf-8", errors="surrogatepass")
    path = "/api/notifications"
    if segment is not None:
        path += "/" + urllib.parse.quote(segment.encode("utf-8", "surrogatepass"), safe="") + "/read"
    status, answer = live.run(live.request("GET" if segment is None else "PUT", f"{path}?{query}",
                                           token(live.user), None))
    assert_answered(status, answer)


# -- the socket --------------------------------------------------------------------------------

CLIENT_TYPES = ["subscribe", "unsubscribe", "mark_read", "mark_all_read", "get_history", "ping",
                "resume", "refresh_token"]
frames = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(CLIENT_TYPES)},
                          optional={name: json_values for name in
                                    ["channels", "notificationId", "limit", "offset", "unreadOnly",
                                     "since", "token"]}).map(encode),
    objects.map(encode), json_values.map(encode), st.binary(max_size=100),
    st.text(alphabet=any_char, max_size=50).map(lambda text: text.encode("utf-8", "surrogatepass")))


@pytest.fixture(scope="module")
def live_socket(live):
    async def connect():
        connection = await tornado.websocket.websocket_connect(
            f"ws://127.0.0.1:{live.app.port}/ws/notifications?token={token(live.user)}")
        connected = json.loads(await connection.read_message())
        assert connected["type"] == "connected"
        return connection

    connection = live.run(connect())
    yield connection
    live.loop.call_soon_threadsafe(connection.close)


async def answer_of(connection, frame: bytes) -> list[dict]:
    """Send `frame` and then a ping; every frame up to the pong (the socket must still be open)."""
    try:
        text = frame.decode()
        await connection.write_message(text)
    except UnicodeDecodeError:
        await connection.write_message(frame, binary=True)
    await connection.write_message('{"type":"ping"}')
    received = []
    while True:
        message = await asyncio.wait_for(connection.read_message(), 10)
        assert message is not None, f"the socket closed ({connection.close_code}) after {frame[:100]!r}"
        received.append(json.loads(message))
        check_server_frame(received[-1])
        if received[-1]["type"] == "pong":
            return received


@settings(FUZZ, max_examples=600)
@given(frame=frames)
def test_fuzzed_socket_frames_never_close_the_socket(live, live_socket, frame):
    for received in live.run(answer_of(live_socket, frame)):
        if received["type"] == "error":
            assert received["code"] != "internal_error", received
            assert isinstance(received["message"], str)
