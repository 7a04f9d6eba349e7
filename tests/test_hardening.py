"""Hostile input and misbehaving clients: every answer in the error shape, never a 500, every
resource bounded, no token in any log (the conftest's guard checks every test for that)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request

import pytest

from mojavox_notify.app import NotifyApp
from mojavox_notify.errors import RateLimitedError
from mojavox_notify.ratelimit import RateLimiter

from .support.api import post_event
from .support.healthwatch import HealthWatch
from .support.sockets import Socket
from .support.tokens import new_user, token

BASE = "/api/notifications"
SERVICE = token("test-service", ["service"])
bounded = pytest.mark.timeout(60)


async def exchange(app, request: bytes, timeout: float = 5.0) -> tuple[int | None, dict | None, bytes]:
    """Send raw bytes, read until the server closes or `timeout`: (status, JSON body, raw)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    try:
        writer.write(request)
        await writer.drain()
    except ConnectionError:
        pass
    received = b""
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                received += chunk
    except (TimeoutError, ConnectionError):
        pass
    writer.close()
    if not received.startswith(b"HTTP/1.1 "):
        return None, None, received
    head, _, body = received.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    try:
        return status, json.loads(body), received
    except ValueError:
        return status, None, received


def error_shape(body) -> bool:
    return (isinstance(body, dict) and set(body) == {"error"}
            and isinstance(body["error"].get("code"), str) and isinstance(body["error"].get("message"), str))


# -- input of every shape: a 400 naming the field, never a 500 ---------------------------------

@bounded
@pytest.mark.parametrize("raw, field", [
    (b"[" * 60_000, "body"),
    (b'{"userId":"a","type":"payment_received","title":"t","message":"m","data":' + b'{"a":' * 40
     + b"1" + b"}" * 41, "data"),
    (b'{"userId":"a","type":["payment_received"],"title":"t","message":"m"}', "type"),
    (b'{"userId":"a","type":{"x":1},"title":"t","message":"m"}', "type"),
    (b'{"userId":"\\ud800","type":"payment_received","title":"t","message":"m"}', "userId"),
    (b'{"userId":"a","type":"payment_received","title":"\\udfff","message":"m"}', "title"),
    (b'{"userId":"a","type":"payment_received","title":"t\\u0000","message":"m"}', "title"),
    (b'{"userId":"a","type":"payment_received","title":"t","message":"m","data":{"n":18446744073709551616}}',
     "data.n"),
    (b'{"userId":"a","type":"payment_received","title":"t","message":"m","data":{"n":NaN}}', "body"),
])
async def test_a_hostile_body_is_a_400_naming_the_field(start_app, raw, field):
    app = await start_app()
    status, body = await app.api.post(BASE, SERVICE, raw_body=raw)
    assert status == 400 and error_shape(body), body
    assert body["error"]["message"].startswith(field), body


@bounded
async def test_an_event_with_a_lone_surrogate_or_a_huge_amount_is_a_400(start_app):
    app = await start_app()
    for event_id, data, field in (
            ("\ud800", {"userId": new_user(), "amount": 1, "accountId": "A", "debtorName": "D"}, "id"),
            ("pay-1", {"userId": new_user(), "amount": 10 ** 30, "accountId": "A", "debtorName": "D"},
             "data.amount")):
        raw = json.dumps({"type": "payment.received", "id": event_id, "data": data}).encode()
        status, body = await app.api.post("/api/events", SERVICE, raw_body=raw)
        assert status == 400 and body["error"]["message"].startswith(f"{field}:"), body


@bounded
@pytest.mark.parametrize("path, body, field", [
    (BASE, {"userId": "a", "type": "payment_received", "title": "t", "message": "m",
            "expiresAt": "9999-12-31T23:59:59-05:00"}, "expiresAt"),
    ("/api/events", {"type": "payment.received", "occurredAt": "0001-01-01T00:00:00+05:00",
                     "data": {"userId": "a", "amount": 1, "accountId": "A", "debtorName": "D"}},
     "occurredAt"),
])
async def test_a_time_beyond_the_calendar_in_utc_is_a_400_naming_the_field(start_app, path, body, field):
    app = await start_app()
    status, answer = await app.api.post(path, SERVICE, body)
    assert status == 400 and answer["error"]["message"].startswith(f"{field}:"), answer


@bounded
async def test_a_push_endpoint_with_a_lone_surrogate_is_a_400(start_app):
    app = await start_app()
    raw = b'{"endpoint":"https://push.example.com/\\ud800","keys":{"p256dh":"BKey","auth":"secret"}}'
    status, body = await app.api.post(f"{BASE}/push-subscription", token(new_user()), raw_body=raw)
    assert status == 400 and body["error"]["message"].startswith("endpoint:"), body


@bounded
@pytest.mark.parametrize("query", ["offset=9223372036854775808", "offset=-1", "limit=1e3",
                                   "offset=" + "9" * 5000, "offset=2147483648"])
async def test_a_hostile_page_is_a_400(start_app, query):
    app = await start_app()
    status, body = await app.api.get(f"{BASE}?{query}", token(new_user()))
    assert status == 400 and error_shape(body), body


@bounded
async def test_a_hostile_socket_frame_gets_an_error_and_the_socket_stays_open(start_app):
    app = await start_app()
    user = new_user()
    socket = await Socket.open(app, token(user))
    await socket.expect("connected")
    for frame in ("[" * 60_000, '{"type":"get_history","offset":9223372036854775808}',
                  '{"type":"get_history","offset":18446744073709551616}',
                  '{"type":"subscribe","channels":[{"a":1}]}', '{"type":["ping"]}',
                  '{"type":"mark_read","notificationId":"\\ud800"}', b"\xff\xfe"):
        await socket.send(frame)
        error = await socket.expect("error")
        assert error["code"] in ("invalid_json", "invalid_request", "invalid_message"), error
    await socket.send({"type": "ping"})
    assert (await socket.expect("pong"))["type"] == "pong"


# -- no request holds up the others --------------------------------------------------------------

# Distinct keys as short as they come, as many as the body limit takes (7,700).
SHORT_KEYS = [f"{n:03x}" for n in range(4096)] + [f"{n:04x}" for n in range(4096, 7700)]


def compact(value) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


# Each fits the header or body limit, and each held the event loop (every other request and
# socket) for half a second to three: echoed into the access line, a 60 KB run of "eyJ" made the
# token redaction quadratic; a long key over a long list made every element's field path a copy
# of the key (half a gigabyte of them at once); an unknown channel per key made the schema check
# report every one of them.
HOSTILE_REQUESTS = {
    "a 404 path": ("GET", "/" + "eyJ" * 20000, None, None),
    "a settings key": ("PUT", f"{BASE}/settings", "user", compact({"channels": {"eyJ" * 20000: {"push": True}}})),
    "a query value": ("GET", f"{BASE}?unreadOnly=" + "eyJ" * 15000, "user", None),
    "a notification id": ("GET", f"{BASE}/" + "eyJ" * 20000, "user", None),
    "a key over a long list": ("POST", BASE, "service", compact({"k" * 30000: [1] * 17000})),
    "thousands of unknown channels": ("PUT", f"{BASE}/settings", "user",
                                      compact({"channels": {key: 0 for key in SHORT_KEYS}})),
}


@bounded
@pytest.mark.parametrize("name", sorted(HOSTILE_REQUESTS))
async def test_a_hostile_request_holds_up_no_other_request(start_app, name):
    app = await start_app(**{"rate_limits.requests_per_minute": 0})
    method, path, caller, body = HOSTILE_REQUESTS[name]
    bearer = {"user": token(new_user()), "service": SERVICE, None: None}[caller]
    async with HealthWatch(app) as watch:
        status, answer = await app.api.call(method, path, bearer, raw_body=body)
    assert status in (400, 404) and error_shape(answer), (status, str(answer)[:300])
    assert len(answer["error"]["message"]) < 1000, "the client's input is echoed bounded"
    assert watch.longest < 0.25, f"/healthz waited {watch.longest:.2f} s behind {name}"


# -- answers made below the application --------------------------------------------------------

@bounded
@pytest.mark.parametrize("request_bytes, status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"POST /api/events HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n"
     b"Authorization: Bearer " + SERVICE.encode() + b"\r\n\r\nhello", 400),
    (b"POST /api/events HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n"
     b"Authorization: Bearer " + SERVICE.encode() + b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 400),
    (b"GET /api/notifications HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n", 431),
])
async def test_tornados_own_refusals_carry_the_json_error_body(start_app, request_bytes, status):
    app = await start_app()
    answered, body, raw = await exchange(app, request_bytes)
    assert answered == status and error_shape(body), raw[:300]


@bounded
async def test_an_oversized_chunked_body_is_a_readable_413(start_app):
    app = await start_app()
    chunk = b"a" * 65536
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(40)) + b"0\r\n\r\n"  # 2.5 MiB
    request = (b"POST /api/notifications HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
               b"Authorization: Bearer " + SERVICE.encode() + b"\r\n\r\n" + body)
    status, answer, raw = await exchange(app, request)
    assert status == 413 and answer["error"]["code"] == "payload_too_large", raw[:300]


@bounded
async def test_a_client_that_does_not_wait_for_100_continue_reads_its_413(start_app):
    """Python's urllib (and requests) send the whole body before reading the answer."""
    app = await start_app()
    request = urllib.request.Request(
        f"http://127.0.0.1:{app.port}{BASE}", data=b"x" * (2 << 20), method="POST",
        headers={"Authorization": f"Bearer {SERVICE}", "Content-Type": "application/json"})

    def post() -> tuple[int, dict]:
        try:
            urllib.request.urlopen(request, timeout=20)
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())
        raise AssertionError("a 2 MiB body was accepted")

    status, body = await asyncio.get_running_loop().run_in_executor(None, post)
    assert status == 413 and body["error"]["code"] == "payload_too_large"


@bounded
async def test_a_stalled_body_is_timed_out(start_app):
    app = await start_app(**{"server.body_timeout_seconds": 1})
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    writer.write(b"POST /api/events HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"type\"")
    await writer.drain()
    started = time.monotonic()
    async with asyncio.timeout(10):
        while await reader.read(65536):
            pass
    assert time.monotonic() - started < 5
    writer.close()


@bounded
async def test_a_refused_websocket_handshake_answers_in_json(start_app):
    app = await start_app(**{"server.allowed_origins": ["https://app.mojavox.ai"]})
    status, body = await app.api.get(app.settings.server.ws_path)
    assert status == 400 and error_shape(body), body
    status, body = await app.api.get(app.settings.server.ws_path, headers={
        "Upgrade": "websocket", "Connection": "Upgrade", "Origin": "https://evil.example",
        "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert status == 403 and body["error"]["code"] == "forbidden", body


# -- bounds ------------------------------------------------------------------------------------

@bounded
async def test_sockets_past_the_per_user_cap_are_refused_with_4009(start_app):
    app = await start_app(**{"websocket.max_sockets_per_user": 2})
    user = new_user()
    first, second = await Socket.open(app, token(user)), await Socket.open(app, token(user))
    await first.expect("connected")
    await second.expect("connected")
    third = await Socket.open(app, token(user))
    assert await third.closed() == 4009
    other = await Socket.open(app, token(new_user()))
    await other.expect("connected")
    first.close()
    await asyncio.sleep(0.2)
    again = await Socket.open(app, token(user))
    await again.expect("connected")


@bounded
async def test_sockets_past_the_per_address_cap_are_refused_with_4009(start_app):
    app = await start_app(**{"server.max_sockets_per_ip": 2})
    sockets = [await Socket.open(app, token(new_user())) for _ in range(2)]
    for socket in sockets:
        await socket.expect("connected")
    refused = await Socket.open(app, token(new_user()))
    assert await refused.closed() == 4009


@bounded
async def test_a_ping_flood_is_answered_once_a_second_then_closed_with_1008(start_app):
    app = await start_app(**{"websocket.messages_per_second": 5,
                             "websocket.close_above_messages_per_second": 50})
    socket = await Socket.open(app, token(new_user()))
    await socket.expect("connected")
    for _ in range(20):
        await socket.send({"type": "ping"})
    frames = await socket.quiet(0.5)
    assert [f["type"] for f in frames].count("pong") == 10  # the burst: twice the rate
    assert [f.get("code") for f in frames if f["type"] == "error"] == ["rate_limited"]
    for _ in range(60):
        await socket.send("not json")
    assert await socket.closed() == 1008


@bounded
async def test_failed_authentications_from_one_address_are_slowed_down(start_app):
    app = await start_app(**{"auth.failed_per_minute_per_ip": 5})
    forged = token(new_user(), secret="not-the-server-secret-0123456789abcdef")
    for _ in range(5):
        status, body = await app.api.get(BASE, forged)
        assert status == 401, body
    status, body = await app.api.get(BASE, token(new_user()))
    assert status == 429 and body["error"]["code"] == "rate_limited", body
    socket = await Socket.open(app, token(new_user()))
    assert await socket.closed() == 4029


def test_failing_addresses_without_end_leave_at_most_the_cap_in_memory(make_settings):
    """Expiry alone would not bound it: an attacker with many addresses fills any window."""
    settings = make_settings()
    failures = NotifyApp(settings).auth_failures
    for n in range(200_000):
        failures.take([f"10.{n >> 16}.{n >> 8 & 255}.{n & 255}"])
    assert 0 < len(failures) <= settings.rate_limits.max_tracked_keys


def test_a_full_limiter_forgets_full_buckets_first_then_the_least_recently_used():
    now = [0.0]
    limiter = RateLimiter(60, "failed authentications", clock=lambda: now[0], max_keys=4)
    limiter.take(["busy"] * 50)  # 10 tokens left, refilled one a second
    limiter.take(["refilled"])
    now[0] = 5.0
    limiter.take(["recent"] * 50)
    now[0] = 10.0  # "refilled" is full again, "busy" is not
    limiter.take(["newest"])
    assert len(limiter) == 4
    limiter.take(["one-too-many"])  # past the cap: down to three quarters of it
    assert len(limiter) == 3
    with pytest.raises(RateLimitedError):
        limiter.take(["recent"] * 20)  # still counted: 15 left
    limiter.take(["busy"] * 60)  # forgotten, so full again: the least recently used went


@bounded
async def test_a_token_valid_for_centuries_is_refused_everywhere(start_app):
    app = await start_app()
    user = new_user()
    forever = token(user, ttl=None, exp=1_000_000_000_000)  # the year 33658
    status, body = await app.api.get(BASE, forever)
    assert status == 401 and "max_token_lifetime_seconds" in body["error"]["message"], body
    socket = await Socket.open(app, forever)
    assert await socket.closed() == 4002


@bounded
async def test_without_a_lifetime_cap_a_far_future_token_works_on_the_socket(start_app):
    app = await start_app(**{"auth.max_token_lifetime_seconds": 0})
    user = new_user()
    socket = await Socket.open(app, token(user, ttl=None, exp=1_000_000_000_000))
    assert (await socket.expect("connected"))["type"] == "connected"
    await socket.send({"type": "refresh_token", "token": token(user, ttl=None, exp=2_000_000_000_000)})
    assert (await socket.expect("token_refreshed"))["expiresAt"] == "9999-12-31T00:00:00.000Z"
    await socket.send({"type": "ping"})
    await socket.expect("pong")


@bounded
async def test_refreshing_with_a_token_expired_within_the_leeway_is_refused(start_app):
    app = await start_app()
    user = new_user()
    socket = await Socket.open(app, token(user))
    await socket.expect("connected")
    await socket.send({"type": "refresh_token", "token": token(user, ttl=-5)})
    error = await socket.expect("error")
    assert error["code"] == "token_expired", error
    await socket.send({"type": "ping"})
    await socket.expect("pong")


# -- idempotent creation -----------------------------------------------------------------------

@bounded
async def test_an_idempotency_key_makes_a_retried_create_return_the_first(start_app):
    app = await start_app()
    user = new_user()
    draft = {"userId": user, "type": "payment_received", "title": "Paid", "message": "$10"}
    key = {"Idempotency-Key": f"retry-{user}"}
    first = await app.api.client.fetch(
        f"{app.api.base_url}{BASE}", method="POST", body=json.dumps(draft), raise_error=False,
        headers={**key, "Authorization": f"Bearer {SERVICE}", "Content-Type": "application/json"})
    again = await app.api.client.fetch(
        f"{app.api.base_url}{BASE}", method="POST", body=json.dumps(draft), raise_error=False,
        headers={**key, "Authorization": f"Bearer {SERVICE}", "Content-Type": "application/json"})
    assert (first.code, again.code) == (201, 201)
    assert json.loads(first.body)["id"] == json.loads(again.body)["id"]
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert "Idempotent-Replayed" not in first.headers
    status, page = await app.api.get(BASE, token(user))
    assert page["total"] == 1

    status, body = await app.api.post(BASE, SERVICE, {**draft, "message": "$20"}, headers=key)
    assert status == 400 and body["error"]["code"] == "idempotency_key_conflict", body
    status, body = await app.api.post(BASE, SERVICE, draft, headers={"Idempotency-Key": "bad key"})
    assert status == 400 and body["error"]["message"].startswith("Idempotency-Key:"), body


@bounded
async def test_concurrent_requests_with_one_idempotency_key_create_one(start_app):
    app = await start_app()
    user = new_user()
    draft = {"userId": user, "type": "payment_received", "title": "Paid", "message": "$10"}
    answers = await asyncio.gather(*(app.api.post(BASE, SERVICE, draft, headers={"Idempotency-Key": "k1"})
                                     for _ in range(10)))
    assert {status for status, _ in answers} == {201}
    assert len({body["id"] for _, body in answers}) == 1
    status, page = await app.api.get(BASE, token(user))
    assert page["total"] == 1


# -- stopping under load -----------------------------------------------------------------------

@bounded
async def test_requests_in_flight_when_the_server_stops_are_answered(start_app):
    app = await start_app(**{"rate_limits.notifications_per_minute": 0})
    users = [new_user() for _ in range(200)]
    sockets = [await Socket.open(app, token(user)) for user in users[:50]]
    for socket in sockets:
        await socket.expect("connected")
    posts = [asyncio.ensure_future(post_event(
        app, "system.alert", {"userIds": users, "severity": "warning", "title": "Maintenance",
                                  "message": f"in {n} min"}))
        for n in range(10)]  # the HTTP client's connection limit: all in flight at once
    async with asyncio.timeout(10):
        while len(app.in_flight) < len(posts):
            await asyncio.sleep(0.001)
    await app.stop()
    answers = await asyncio.gather(*posts)
    assert [status for status, _ in answers] == [202] * len(posts)
    assert [await socket.closed() for socket in sockets] == [1001] * len(sockets)
