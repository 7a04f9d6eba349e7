"""The real `python -m mojavox_notify` CLI, run as subprocesses in a scratch deployment folder."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mojavox_notify.httpserver import LISTEN_BACKLOG
from mojavox_notify.settings import load_settings

from .support.paths import ROOT
from .support.ports import free_port
from .support.servers import (COMMAND_TIMEOUT, STOP_TIMEOUT, Deployment, ServeProcess,
                              clean_environment)
from .support.tokens import new_user, token

def http(method: str, url: str, token: str | None = None, body=None) -> tuple[int, object]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


@pytest.fixture
def deployment(tmp_path):
    deployment = Deployment(tmp_path)
    yield deployment
    deployment.stop_all()


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """One `serve` shared by the tests that only talk to it (each with its own users)."""
    deployment = Deployment(tmp_path_factory.mktemp("running"))
    try:
        deployment.serve()
        yield deployment
    finally:
        deployment.stop_all()


def draft(user: str, **fields) -> dict:
    return {"userId": user, "type": "payment_received", "title": "Payment Received",
            "message": "John Smith paid $2,450.00", **fields}


# -- token and vapid-keys --------------------------------------------------------------------------

def test_token_command_prints_a_token_the_server_accepts(running):
    alice = new_user("alice")
    result = running.run("token", "--user", alice)  # built-in defaults: ./data, like the server
    assert result.returncode == 0, result.stderr
    alice_token = result.stdout.strip()
    assert alice_token.count(".") == 2 and "\n" not in alice_token
    status, page = http("GET", f"{running.url}/api/notifications", alice_token)
    assert status == 200 and page["notifications"] == []

    status, _ = http("POST", f"{running.url}/api/notifications", alice_token, draft(alice))
    assert status == 403, "a plain token has no service role"
    result = running.run("token", "--user", new_user("svc"), "--roles", "service",
                         "--settings", "settings.yaml")
    assert result.returncode == 0, result.stderr
    status, created = http("POST", f"{running.url}/api/notifications", result.stdout.strip(), draft(alice))
    assert status == 201
    status, page = http("GET", f"{running.url}/api/notifications", alice_token)
    assert [n["id"] for n in page["notifications"]] == [created["id"]]


def test_token_ttl_sets_the_expiry(deployment):
    result = deployment.run("token", "--user", "bob", "--ttl", "120", "--roles", "admin,service",
                            JWT_SECRET="s" * 40)
    assert result.returncode == 0, result.stderr
    payload = result.stdout.strip().split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["sub"] == "bob" and claims["roles"] == ["admin", "service"]
    assert claims["exp"] - claims["iat"] == 120


def test_token_with_a_non_positive_ttl_is_a_usage_error(deployment):
    result = deployment.run("token", "--user", "bob", "--ttl", "-100")
    assert result.returncode == 2
    assert "--ttl" in result.stderr and "positive" in result.stderr
    assert "Traceback" not in result.stderr


def test_vapid_keys_prints_a_matching_pair_as_two_environment_lines(deployment):
    result = deployment.run("vapid-keys")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2
    values = dict(line.split("=", 1) for line in lines)
    assert set(values) == {"VAPID_PUBLIC_KEY", "VAPID_PRIVATE_KEY"}

    def decode(text: str) -> bytes:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))

    public, private = decode(values["VAPID_PUBLIC_KEY"]), decode(values["VAPID_PRIVATE_KEY"])
    assert len(public) == 65 and public[0] == 4 and len(private) == 32
    derived = ec.derive_private_key(int.from_bytes(private, "big"), ec.SECP256R1()).public_key()
    assert derived.public_bytes(serialization.Encoding.X962,
                                serialization.PublicFormat.UncompressedPoint) == public
    settings = load_settings(None, environ=values)
    assert settings.push.vapid_public_key == values["VAPID_PUBLIC_KEY"]


# -- check -----------------------------------------------------------------------------------------

def test_check_exits_0_on_good_settings(deployment):
    result = deployment.run("check", "--settings", "settings.yaml")
    assert result.returncode == 0, result.stderr
    assert "settings: ok" in result.stdout
    assert f"storage: ok (embedded SQLite {deployment.data_dir / 'notify.db'})" in result.stdout
    assert "7 notification types" in result.stdout


@pytest.mark.parametrize("extra, key", [
    ("server:\n  port: 70000\n", "server.port"),
    ("colour: blue\n", "colour"),
    ("auth:\n  secret: short\n", "auth.secret"),
    ("logging:\n  level: LOUD\n", "logging.level"),
    ("auth:\n  algorithm: RS256\n  jwks_url: https://id.example/jwks\n", "auth.audience"),
])
def test_check_exits_2_with_one_line_naming_a_bad_key(tmp_path, extra, key):
    path = tmp_path / "settings.yaml"
    path.write_text(extra, encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "mojavox_notify", "check", "--settings", str(path)],
                            cwd=tmp_path, env=clean_environment(), capture_output=True, text=True,
                            timeout=COMMAND_TIMEOUT)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert key in lines[0]
    assert "Traceback" not in result.stderr


def test_bad_environment_value_stops_serve_with_one_line(deployment):
    result = deployment.run("serve", "--settings", "settings.yaml", WS_PORT="not-a-port")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "server.port" in lines[0], result.stderr
    assert "WS_PORT" in lines[0]


def test_check_exits_2_when_no_plugin_registers_a_type(tmp_path):
    empty = tmp_path / "no-plugins"
    empty.mkdir()
    path = tmp_path / "settings.yaml"
    path.write_text(f"plugins:\n  directory: {empty}\n  builtin: false\n", encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "mojavox_notify", "check", "--settings", str(path)],
                            cwd=tmp_path, env=clean_environment(), capture_output=True, text=True,
                            timeout=COMMAND_TIMEOUT)
    assert result.returncode == 2
    assert "plugins.directory" in result.stderr and str(empty) in result.stderr


def test_check_fails_when_the_mongodb_server_does_not_answer(tmp_path):
    deployment = Deployment(tmp_path, "storage:\n  url: mongodb://127.0.0.1:%d/\n"
                                      "mongodb:\n  server_selection_timeout_seconds: 0.5\n"
                                      % free_port())
    result = deployment.run("check", "--settings", "settings.yaml")
    assert result.returncode == 2
    assert "storage.url" in result.stderr.strip().splitlines()[-1]


# -- serve -----------------------------------------------------------------------------------------

def test_serve_logs_one_ready_line_and_answers_healthz(running):
    log_path = running.folder / "serve-0.log"
    ready = [line for line in log_path.read_text().splitlines() if "serving on" in line]
    assert len(ready) == 1
    line = ready[0]
    assert running.url in line
    assert f"storage: embedded SQLite {running.data_dir / 'notify.db'}" in line
    assert "broker: in-process" in line
    status, health = http("GET", f"{running.url}/healthz")
    assert status == 200 and health["status"] == "ok"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_serve_cleanly(deployment, signum):
    process, log_path = deployment.serve()
    process.send_signal(signum)
    assert process.wait(timeout=STOP_TIMEOUT) == 0, log_path.read_text()
    assert "Traceback" not in log_path.read_text()


def test_serve_on_a_port_in_use_exits_2_naming_it(deployment):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", deployment.port))
        taken.listen()
        result = deployment.run("serve", "--settings", "settings.yaml")
    assert result.returncode == 2
    assert f"127.0.0.1:{deployment.port}" in result.stderr.strip().splitlines()[-1]


def test_notification_survives_sigkill_of_the_server_and_a_restart(deployment):
    process, _ = deployment.serve()
    user = new_user("alice")
    service = deployment.token(new_user("svc"), roles=("service",))
    status, created = http("POST", f"{deployment.url}/api/notifications", service, draft(user))
    assert status == 201

    process.kill()
    process.wait(timeout=STOP_TIMEOUT)

    deployment.serve()
    status, page = http("GET", f"{deployment.url}/api/notifications", deployment.token(user))
    assert status == 200
    assert [n["id"] for n in page["notifications"]] == [created["id"]]
    assert page["notifications"][0] == created


def test_two_server_processes_share_the_embedded_file(deployment):
    """Two `serve` processes on one data folder: both write one user's notifications at once,
    and each reads every one of them with exact counts."""
    deployment.serve()
    other_port = free_port()
    deployment.serve("--port", str(other_port))
    user = new_user()
    service = deployment.token(new_user("svc"), roles=("service",))
    urls = [deployment.url, f"http://127.0.0.1:{other_port}"]

    def create(url):
        return [http("POST", f"{url}/api/notifications", service, draft(user, message=f"{url} {i}"))
                for i in range(15)]

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        answers = [answer for batch in pool.map(create, urls) for answer in batch]
    assert all(status == 201 for status, _ in answers), answers
    created = {body["id"] for _, body in answers}
    for url in urls:
        status, page = http("GET", f"{url}/api/notifications?limit=100", deployment.token(user))
        assert {n["id"] for n in page["notifications"]} == created
        assert page["total"] == 30 and page["unreadCount"] == 30


# -- emit and cleanup --------------------------------------------------------------------------------

def test_emit_posts_an_event_and_prints_the_created_id(running):
    deployment = running
    user = new_user("collector")
    data = json.dumps({"userId": user, "amount": 2450, "accountId": "AC-2024-1234",
                       "debtorName": "John Smith"})
    result = deployment.run("emit", "payment.received", "--data", data, "--url", deployment.url)
    assert result.returncode == 0, result.stderr
    ids = result.stdout.split()
    assert len(ids) == 1 and re.fullmatch(r"[0-9a-f]{24}", ids[0])

    status, page = http("GET", f"{deployment.url}/api/notifications", deployment.token(user))
    assert [n["id"] for n in page["notifications"]] == ids
    assert page["notifications"][0]["message"] == "John Smith paid $2,450.00 on account #AC-2024-1234"

    event_id = new_user("payment")
    again = [deployment.run("emit", "payment.received", "--data", data, "--id", event_id,
                            "--settings", "settings.yaml") for _ in range(2)]
    assert all(r.returncode == 0 for r in again), [r.stderr for r in again]
    assert again[0].stdout == again[1].stdout, "a repeated event id creates nothing new"


def test_emit_reports_a_refused_event_and_an_unreachable_server(running):
    deployment = running
    result = deployment.run("emit", "payment.nope", "--data", "{}", "--url", deployment.url)
    assert result.returncode == 1
    assert "400" in result.stderr and "payment.received" in result.stderr
    result = deployment.run("emit", "payment.received", "--data", "not json", "--url", deployment.url)
    assert result.returncode == 2 and "--data" in result.stderr
    result = deployment.run("emit", "payment.received", "--data", "{}", "--url",
                            f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1 and "cannot reach" in result.stderr


def test_cleanup_beside_a_running_server_removes_expired_notifications_and_keeps_the_rest(deployment):
    """The embedded SQLite file is shared: `cleanup` runs while the server serves it."""
    deployment.serve()
    user = new_user()
    service = deployment.token(new_user("svc"), roles=("service",))
    soon = datetime.now(timezone.utc) + timedelta(seconds=1)
    status, _ = http("POST", f"{deployment.url}/api/notifications", service,
                     draft(user, expiresAt=soon.isoformat()))
    assert status == 201
    status, kept = http("POST", f"{deployment.url}/api/notifications", service, draft(user))
    time.sleep(max(0.0, (soon - datetime.now(timezone.utc)).total_seconds() + 0.1))

    result = deployment.run("cleanup", "--settings", "settings.yaml")
    assert result.returncode == 0, result.stderr
    assert "removed 1 expired or past-retention notifications" in result.stdout, result.stdout

    status, page = http("GET", f"{deployment.url}/api/notifications", deployment.token(user))
    assert [n["id"] for n in page["notifications"]] == [kept["id"]]
    assert page["total"] == 1 and page["unreadCount"] == 1


def test_no_token_reaches_the_log_of_serve_on_any_error_path(deployment):
    """Every path on which tornado or the app logs a request, with the token in the query, in
    the header, or both; then the log file must not hold the token's text anywhere."""
    process, log_path = deployment.serve()
    secret_token = deployment.token(new_user("victim"))
    host = f"127.0.0.1:{deployment.port}"
    requests = [
        f"GET /ws/notifications/?token={secret_token} HTTP/1.1",  # 404: trailing slash
        f"GET /api/%ff?token={secret_token} HTTP/1.1",  # 400/404: undecodable path
        f"GET /api/notifications?access_token={secret_token} HTTP/1.1",  # 401: token not sent as header
        f"GET /ws/notifications?token={secret_token} HTTP/1.1",  # 400: not an upgrade
        f"GET /api/notifications?offset=99999999999999999999 HTTP/1.1\r\nAuthorization: Bearer {secret_token}",
        f"POST /api/notifications HTTP/1.1\r\nAuthorization: Bearer {secret_token}\r\nContent-Length: x",
        f"GARBAGE {secret_token}",
    ]
    for request in requests:
        with socket.create_connection(("127.0.0.1", deployment.port), timeout=5) as connection:
            connection.sendall(f"{request}\r\nHost: {host}\r\n\r\n".encode())
            try:
                while connection.recv(65536):
                    pass
            except (TimeoutError, ConnectionError):
                pass
    status, _ = http("GET", f"{deployment.url}/api/notifications", secret_token)
    assert status == 200
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=STOP_TIMEOUT)
    log = log_path.read_text()
    signature = secret_token.rsplit(".", 1)[1]
    assert secret_token not in log and signature not in log, log
    assert "GET /ws/notifications/ 404" in log and "GET /api/notifications 401" in log, log


def test_token_refuses_to_invent_a_secret_no_server_knows(deployment):
    result = deployment.run("token", "--user", "bob")
    assert result.returncode == 2 and result.stdout == ""
    assert "jwt-secret" in result.stderr and "JWT_SECRET" in result.stderr
    assert not (deployment.data_dir / "jwt-secret").exists()


def test_commands_find_settings_yaml_in_the_folder_or_through_mojavox_settings(deployment, tmp_path):
    result = deployment.run("check")
    assert result.returncode == 0 and "settings: ok (settings.yaml)" in result.stdout, result.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run([sys.executable, "-m", "mojavox_notify", "check"], cwd=elsewhere,
                            env=clean_environment(MOJAVOX_SETTINGS=str(deployment.folder / "settings.yaml")),
                            capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert f"settings: ok ({deployment.folder / 'settings.yaml'})" in result.stdout


def test_emit_sends_the_token_it_is_given(running):
    user = new_user()
    service_token = running.token("billing", ("service",))
    result = running.run("emit", "payment.received", "--url", running.url, "--token", service_token,
                         "--data", json.dumps({"userId": user, "amount": 5, "accountId": "A-1",
                                               "debtorName": "D"}))
    assert result.returncode == 0, result.stderr
    result = running.run("emit", "payment.received", "--url", running.url, "--token", "not-a-token",
                         "--data", json.dumps({"userId": user, "amount": 5, "accountId": "A-1",
                                               "debtorName": "D"}))
    assert result.returncode == 1 and "401" in result.stderr


@pytest.mark.parametrize("command", ["serve", "token", "vapid-keys", "emit", "cleanup",
                                     "import-nx27017", "check"])
def test_every_command_explains_itself_with_an_example(deployment, command):
    result = deployment.run(command, "--help")
    assert result.returncode == 0
    assert "example:\n  mojavox-notify " + command in result.stdout, result.stdout


def test_a_closed_pipe_ends_quietly(deployment):
    result = subprocess.run(f"{sys.executable} -m mojavox_notify vapid-keys | head -c 3",
                            shell=True, cwd=deployment.folder, env=clean_environment(),
                            capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    assert result.stdout == "VAP" and result.stderr == "", result.stderr


def test_the_dockerfile_passes_hadolint():
    """This machine has no Docker daemon to build the image; the linter checks what it can."""
    hadolint = Path(sys.executable).with_name("hadolint")
    result = subprocess.run([str(hadolint), str(ROOT / "Dockerfile")], capture_output=True,
                            text=True, timeout=COMMAND_TIMEOUT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_serve_listens_with_a_backlog_for_a_reconnect_storm(tmp_path):
    """Past tornado's 128 queued connections the kernel drops SYNs, which clients retry after
    seconds: after a worker dies, its tabs all reconnect at once."""
    server = ServeProcess(tmp_path).start()
    try:
        listening = subprocess.run(["ss", "-ltnH", f"sport = :{server.port}"],
                                   capture_output=True, text=True, check=True).stdout.split()
        backlog = int(listening[2])
        somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
        assert backlog == min(LISTEN_BACKLOG, somaxconn) and backlog > 128
    finally:
        server.stop()
