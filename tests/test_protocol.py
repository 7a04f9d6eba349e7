"""The published frame schemas: served, valid JSON Schema, and true to what clients send.
(That every frame the server sends matches them is checked by every socket test: support.py.)"""

from __future__ import annotations

import jsonschema
import pytest

from mojavox_notify.handlers.session import SocketSession
from mojavox_notify.wire.frames import CLIENT_FRAMES, protocol_document

bounded = pytest.mark.timeout(30)


@bounded
async def test_the_frame_schemas_are_served_to_anyone(start_app):
    app = await start_app()
    status, document = await app.api.get("/protocol.json")
    assert status == 200 and document == protocol_document()
    jsonschema.Draft202012Validator.check_schema(document)


@pytest.mark.parametrize("frame", [
    {"type": "subscribe", "channels": ["all"]},
    {"type": "unsubscribe", "channels": ["call_completed"]},
    {"type": "mark_read", "notificationId": "6b0587911a5513ec6ebce2ff"},
    {"type": "mark_all_read"},
    {"type": "get_history", "limit": 20, "offset": 0},
    {"type": "resume", "since": "6b0587911a5513ec6ebce2ff"},
    {"type": "refresh_token", "token": "a.b.c"},
    {"type": "ping"},
])
def test_the_readmes_client_frames_match_the_client_schemas(frame):
    jsonschema.validate(frame, CLIENT_FRAMES[frame["type"]])


def test_a_malformed_client_frame_does_not_match():
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"type": "get_history", "limit": 500}, CLIENT_FRAMES["get_history"])


def test_every_client_frame_of_the_protocol_has_a_command_and_no_command_is_unpublished():
    commands = {name[len("_on_"):] for name in dir(SocketSession) if name.startswith("_on_")}
    assert commands == set(CLIENT_FRAMES)
