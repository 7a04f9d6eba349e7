"""A real redis-server on a free loopback port, which a test may kill and start again."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from .killable import KillableServer
from .ports import free_port


class RedisServer(KillableServer):
    def __init__(self, folder: Path, port: int | None = None, appendonly: bool = False):
        """`appendonly`: every write is in the append-only file before it is answered
        (`appendfsync always`), so a server killed and started again in `folder` has every
        entry and consumer group it acknowledged."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: `make test` installs it "
                               "(apt-get install redis-server)")
        self.binary = binary
        self.folder = folder
        self.port = port or free_port()
        self.appendonly = appendonly
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        log = open(self.folder / "redis.log", "ab")
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             *(["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly
               else ["--appendonly", "no"]),
             "--dir", str(self.folder)], stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start; see {self.folder / 'redis.log'}")
            time.sleep(0.05)

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as connection:
                connection.sendall(b"PING\r\n")
                return connection.recv(16).startswith(b"+PONG")
        except OSError:
            return False
