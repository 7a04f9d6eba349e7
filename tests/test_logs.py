"""The access log: one line per request (a socket's at its close), with fields, no duplicates,
as text or JSON lines."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from mojavox_notify.logs import JsonFormatter

from .support import Socket, new_user, token

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
