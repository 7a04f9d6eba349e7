"""clients/js/mojavox-notify.d.ts, the client's hand-written declarations, against the client:
a typed use of everything compiles under `tsc --noEmit --strict`; the module's exports, public
methods and properties, options and events are exactly the declared ones; and the declared
types fit those tsc derives from the module's JSDoc (return types, parameters, properties,
event payloads)."""

from __future__ import annotations

import json
import shutil

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


def test_declared_types_fit_the_types_of_the_modules_jsdoc():
    generated = CLIENT_DIR / "test" / "types" / "generated"
    shutil.rmtree(generated, ignore_errors=True)
    derive = npm.run([npm.tool("tsc"), "--allowJs", "--declaration", "--emitDeclarationOnly",
                      "--skipLibCheck", "--target", "ES2022", "--module", "NodeNext",
                      "--moduleResolution", "NodeNext", "--lib", "ES2022,DOM",
                      "--outDir", str(generated), "mojavox-notify.js"], cwd=CLIENT_DIR)
    assert derive.returncode == 0, derive.stdout + derive.stderr
    result = npm.run([npm.tool("tsc"), "-p", "test/types/tsconfig.compat.json"], cwd=CLIENT_DIR)
    assert result.returncode == 0, (
        "mojavox-notify.d.ts does not fit the module's JSDoc (the member named after "
        "'Types of property'):\n" + result.stdout + result.stderr)
