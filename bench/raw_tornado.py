"""The reference: a plain Tornado WebSocket server with no storage, no auth, no protocol.

`GET /ws?user=U` subscribes a socket to U; `POST /notify {"userId", ...}` writes the body as a
frame to U's sockets; `POST /broadcast {"userIds": [...], ...}` to each of those users'. Used by
`python -m bench` as the floor the real server is compared with.

    python bench/raw_tornado.py --port 3201
"""

from __future__ import annotations

import argparse
import asyncio
import json

import tornado.web
import tornado.websocket

SOCKETS: dict[str, set] = {}


class Socket(tornado.websocket.WebSocketHandler):
    def open(self) -> None:
        self.user = self.get_query_argument("user")
        SOCKETS.setdefault(self.user, set()).add(self)

    def on_close(self) -> None:
        SOCKETS.get(self.user, set()).discard(self)


class Notify(tornado.web.RequestHandler):
    def post(self) -> None:
        body = json.loads(self.request.body)
        frame = json.dumps({"type": "notification", "payload": body})
        for socket in SOCKETS.get(body["userId"], ()):
            socket.write_message(frame)
        self.finish({"ok": True})


class Broadcast(tornado.web.RequestHandler):
    def post(self) -> None:
        body = json.loads(self.request.body)
        for user in body["userIds"]:
            frame = json.dumps({"type": "notification", "payload": {**body, "userIds": None, "userId": user}})
            for socket in SOCKETS.get(user, ()):
                socket.write_message(frame)
        self.finish({"ok": True})


async def main(port: int) -> None:
    tornado.web.Application([(r"/ws", Socket), (r"/notify", Notify), (r"/broadcast", Broadcast)],
                            websocket_ping_interval=25).listen(port, "0.0.0.0")
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(main(parser.parse_args().port))
