"""A real `nats-server -js` on a free loopback port with a store folder of its own, which a test
may kill and start again on the same port and store (JetStream keeps its streams on disk)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from .killable import KillableServer
from .ports import free_port

# Debian installs nats-server in /usr/sbin, which a user's PATH often lacks.
SEARCH_PATH = "/usr/local/bin:/usr/bin:/usr/local/sbin:/usr/sbin"


class NatsServer(KillableServer):
    def __init__(self, folder: Path, port: int | None = None):
        binary = shutil.which("nats-server") or shutil.which("nats-server", path=SEARCH_PATH)
        if binary is None:
            raise RuntimeError("nats-server is not installed: `make test` installs it "
                               "(apt-get install nats-server)")
        self.binary = binary
        self.folder = folder
        self.port = port or free_port()
        self.monitor_port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15) -> None:
        """Start and wait until JetStream answers (after a kill it first recovers its store)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        log = open(self.folder / "nats.log", "ab")
        self.process = subprocess.Popen(
            [self.binary, "-js", "-a", "127.0.0.1", "-p", str(self.port),
             "-m", str(self.monitor_port), "-sd", str(self.folder / "store")],
            stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nats-server did not start; see {self.folder / 'nats.log'}")
            time.sleep(0.05)

    def answers(self) -> bool:
        """Whether the server is up with JetStream and its streams recovered (monitoring /healthz)."""
        address = f"http://127.0.0.1:{self.monitor_port}/healthz"
        try:
            with urllib.request.urlopen(address, timeout=0.5) as response:
                return json.loads(response.read()).get("status") == "ok"
        except (OSError, ValueError, urllib.error.URLError):
            return False
