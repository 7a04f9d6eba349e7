"""JWT authentication over REST: HS256, RS256 and ES256 with pinned algorithms, claims, JWKS."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
import tornado.httpclient
import tornado.httpserver
import tornado.netutil
import tornado.web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mojavox_notify.auth import build_verifier
from mojavox_notify.errors import AuthenticationError

from .support.sockets import Socket
from .support.tokens import TEST_SECRET, new_user, token

LIST = "/api/notifications"


def assert_error(body, code: str | None = None) -> dict:
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def hand_made_token(header: dict, claims: dict, signature: bytes = b"") -> str:
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64url(signature)}"


AUDIENCE = "mojavox-notify"


def claims_for(user: str, ttl: float = 3600, **extra) -> dict:
    """Claims as an identity provider issues them for this service (its audience)."""
    now = int(time.time())
    return {"sub": user, "roles": [], "iat": now, "exp": now + int(ttl), "aud": AUDIENCE, **extra}


def idp(algorithm: str, **key_source) -> dict:
    """Settings for an identity provider's tokens (RS256/ES256): one key source and this
    service's audience, which start-up requires with a public key."""
    return {"auth.algorithm": algorithm, "auth.audience": AUDIENCE,
            **{f"auth.{name}": value for name, value in key_source.items()}}


def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(private_key) -> str:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


# -- HS256 -----------------------------------------------------------------------------------

@pytest.mark.timeout(30)
async def test_valid_token_lists_the_users_notifications(start_app):
    app = await start_app()
    user = new_user()
    status, body = await app.api.get(LIST, token(user))
    assert status == 200
    assert body["notifications"] == [] and body["total"] == 0


@pytest.mark.timeout(30)
async def test_expired_token_is_refused(start_app):
    app = await start_app()
    status, body = await app.api.get(LIST, token(new_user(), ttl=-3600))
    assert status == 401
    assert_error(body, "token_expired")


@pytest.mark.timeout(30)
async def test_token_expired_within_the_leeway_is_still_accepted(start_app):
    app = await start_app(**{"auth.leeway_seconds": 60})
    status, _ = await app.api.get(LIST, token(new_user(), ttl=-10))
    assert status == 200


@pytest.mark.timeout(30)
async def test_forged_signature_is_refused(start_app):
    app = await start_app()
    forged = token(new_user(), secret="another-secret-of-more-than-32-bytes-000")
    status, body = await app.api.get(LIST, forged)
    assert status == 401
    assert_error(body, "token_invalid")


@pytest.mark.timeout(30)
async def test_tampered_claims_are_refused(start_app):
    app = await start_app()
    header, _, signature = token(new_user()).split(".")
    other_claims = b64url(json.dumps(claims_for(new_user(), roles=["service"])).encode())
    status, body = await app.api.get(LIST, f"{header}.{other_claims}.{signature}")
    assert status == 401
    assert_error(body, "token_invalid")


@pytest.mark.timeout(30)
async def test_alg_none_token_is_refused(start_app):
    app = await start_app()
    unsigned = hand_made_token({"alg": "none", "typ": "JWT"}, claims_for(new_user(), roles=["service"]))
    for value in (unsigned, unsigned.rstrip(".") + "."):
        status, body = await app.api.get(LIST, value)
        assert status == 401
        assert_error(body, "token_invalid")


@pytest.mark.timeout(30)
async def test_token_without_exp_is_refused(start_app):
    app = await start_app()
    status, body = await app.api.get(LIST, token(new_user(), ttl=None))
    assert status == 401
    assert "exp" in assert_error(body, "token_invalid")["message"]


@pytest.mark.timeout(30)
async def test_a_token_whose_exp_is_a_numeric_string_is_refused(start_app):
    app = await start_app()
    stringly = token(new_user(), ttl=None, exp=str(int(time.time()) + 3600))
    status, body = await app.api.get(LIST, stringly)
    assert status == 401
    assert "exp" in assert_error(body, "token_invalid")["message"]
    socket = await Socket.open(app, stringly)
    assert await socket.closed() == 4002


@pytest.mark.timeout(30)
async def test_token_without_sub_is_refused(start_app):
    app = await start_app()
    claims = {"roles": [], "exp": int(time.time()) + 3600}
    status, body = await app.api.get(LIST, jwt.encode(claims, TEST_SECRET, algorithm="HS256"))
    assert status == 401
    assert_error(body, "token_invalid")


@pytest.mark.timeout(30)
async def test_roles_that_are_not_a_list_of_strings_are_refused(start_app):
    app = await start_app()
    status, body = await app.api.get(LIST, token(new_user(), roles=[1, 2]))
    assert status == 401
    assert_error(body, "token_invalid")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("claims", [
    {"sub": "alice\n2026-01-27 20:30:00,000 INFO mojavox_notify.access: GET /api/plugins 200"},
    {"sub": "bob\r"}, {"sub": "carol\x1b[2K"}, {"sub": "dave\u2028"},
    {"roles": ["service\nadmin"]}, {"roles": "admin\x00"},
])
async def test_a_token_with_control_characters_in_sub_or_roles_is_refused(start_app, claims):
    """A user id is written into log lines: a newline in it would forge one."""
    app = await start_app()
    forged = token(new_user(), **claims)
    status, body = await app.api.get(LIST, forged)
    assert status == 401
    assert_error(body, "token_invalid")
    socket = await Socket.open(app, forged)
    assert await socket.closed() == 4002


@pytest.mark.timeout(30)
async def test_creating_a_notification_without_the_service_role_is_forbidden(start_app):
    app = await start_app()
    user = new_user()
    draft = {"userId": user, "type": "payment_received", "title": "T", "message": "M"}
    status, body = await app.api.post(LIST, token(user, roles=["admin"]), draft)
    assert status == 403
    assert "service" in assert_error(body, "forbidden")["message"]
    status, body = await app.api.get(LIST, token(user))
    assert body["total"] == 0


@pytest.mark.timeout(30)
async def test_creating_a_notification_with_the_service_role_is_allowed(start_app):
    app = await start_app()
    user = new_user()
    draft = {"userId": user, "type": "payment_received", "title": "T", "message": "M"}
    status, _ = await app.api.post(LIST, token(new_user("svc"), roles=["service"]), draft)
    assert status == 201


@pytest.mark.timeout(30)
async def test_missing_token_gives_a_json_401(start_app):
    app = await start_app()
    status, body = await app.api.get(LIST)
    assert status == 401
    assert_error(body, "token_missing")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer   ", "Token abc.def.ghi",
                                    "Bearer not-a-jwt", "Bearer a.b.c"])
async def test_malformed_authorization_header_gives_a_json_401(start_app, header):
    app = await start_app()
    status, body = await app.api.get(LIST, headers={"Authorization": header})
    assert status == 401
    assert_error(body)
    assert body["error"]["code"] in ("token_missing", "token_invalid")


@pytest.mark.timeout(30)
async def test_bearer_scheme_is_case_insensitive(start_app):
    app = await start_app()
    status, _ = await app.api.get(LIST, headers={"Authorization": f"bearer {token(new_user())}"})
    assert status == 200


# -- RS256 / ES256 -----------------------------------------------------------------------------

@pytest.mark.timeout(30)
async def test_rs256_token_is_accepted_with_a_configured_public_key(start_app):
    key = rsa_key()
    app = await start_app(**idp("RS256", public_key=public_pem(key)))
    user = new_user()
    signed = jwt.encode(claims_for(user), key, algorithm="RS256")
    status, body = await app.api.get(LIST, signed)
    assert status == 200, body


@pytest.mark.timeout(30)
async def test_rs256_public_key_can_come_from_a_file(start_app, tmp_path):
    key = rsa_key()
    key_file = tmp_path / "idp-public.pem"
    key_file.write_text(public_pem(key), encoding="utf-8")
    app = await start_app(**idp("RS256", public_key_file=str(key_file)))
    status, _ = await app.api.get(LIST, jwt.encode(claims_for(new_user()), key, algorithm="RS256"))
    assert status == 200


@pytest.mark.timeout(30)
async def test_rs256_token_signed_by_another_key_is_refused(start_app):
    app = await start_app(**idp("RS256", public_key=public_pem(rsa_key())))
    signed = jwt.encode(claims_for(new_user()), rsa_key(), algorithm="RS256")
    status, body = await app.api.get(LIST, signed)
    assert status == 401
    assert_error(body, "token_invalid")


@pytest.mark.timeout(30)
async def test_hs256_token_signed_with_the_public_key_is_refused_under_rs256(start_app):
    """Algorithm confusion: the public key is no secret, so it must never verify an HMAC."""
    key = rsa_key()
    pem = public_pem(key)
    app = await start_app(**idp("RS256", public_key=pem))
    header = {"alg": "HS256", "typ": "JWT"}
    claims = claims_for(new_user(), roles=["service"])
    unsigned = hand_made_token(header, claims).rsplit(".", 1)[0]
    signature = hmac.new(pem.encode(), unsigned.encode(), hashlib.sha256).digest()
    status, body = await app.api.get(LIST, f"{unsigned}.{b64url(signature)}")
    assert status == 401
    assert_error(body, "token_invalid")


@pytest.mark.timeout(30)
async def test_hs256_token_with_the_shared_secret_is_refused_under_rs256(start_app):
    app = await start_app(**idp("RS256", public_key=public_pem(rsa_key())))
    status, _ = await app.api.get(LIST, token(new_user()))
    assert status == 401


@pytest.mark.timeout(30)
async def test_es256_token_is_accepted_with_a_configured_public_key(start_app):
    key = ec.generate_private_key(ec.SECP256R1())
    app = await start_app(**idp("ES256", public_key=public_pem(key)))
    status, _ = await app.api.get(LIST, jwt.encode(claims_for(new_user()), key, algorithm="ES256"))
    assert status == 200
    other = ec.generate_private_key(ec.SECP256R1())
    status, body = await app.api.get(LIST, jwt.encode(claims_for(new_user()), other, algorithm="ES256"))
    assert status == 401
    assert_error(body, "token_invalid")


@pytest.mark.timeout(30)
async def test_rs256_token_is_refused_when_es256_is_configured(start_app):
    key = ec.generate_private_key(ec.SECP256R1())
    app = await start_app(**idp("ES256", public_key=public_pem(key)))
    status, _ = await app.api.get(LIST, jwt.encode(claims_for(new_user()), rsa_key(), algorithm="RS256"))
    assert status == 401


# -- audience and issuer -------------------------------------------------------------------------

@pytest.mark.timeout(30)
async def test_audience_and_issuer_are_enforced_when_configured(start_app):
    app = await start_app(**{"auth.audience": "mojavox-dashboard", "auth.issuer": "https://id.mojavox.ai"})
    user = new_user()
    good = {"aud": "mojavox-dashboard", "iss": "https://id.mojavox.ai"}
    status, _ = await app.api.get(LIST, token(user, **good))
    assert status == 200
    refused = [
        {"iss": "https://id.mojavox.ai"},
        {"aud": "mojavox-dashboard"},
        {**good, "aud": "another-app"},
        {**good, "iss": "https://evil.example"},
    ]
    for claims in refused:
        status, body = await app.api.get(LIST, token(user, **claims))
        assert status == 401, claims
        assert_error(body, "token_invalid")


@pytest.mark.timeout(30)
async def test_another_applications_token_from_a_shared_identity_provider_is_refused(start_app):
    """One identity provider signs for several applications; with a public key, only the
    audience tells this service's tokens from theirs (start-up requires it, see test_settings)."""
    key = rsa_key()
    app = await start_app(**idp("RS256", public_key=public_pem(key)))
    admin = new_user("admin")
    ours = claims_for(admin, roles=["admin"])
    status, body = await app.api.get("/api/plugins", jwt.encode(ours, key, algorithm="RS256"))
    assert status == 200, body
    without_aud = {name: value for name, value in ours.items() if name != "aud"}
    for claims in ({**ours, "aud": "crm"}, {**ours, "aud": ["crm", "billing"]}, without_aud):
        status, body = await app.api.get("/api/plugins", jwt.encode(claims, key, algorithm="RS256"))
        assert status == 401, claims
        assert_error(body, "token_invalid")


@pytest.mark.timeout(30)
async def test_with_require_audience_false_a_token_without_aud_is_accepted(start_app):
    key = rsa_key()
    app = await start_app(**{"auth.algorithm": "RS256", "auth.public_key": public_pem(key),
                             "auth.require_audience": False})
    claims = {name: value for name, value in claims_for(new_user()).items() if name != "aud"}
    status, body = await app.api.get(LIST, jwt.encode(claims, key, algorithm="RS256"))
    assert status == 200, body


@pytest.mark.timeout(30)
async def test_audience_is_not_required_with_hs256_when_not_configured(start_app):
    app = await start_app()
    status, _ = await app.api.get(LIST, token(new_user(), aud="whatever", iss="anyone"))
    assert status == 200


# -- JWKS --------------------------------------------------------------------------------------

class JwksHandler(tornado.web.RequestHandler):
    def initialize(self, document: dict, fetches: list, delay: float) -> None:
        self.document = document
        self.fetches = fetches
        self.delay = delay

    async def get(self) -> None:
        self.fetches.append(time.monotonic())
        await asyncio.sleep(self.delay)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(self.document))


def jwk(private_key, kid: str) -> dict:
    entry = jwt.algorithms.RSAAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
    return {**entry, "kid": kid, "use": "sig", "alg": "RS256"}


@pytest.fixture
async def jwks_server():
    """A tiny identity provider on 127.0.0.1: serves `document` at /jwks (after `delay`
    seconds) and counts fetches."""
    servers = []

    def serve(document: dict, delay: float = 0) -> tuple[str, list]:
        fetches: list = []
        application = tornado.web.Application(
            [(r"/jwks", JwksHandler, {"document": document, "fetches": fetches, "delay": delay})])
        server = tornado.httpserver.HTTPServer(application)
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        server.add_sockets(sockets)
        servers.append(server)
        return f"http://127.0.0.1:{sockets[0].getsockname()[1]}/jwks", fetches

    yield serve
    for server in servers:
        server.stop()


@pytest.mark.timeout(30)
async def test_jwks_key_is_chosen_by_the_tokens_kid(start_app, jwks_server):
    first, second = rsa_key(), rsa_key()
    url, fetches = jwks_server({"keys": [jwk(first, "key-1"), jwk(second, "key-2")]})
    app = await start_app(**idp("RS256", jwks_url=url))
    user = new_user()

    for key, kid in ((first, "key-1"), (second, "key-2")):
        signed = jwt.encode(claims_for(user), key, algorithm="RS256", headers={"kid": kid})
        status, body = await app.api.get(LIST, signed)
        assert status == 200, (kid, body)

    swapped = jwt.encode(claims_for(user), first, algorithm="RS256", headers={"kid": "key-2"})
    status, body = await app.api.get(LIST, swapped)
    assert status == 401
    assert_error(body, "token_invalid")

    unknown = jwt.encode(claims_for(user), first, algorithm="RS256", headers={"kid": "key-3"})
    status, body = await app.api.get(LIST, unknown)
    assert status == 401
    assert_error(body, "token_invalid")

    assert len(fetches) == 1, "the JWKS is cached, and an unknown kid does not refetch at once"


@pytest.mark.timeout(30)
async def test_jwks_does_not_allow_an_hs256_token_signed_with_a_published_key(start_app, jwks_server):
    key = rsa_key()
    url, _ = jwks_server({"keys": [jwk(key, "key-1")]})
    app = await start_app(**idp("RS256", jwks_url=url))
    header = {"alg": "HS256", "typ": "JWT", "kid": "key-1"}
    unsigned = hand_made_token(header, claims_for(new_user())).rsplit(".", 1)[0]
    signature = hmac.new(public_pem(key).encode(), unsigned.encode(), hashlib.sha256).digest()
    status, _ = await app.api.get(LIST, f"{unsigned}.{b64url(signature)}")
    assert status == 401


@pytest.mark.timeout(30)
async def test_unreachable_jwks_gives_401_not_500(start_app, jwks_server):
    url, _ = jwks_server({"keys": []})
    app = await start_app(**idp("RS256", jwks_url=url.replace("/jwks", "/gone")))
    signed = jwt.encode(claims_for(new_user()), rsa_key(), algorithm="RS256", headers={"kid": "key-1"})
    status, body = await app.api.get(LIST, signed)
    assert status == 401
    assert_error(body, "token_invalid")


async def concurrently(app, bearers: list[str], path: str = LIST) -> list[int]:
    """GET `path` with each token at once (a client of its own: the shared one queues past 10)."""
    client = tornado.httpclient.AsyncHTTPClient(force_instance=True, max_clients=len(bearers))
    try:
        answers = await asyncio.gather(*(
            client.fetch(app.api.base_url + path, headers={"Authorization": f"Bearer {bearer}"},
                         raise_error=False, request_timeout=20) for bearer in bearers))
    finally:
        client.close()
    return [answer.code for answer in answers]


def unknown_key_tokens(count: int) -> list[str]:
    signer = rsa_key()
    return [jwt.encode(claims_for(new_user()), signer, algorithm="RS256", headers={"kid": f"kid-{n}"})
            for n in range(count)]


@pytest.mark.timeout(30)
async def test_a_burst_of_tokens_with_unknown_key_ids_fetches_the_jwks_once(start_app, jwks_server):
    """Concurrent verifications wait for the one fetch under way instead of starting their own;
    the identity provider is not the attacker's to flood."""
    url, fetches = jwks_server({"keys": [jwk(rsa_key(), "key-1")]}, delay=0.2)
    app = await start_app(**idp("RS256", jwks_url=url), **{"auth.failed_per_minute_per_ip": 0})
    assert await concurrently(app, unknown_key_tokens(40)) == [401] * 40
    assert len(fetches) == 1
    assert await concurrently(app, unknown_key_tokens(40)) == [401] * 40
    assert len(fetches) == 1, "an unknown key id refetches at most every 10 s, counted from the start"


@pytest.mark.timeout(30)
async def test_jwks_fetches_do_not_queue_behind_other_outgoing_requests(start_app, jwks_server):
    """The process's shared HTTP client takes 10 requests at a time; JWKS fetches have one of
    their own, so a verification never waits for other outgoing requests (or they for it)."""
    key = rsa_key()
    url, _ = jwks_server({"keys": [jwk(key, "key-1")]})
    slow_url, _ = jwks_server({"keys": []}, delay=3)
    app = await start_app(**idp("RS256", jwks_url=url))
    shared = tornado.httpclient.AsyncHTTPClient()
    busy = [asyncio.ensure_future(shared.fetch(slow_url, request_timeout=20)) for _ in range(10)]
    await asyncio.sleep(0.1)
    started = time.monotonic()
    signed = jwt.encode(claims_for(new_user()), key, algorithm="RS256", headers={"kid": "key-1"})
    assert await concurrently(app, [signed]) == [200]
    assert time.monotonic() - started < 1.5
    await asyncio.gather(*busy)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("over", ["rest", "socket"])
async def test_a_burst_of_failed_authentications_from_one_address_is_throttled(start_app, jwks_server,
                                                                                over):
    """Each attempt takes its failure from the address's allowance before it is verified (and
    gives it back when the token is good): a burst cannot all pass the check while the first
    verifications wait for the JWKS."""
    key = rsa_key()
    url, _ = jwks_server({"keys": [jwk(key, "key-1")]}, delay=0.2)
    app = await start_app(**idp("RS256", jwks_url=url), **{"auth.failed_per_minute_per_ip": 5})
    forged = unknown_key_tokens(20)
    if over == "rest":
        codes = await concurrently(app, forged)
        assert sorted(codes) == [401] * 5 + [429] * 15, codes
    else:
        sockets = await asyncio.gather(*(Socket.open(app, bearer) for bearer in forged))
        codes = await asyncio.gather(*(socket.closed() for socket in sockets))
        assert sorted(codes) == [4002] * 5 + [4029] * 15, codes


@pytest.mark.timeout(30)
async def test_good_tokens_give_back_what_they_took_from_the_failure_allowance(start_app):
    app = await start_app(**{"auth.failed_per_minute_per_ip": 3})
    for _ in range(10):
        status, _ = await app.api.get(LIST, token(new_user()))
        assert status == 200
    socket = await Socket.open(app, token(new_user()))
    await socket.expect("connected")
    forged = token(new_user(), secret="not-the-server-secret-0123456789abcdef")
    assert [(await app.api.get(LIST, forged))[0] for _ in range(4)] == [401, 401, 401, 429]


# -- verified tokens remembered ------------------------------------------------------------------

@pytest.mark.timeout(30)
async def test_a_verified_token_is_remembered_until_it_expires(make_settings, monkeypatch):
    verifier = build_verifier(make_settings(**{"auth.leeway_seconds": 0}))
    decodes = []
    decode = jwt.decode
    monkeypatch.setattr(jwt, "decode", lambda *args, **kwargs: decodes.append(1) or decode(*args, **kwargs))
    user = new_user()
    short = token(user, ttl=1)
    assert (await verifier.verify(short)).user_id == user
    assert (await verifier.verify(short)).user_id == user
    assert len(decodes) == 1, "the second verification is answered from memory"
    time.sleep(1.1)
    with pytest.raises(AuthenticationError) as refused:
        await verifier.verify(short)
    assert refused.value.code == "token_expired"
    for _ in range(2):
        with pytest.raises(AuthenticationError):
            await verifier.verify(short + "x")  # failures are never remembered
    assert len(decodes) == 4


@pytest.mark.timeout(30)
async def test_a_remembered_token_is_verified_again_once_the_jwks_changes(make_settings, jwks_server):
    first, second = rsa_key(), rsa_key()
    document = {"keys": [jwk(first, "key-1")]}
    url, fetches = jwks_server(document)
    verifier = build_verifier(make_settings(**idp("RS256", jwks_url=url),
                                            **{"auth.jwks_cache_seconds": 1}))
    signed = jwt.encode(claims_for(new_user()), first, algorithm="RS256", headers={"kid": "key-1"})
    await verifier.verify(signed)
    document["keys"] = [jwk(second, "key-2")]  # the identity provider retired key-1
    time.sleep(1.1)
    with pytest.raises(AuthenticationError):
        await verifier.verify(signed)
    assert len(fetches) == 2
    verifier.close()
