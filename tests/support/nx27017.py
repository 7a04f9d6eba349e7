"""The nx-27017 wire server (MongoDB's protocol over SQLite) as a child process, so the MongoDB
engine is tested over a real wire."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pymongo

from .ports import free_port


class Nx27017Server:
    """`start()` runs one on a free loopback port with its files under `folder` and waits until it
    answers a ping; `url` is its MongoDB URL; `stop()` ends it."""

    START_TIMEOUT = 30

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.log_path = folder / "nx-27017.log"
        self.process: subprocess.Popen | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def start(self) -> None:
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mojavox_notify.store.nx27017", str(os.getpid()),
             "--data-dir", str(self.folder / "mongo"), "--host", "127.0.0.1", "-p", str(self.port),
             "--log-file", os.devnull, "--pid-file", str(self.folder / "nx.pid")],
            stdout=self._log, stderr=self._log)
        client = pymongo.MongoClient(self.url, serverSelectionTimeoutMS=200)
        deadline = time.monotonic() + self.START_TIMEOUT
        try:
            while True:
                try:
                    client.admin.command("ping")
                    return
                except pymongo.errors.PyMongoError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"nx-27017 did not start; see {self.log_path}")
                    time.sleep(0.1)
        finally:
            client.close()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        self._log.close()
