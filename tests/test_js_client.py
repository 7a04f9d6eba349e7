"""The JavaScript client's own tests (clients/js/test, node's test runner) against a real server.

Node.js 20.10 or newer is required, not optional: without it this test fails and says so
(`make test` checks for it first)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from .support.paths import ROOT
from .support.servers import ServeProcess
from .support.tokens import TEST_SECRET

CLIENT_DIR = ROOT / "clients" / "js"
MINIMUM_NODE = (20, 10)
# clients/js/test/escalations.test.js relies on it: one step, soon, to someone else.
ESCALATION_POLICY = {"call_escalation": {
    "claim": True, "repeat": 0,
    "steps": [{"after_seconds": 1, "to": {"users": ["js-floor-manager"]}}]}}


def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed; the JavaScript client's tests need Node.js >= 20.10 "
                    "(make test installs it with apt when missing)")
    version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    match = re.match(r"v(\d+)\.(\d+)", version)
    if not match or tuple(map(int, match.groups())) < MINIMUM_NODE:
        pytest.fail(f"node {version} is too old; the JavaScript client's tests need >= 20.10 "
                    "(for WebSocket)")
    return node


@pytest.fixture
def server(tmp_path):
    process = ServeProcess(tmp_path, **{
        "websocket.max_sockets_per_user": 3,
        "escalations": ESCALATION_POLICY,
        "escalation_timers.poll_interval_seconds": 0.1}).start()
    yield process
    process.stop()


def test_javascript_client_against_a_running_server(server):
    node = node_binary()
    test_files = sorted(str(path.relative_to(CLIENT_DIR)) for path in CLIENT_DIR.glob("test/*.test.js"))
    assert test_files, "no clients/js/test/*.test.js"
    result = subprocess.run(
        [node, "--experimental-websocket", "--test", "--test-reporter=spec", *test_files],
        cwd=CLIENT_DIR, capture_output=True, text=True, timeout=110,
        env={**os.environ, "MOJAVOX_URL": server.url, "MOJAVOX_JWT_SECRET": TEST_SECRET,
             "NO_COLOR": "1"})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output + "\nserver log:\n" + server.log_text()
    passed = re.search(r"^ℹ pass (\d+)", output, re.MULTILINE)
    failed = re.search(r"^ℹ fail (\d+)", output, re.MULTILINE)
    assert passed and int(passed.group(1)) >= 15, output
    assert failed and failed.group(1) == "0", output
