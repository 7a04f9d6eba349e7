"""The browser clients' npm workspace (clients/): its packages, installed by `make test` with
`npm ci` from clients/package-lock.json, and its command-line tools."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .paths import ROOT

CLIENTS = ROOT / "clients"
NODE_MODULES = CLIENTS / "node_modules"
LOCK = CLIENTS / "package-lock.json"


def installed() -> Path:
    """clients/node_modules, failing the test with what to run when it is missing or older than
    the lock file."""
    stamp = NODE_MODULES / ".package-lock.json"
    if not stamp.exists():
        pytest.fail("clients/node_modules is missing: `make test` installs it (or run "
                    "`npm ci --prefix clients`)")
    if stamp.stat().st_mtime < LOCK.stat().st_mtime:
        pytest.fail("clients/node_modules is older than clients/package-lock.json: run "
                    "`npm ci --prefix clients` (make test does)")
    return NODE_MODULES


def tool(name: str) -> str:
    """The path of an installed npm tool (tsc, vitest, vite)."""
    return str(installed() / ".bin" / name)


def run(command: list[str], cwd: Path, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, **kwargs)
