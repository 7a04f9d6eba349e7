"""The access log: one line per request (a socket's at its close), with fields, no duplicates,
as text or JSON lines. Every line redacted in linear time, bounded, and one line."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time

import pytest

from mojavox_notify.logs import (MAX_LINE_CHARS, JsonFormatter, RedactCredentials, log_access,
                                 log_handler)
from mojavox_notify.redaction import REDACTED, redact, shorten
from mojavox_notify.settings import LoggingSettings

from .support.logwatch import CredentialWatch
from .support.sockets import Socket
from .support.tokens import new_user, token

bounded = pytest.mark.timeout(30)


def lines_about(caplog, path: str) -> list[logging.LogRecord]:
    return [record for record in caplog.records if path in record.getMessage()]


@bounded
async def test_each_request_is_one_line_with_its_fields(start_app, caplog):
    caplog.set_level(logging.INFO)
    app = await start_app()
    user = new_user()
    await app.api.get("/api/notifications?limit=5", token(user))
    await app.api.post("/api/notifications", token(user), {"userId": user})  # 403: no service role
    await app.api.get("/api/nowhere", token(user))
    [listed] = [r for r in lines_about(caplog, "/api/notifications") if r.fields["method"] == "GET"]
    assert listed.fields == {"method": "GET", "path": "/api/notifications", "status": 200,
                             "duration_ms": listed.fields["duration_ms"], "user": user,
                             "client": "127.0.0.1"}
    assert "limit=5" not in listed.getMessage()
    [refused] = [r for r in lines_about(caplog, "/api/notifications") if r.fields["method"] == "POST"]
    assert (refused.fields["status"], refused.fields["error"]) == (403, "forbidden")
    assert len(lines_about(caplog, "/api/nowhere")) == 1  # the 404 is not logged a second time


@bounded
async def test_a_socket_is_one_line_when_it_closes(start_app, caplog):
    caplog.set_level(logging.INFO)
    app = await start_app()
    user = new_user()
    socket = await Socket.open(app, token(user))
    connected = await socket.expect("connected")
    assert lines_about(caplog, app.settings.server.ws_path) == []
    socket.close()
    async with asyncio.timeout(5):
        while not lines_about(caplog, app.settings.server.ws_path):
            await asyncio.sleep(0.02)
    [line] = lines_about(caplog, app.settings.server.ws_path)
    assert (line.fields["method"], line.fields["user"], line.fields["client"]) == (
        "WS", user, connected["clientId"])


def test_json_lines_carry_the_fields():
    record = logging.LogRecord("mojavox_notify.access", logging.INFO, __file__, 1, "%s",
                               ("GET /api/notifications 200 1.0ms",), None)
    record.fields = {"method": "GET", "path": "/api/notifications", "status": 200}
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "GET /api/notifications 200 1.0ms"
    assert (entry["method"], entry["path"], entry["status"]) == ("GET", "/api/notifications", 200)


# -- redaction: linear, wherever a token stands ------------------------------------------------

SIGNED = token("someone", ["service"])
HEADER_AND_CLAIMS = SIGNED.rsplit(".", 1)[0]


def shows_a_token(text: str) -> bool:
    return bool(CredentialWatch.JWT.search(text)) or SIGNED.split(".")[2] in text \
        or HEADER_AND_CLAIMS in text


@pytest.mark.parametrize("text", ["eyJ" * 20000, "eyJ" * 20000 + ".", "eyJ." * 15000,
                                  ("eyJ" * 1000 + ".") * 20, "eyJ-" * 15000 + ".x"])
def test_redacting_a_huge_run_of_token_like_text_takes_linear_time(text):
    started = time.perf_counter()
    redact(text)
    assert time.perf_counter() - started < 0.25


def test_text_without_the_shape_of_a_token_is_left_as_it_is():
    for text in ("eyJ" * 20000, "GET /api/notifications/abc.def 404", "v1.2.3 eyJ.x", "a.b.c"):
        assert redact(text) == text


@pytest.mark.parametrize("template", [
    "{t}", "token {t} seen", "GET /api/notifications/{t}/read 404", "GET /ws?token={t}&since=1",
    "GET /ws?access_token={t}", "Authorization: Bearer {t}", "{{'Authorization': 'Bearer {t}'}}",
    '{{"token": "{t}"}}', "word{t}", "{t}.", "({t})", "{t}{t}", "{t} and {t}", "one\n{t}\nthree",
    "channels.{t}: unknown type", "eyJ" * 5000 + " {t}", "{t}" + "eyJ" * 5000,
    "x" * 5000 + "{t}" + "." * 3, "{t}=={t}",
])
def test_a_token_is_redacted_wherever_it_stands(template):
    text = template.format(t=SIGNED)
    redacted = redact(text)
    assert not shows_a_token(redacted), redacted[:300]
    assert REDACTED in redacted


def test_a_long_message_is_cut_after_redaction_and_says_how_much_was_left_out():
    # The token straddles the cut: cut first, its header and claims would stay, unredacted.
    text = "x" * (MAX_LINE_CHARS - 20) + " " + SIGNED + " " + "y" * 5000
    record = logging.LogRecord("mojavox_notify.test", logging.INFO, __file__, 1, "%s", (text,), None)
    RedactCredentials().filter(record)
    message = record.getMessage()
    assert not shows_a_token(message) and not message.endswith("eyJ")
    left_out = len(redact(text)) - MAX_LINE_CHARS
    assert message == redact(text)[:MAX_LINE_CHARS] + f"…[{left_out} characters left out]"


def test_shortening_keeps_short_text_and_redacts_before_cutting():
    assert shorten("channels.payment", 200) == "channels.payment"
    cut = shorten("a " * 75 + SIGNED, 200)
    assert not shows_a_token(cut) and cut == "a " * 75 + REDACTED


def test_an_access_line_is_bounded_and_redacted_in_its_text_and_its_fields(caplog):
    caplog.set_level(logging.INFO)
    path = "/" + SIGNED + "/" + "eyJ" * 20000
    log_access("GET", path, 404, 0.001, None, "127.0.0.1", ("not_found", f"no such endpoint: {path}"))
    [line] = [r for r in caplog.records if r.name == "mojavox_notify.access"]
    assert len(line.getMessage()) < MAX_LINE_CHARS + 100
    assert len(line.fields["path"]) < 1100 and len(line.fields["error_message"]) < 1100
    for text in (line.getMessage(), line.fields["path"], line.fields["error_message"]):
        assert not shows_a_token(text) and "characters left out]" in text


# -- control characters cannot forge lines -----------------------------------------------------

def test_control_characters_in_a_text_line_are_escaped():
    forged = "alice\nINFO mojavox_notify.access: GET /api/plugins 200\r\x1b[2K\u2028x\x85"
    record = logging.LogRecord("mojavox_notify.test", logging.WARNING, __file__, 1,
                               "socket of %s refused", (forged,), None)
    line = log_handler(LoggingSettings(format="text")).format(record)
    assert "\n" not in line and "\r" not in line and "\x1b" not in line and "\u2028" not in line
    assert "alice\\nINFO mojavox_notify.access" in line and "\\x1b[2K\\u2028x\\x85" in line


def test_a_traceback_keeps_its_lines_while_its_message_is_escaped():
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("mojavox_notify.test", logging.ERROR, __file__, 1,
                                   "failed for %s", ("a\nb",), sys.exc_info())
    text = log_handler(LoggingSettings(format="text")).format(record)
    first, *rest = text.splitlines()
    assert first.endswith("failed for a\\nb") and rest[0] == "Traceback (most recent call last):"


def test_json_lines_stay_one_line_each():
    record = logging.LogRecord("mojavox_notify.test", logging.WARNING, __file__, 1, "%s", ("a\nb",), None)
    line = log_handler(LoggingSettings(format="json")).format(record)
    assert "\n" not in line and json.loads(line)["message"] == "a\nb"
