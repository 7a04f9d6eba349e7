"""The notification center page at `/`: static files, no build step, no templating.

The page, its service worker (at `/sw.js`, so its scope is the whole origin) and the JavaScript
client (`/client/mojavox-notify.js`, a copy of `clients/js/mojavox-notify.js` that the tests keep
identical, so that wheels carry it) are served as they are on disk, with a
Content-Security-Policy that allows only this origin's scripts and sockets.
"""

from __future__ import annotations

import json
from pathlib import Path

import tornado.web

from .base import STATUS_CODES, BaseHandler

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; worker-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'")


class PageFileHandler(tornado.web.StaticFileHandler):
    """Static files with revalidation on every load (an upgrade shows at once) and the page's
    security headers."""

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        if path == "sw.js":
            self.set_header("Service-Worker-Allowed", "/")

    def write_error(self, status_code: int, **kwargs) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        if status_code == 404:
            self.finish('{"error":{"code":"not_found","message":"no such file"}}')
            return
        if status_code == 405:  # RFC 9110: a 405 says what the route allows
            self.set_header("Allow", "GET, HEAD")
        self.finish(json.dumps({"error": {"code": STATUS_CODES.get(status_code, "http_error"),
                                          "message": self._reason}}, separators=(",", ":")))


class PageConfigHandler(BaseHandler):
    """What the page and its service worker need to know of this deployment: where the socket
    is (`server.ws_path`) and where relative action URLs lead (`web.action_base_url`)."""

    public = True
    config: dict

    async def get(self) -> None:
        self.send_json(self.config)


def page_routes(common: dict, ws_path: str, action_base_url: str | None) -> list[tuple]:
    config = {"wsPath": ws_path, "actionBaseUrl": action_base_url}
    return [
        (r"/config\.json", PageConfigHandler, {**common, "config": config}),
        (r"/()", PageFileHandler, {"path": str(STATIC_DIR), "default_filename": "index.html"}),
        (r"/(sw\.js|app\.js|app\.css|icon\.svg)", PageFileHandler, {"path": str(STATIC_DIR)}),
        (r"/client/(mojavox-notify\.js)", PageFileHandler, {"path": str(STATIC_DIR)}),
    ]
