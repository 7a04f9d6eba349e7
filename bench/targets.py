"""The servers `python -m bench` compares, each in its own process, and how to talk to each.

- `mojavox`: `mojavox-notify serve` on a fresh embedded store (every notification persisted),
  rate limits and socket caps lifted for the load.
- `tornado`: bench/raw_tornado.py, a plain Tornado WebSocket server storing nothing.
- `socketio`: bench/raw_socketio.py, python-socketio's async server, one room per user.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import jwt

ROOT = Path(__file__).resolve().parent.parent
SECRET = "benchmark-secret-of-at-least-32-bytes-long"
KINDS = ("mojavox", "tornado", "socketio")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("0.0.0.0", 0))
        return probe.getsockname()[1]


def token(user: str, roles: tuple[str, ...] = ()) -> str:
    now = int(time.time())
    return jwt.encode({"sub": user, "roles": list(roles), "iat": now, "exp": now + 6 * 3600},
                      SECRET, algorithm="HS256")


_sources: dict[str, Path] = {}


def baseline_source(ref: str) -> Path:
    """The `mojavox_notify` package as it was at a git ref, extracted once into a temporary
    folder, to run beside the working tree's in one benchmark run (the same venv serves both)."""
    if ref not in _sources:
        folder = Path(tempfile.mkdtemp(prefix=f"bench-source-{ref[:12]}-"))
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "mojavox_notify"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
        _sources[ref] = folder
    return _sources[ref]


class Target:
    """One server under test, started in its own process."""

    def __init__(self, kind: str):
        self.kind = kind
        self.family = kind.split("@", 1)[0]  # mojavox@<ref>: the server of an earlier commit
        self.port = free_port()
        self.metrics_port = free_port()
        self.folder = tempfile.mkdtemp(prefix=f"bench-{kind}-")
        self.process: subprocess.Popen | None = None
        self._service_token = token("bench", ("service",))

    def start(self) -> None:
        environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.family == "mojavox":
            command = [sys.executable, "-m", "mojavox_notify", "serve"]
            if "@" in self.kind:
                environment["PYTHONPATH"] = str(baseline_source(self.kind.split("@", 1)[1]))
            environment.update({
                "MOJAVOX_SERVER__PORT": str(self.port), "MOJAVOX_SERVER__HOST": "0.0.0.0",
                "MOJAVOX_DATA_DIR": self.folder, "JWT_SECRET": SECRET,
                "MOJAVOX_RATE_LIMITS__NOTIFICATIONS_PER_MINUTE": "0",
                "MOJAVOX_RATE_LIMITS__REQUESTS_PER_MINUTE": "0",
                "MOJAVOX_AUTH__FAILED_PER_MINUTE_PER_IP": "0",
                "MOJAVOX_SERVER__MAX_SOCKETS_PER_IP": "0", "MOJAVOX_WEBSOCKET__MAX_SOCKETS_PER_USER": "0",
                "MOJAVOX_RETENTION__CLEANUP_INTERVAL_MINUTES": "0", "MOJAVOX_LOGGING__LEVEL": "WARNING",
                "MOJAVOX_METRICS__ACCESS": "port", "MOJAVOX_METRICS__PORT": str(self.metrics_port)})
        else:
            command = [sys.executable, str(ROOT / "bench" / f"raw_{self.kind}.py"), "--port", str(self.port)]
        log = open(Path(self.folder) / "server.log", "wb")
        self.process = subprocess.Popen(command, cwd=self.folder, env=environment, stdout=log,
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if self.process.poll() is not None:
                    break
                time.sleep(0.1)
        raise RuntimeError(f"{self.kind} did not start; see {self.folder}/server.log")

    def kill(self) -> None:
        """SIGKILL: the server dies mid-work (the reconnect storm restarts it on its folder)."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(20)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def rss_kb(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def metric(self, name: str) -> float | None:
        """A figure of MOJAVOX Notify's /metrics (e.g. a histogram's `_sum`); None elsewhere."""
        if self.family != "mojavox":
            return None
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as answer:
            for line in answer.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        return None

    # -- what the load generator sends ----------------------------------------------------------

    def create_request(self, user: str, sent: float) -> tuple[str, bytes, dict]:
        """(url, body, headers) that makes one notification for `user` carrying `sent`."""
        base = f"http://127.0.0.1:{self.port}"
        if self.family == "mojavox":
            body = {"userId": user, "type": "payment_received", "title": "Payment Received",
                    "message": "Debtor paid $1,250.00 on account #AC-1", "data": {"sent": sent}}
            return (f"{base}/api/notifications", json.dumps(body).encode(),
                    {"Authorization": f"Bearer {self._service_token}",
                     "Content-Type": "application/json"})
        return f"{base}/notify", json.dumps({"userId": user, "sent": sent}).encode(), {
            "Content-Type": "application/json"}

    def alert_request(self, users: list[str], sent: float | None = None) -> tuple[str, bytes, dict]:
        """One alert to `users` (at most 1,000 for mojavox's system.alert); `sent`, when given,
        travels in every notification (mojavox: in its message, "bench <sent>")."""
        base = f"http://127.0.0.1:{self.port}"
        if self.family == "mojavox":
            message = "Maintenance at 22:00" if sent is None else f"bench {sent:.6f}"
            body = {"type": "system.alert", "data": {"userIds": users, "severity": "warning",
                                                      "message": message}}
            return (f"{base}/api/events", json.dumps(body).encode(),
                    {"Authorization": f"Bearer {self._service_token}",
                     "Content-Type": "application/json"})
        body = {"userIds": users, "message": "Maintenance"}
        if sent is not None:
            body["sent"] = sent
        return f"{base}/broadcast", json.dumps(body).encode(), {"Content-Type": "application/json"}

    def broadcast_request(self, users: list[str]) -> tuple[str, bytes, dict]:
        """One frame to every socket: MOJAVOX Notify's broadcast (stored once, for every
        socket whatever its user); the others have only their alert request for it."""
        if self.family != "mojavox":
            return self.alert_request(users)
        body = {"title": "Maintenance", "message": "The dialer restarts at 22:00 UTC",
                "priority": "high", "ttlSeconds": 600}
        return (f"http://127.0.0.1:{self.port}/api/broadcasts", json.dumps(body).encode(),
                {"Authorization": f"Bearer {self._service_token}",
                 "Content-Type": "application/json"})


def post(request: tuple[str, bytes, dict]) -> int:
    url, body, headers = request
    with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers,
                                                       method="POST"), timeout=60) as answer:
        return answer.status
