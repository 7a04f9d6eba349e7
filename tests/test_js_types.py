"""clients/js/mojavox-notify.d.ts, the client's hand-written declarations, against the client:
a typed use of everything compiles under `tsc --noEmit --strict`, and the module's exports,
public methods and properties, options and events are exactly the declared ones."""

from __future__ import annotations

import json

from .support import npm
from .support.paths import ROOT

CLIENT_DIR = ROOT / "clients" / "js"


def test_typed_usage_example_compiles_under_strict():
    result = npm.run([npm.tool("tsc"), "--noEmit", "--strict", "-p", "test/types/tsconfig.json"],
                     cwd=CLIENT_DIR)
    assert result.returncode == 0, result.stdout + result.stderr


def test_declarations_name_exactly_what_the_module_implements():
    npm.installed()  # the drift check reads the declarations with the TypeScript compiler
    result = npm.run(["node", "test/types/drift.mjs"], cwd=CLIENT_DIR, timeout=60)
    assert result.stdout.strip(), result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["undeclared"] == [], f"in mojavox-notify.js, not in mojavox-notify.d.ts: {report}"
    assert report["missing"] == [], f"declared in mojavox-notify.d.ts, not in mojavox-notify.js: {report}"
    assert result.returncode == 0, result.stdout + result.stderr
