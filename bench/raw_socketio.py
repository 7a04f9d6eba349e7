"""What a Python team would otherwise pick: python-socketio's async server (on aiohttp), one
room per user, storing nothing.

Clients connect with `?user=U` and join room U; `POST /notify {"userId", ...}` emits a
`notification` event to U's room; `POST /broadcast {"userIds": [...], ...}` to each room.

    python bench/raw_socketio.py --port 3202
"""

from __future__ import annotations

import argparse
from urllib.parse import parse_qs

import socketio
from aiohttp import web

server = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins="*")


@server.event
async def connect(sid, environ, auth=None):
    user = parse_qs(environ.get("QUERY_STRING", "")).get("user", [""])[0]
    await server.enter_room(sid, user)


async def notify(request: web.Request) -> web.Response:
    body = await request.json()
    await server.emit("notification", body, room=body["userId"])
    return web.json_response({"ok": True})


async def broadcast(request: web.Request) -> web.Response:
    body = await request.json()
    for user in body["userIds"]:
        await server.emit("notification", {**body, "userIds": None, "userId": user}, room=user)
    return web.json_response({"ok": True})


def main(port: int) -> None:
    application = web.Application()
    server.attach(application)
    application.router.add_post("/notify", notify)
    application.router.add_post("/broadcast", broadcast)
    web.run_app(application, host="0.0.0.0", port=port, print=None, access_log=None)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    main(parser.parse_args().port)
