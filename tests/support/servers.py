"""Real `mojavox-notify` processes for tests that drive the server from outside (node, Chromium,
the CLI): `ServeProcess` is one `serve` from a settings file of the test's own, killable and
restartable on the same port and storage; `Deployment` is a scratch folder in which a test runs
CLI commands and `serve` as an operator would, with the development secret the server makes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from mojavox_notify.settings import ENVIRONMENT_OVERRIDES

from .paths import PLUGINS_DIR
from .ports import free_port
from .tokens import TEST_SECRET, token
from .waiting import wait_for

COMMAND_TIMEOUT = 30
START_TIMEOUT = 20
STOP_TIMEOUT = 15


class ServeProcess:
    """One `serve` on a free port that accepts tokens signed with TEST_SECRET (unless told
    otherwise): `start()`, `kill()` and `stop()` it, `call()` its REST API."""

    def __init__(self, folder: Path, secret: str | None = TEST_SECRET, **settings: Any):
        """`secret=None` leaves auth to the development secret in the data folder."""
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        values = {
            "data_dir": str(folder / "data"),
            "server": {"host": "127.0.0.1", "port": self.port},
            "auth": {"secret": secret} if secret else {},
            "plugins": {"directory": str(PLUGINS_DIR)},
            "retention": {"cleanup_interval_minutes": 0},
            "logging": {"level": "WARNING"},
        }
        for dotted, value in settings.items():
            section, _, key = dotted.partition(".")
            if key:
                values.setdefault(section, {})[key] = value
            else:
                values[section] = value
        self.settings_path = folder / "settings.yaml"
        self.settings_path.write_text(yaml.safe_dump(values), encoding="utf-8")
        self.log_path = folder / "serve.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 20) -> "ServeProcess":
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mojavox_notify", "serve", "--settings", str(self.settings_path)],
            stdout=log, stderr=log, cwd=self.folder, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"serve did not start; see {self.log_path}:\n{self.log_text()}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no graceful close, as when a host dies."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-4000:]

    # -- REST as a service or a user --------------------------------------------------------------

    def call(self, method: str, path: str, token_value: str | None = None, body: Any = None,
             headers: dict | None = None) -> tuple[int, Any]:
        headers = dict(headers or {})
        if token_value:
            headers["Authorization"] = f"Bearer {token_value}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                text = response.read()
                return response.status, json.loads(text) if text else None
        except urllib.error.HTTPError as error:
            text = error.read()
            return error.code, json.loads(text) if text else None

    def notify(self, user: str, **fields: Any) -> dict:
        draft = {"userId": user, "type": "payment_received", "title": "Payment Received",
                 "message": "John Smith paid $2,450.00", **fields}
        status, body = self.call("POST", "/api/notifications", token("test-service", ["service"]), draft)
        assert status == 201, body
        return body


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without any MOJAVOX override, plus `extra`."""
    environment = {name: value for name, value in os.environ.items()
                   if name not in ENVIRONMENT_OVERRIDES and name != "DATABASE_URL"}
    environment.update(extra)
    return environment


class Deployment:
    """A scratch folder with a settings.yaml (free port, data under the folder, repo plugins)."""

    def __init__(self, folder: Path, extra_settings: str = ""):
        self.folder = folder
        self.port = free_port()
        self.settings_path = folder / "settings.yaml"
        self.settings_path.write_text(
            "data_dir: ./data\n"
            f"server:\n  host: 127.0.0.1\n  port: {self.port}\n"
            f"plugins:\n  directory: {PLUGINS_DIR}\n"
            "retention:\n  cleanup_interval_minutes: 0\n" + extra_settings,
            encoding="utf-8")
        self.servers: list[subprocess.Popen] = []

    @property
    def data_dir(self) -> Path:
        return self.folder / "data"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def run(self, *args: str, timeout: float = COMMAND_TIMEOUT, **environment: str):
        return subprocess.run([sys.executable, "-m", "mojavox_notify", *args], cwd=self.folder,
                              env=clean_environment(**environment), capture_output=True, text=True,
                              timeout=timeout)

    def token(self, user: str, roles: tuple[str, ...] = ()) -> str:
        """A token signed with the development secret the server created in the data folder."""
        secret = (self.data_dir / "jwt-secret").read_text(encoding="utf-8").strip()
        return token(user, roles, secret=secret)

    def serve(self, *args: str) -> tuple[subprocess.Popen, Path]:
        """Start `serve` and wait for its ready line; returns the process and its log file."""
        log_path = self.folder / f"serve-{len(self.servers)}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "mojavox_notify", "serve", "--settings", "settings.yaml", *args],
                cwd=self.folder, env=clean_environment(), stdout=log, stderr=subprocess.STDOUT)
        self.servers.append(process)
        ready = wait_for(lambda: process.poll() is not None or "serving on" in log_path.read_text(),
                         START_TIMEOUT)
        assert ready and process.poll() is None, f"serve did not start:\n{log_path.read_text()}"
        return process, log_path

    def stop_all(self) -> None:
        """Stop every server this deployment started."""
        for process in self.servers:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=STOP_TIMEOUT)
