"""Running a test on both storage engines (the `storage_engine` fixture reads the parameter)."""

from __future__ import annotations

import pytest

# Apply to a test (or a module's `pytestmark`) to run it on both storage engines.
ENGINES = ["sqlite", "mongo"]
both_engines = pytest.mark.parametrize("storage_engine", ENGINES, indirect=True)
