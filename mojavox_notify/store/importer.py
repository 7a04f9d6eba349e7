"""Moving a data folder of the earlier embedded storage (nx-27017, under `data_dir/mongo`) into
the SQLite engine, once: `mojavox-notify import-nx27017`.

The old folder is read through the MongoDB engine with nx-27017 started as a child, copied with
its ids and sequence numbers, and then marked as imported (its files are left in place), so the
server starts on the SQLite file from then on. nx-27017 comes with the `importer` extra; without
it the command says so (nx27017.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..model import utcnow
from ..settings import Settings
from .mongo import MongoStore
from .nx27017 import Nx27017Child
from .sqlite import SqliteStore

LEGACY_FOLDER = "mongo"
IMPORTED_MARKER = "IMPORTED"


@dataclass(frozen=True)
class ImportReport:
    folder: Path
    notifications: int
    users: int
    preferences: int
    subscriptions: int
    events: int


def legacy_folder(settings: Settings) -> Path | None:
    """The nx-27017 folder under data_dir that still waits to be imported, if there is one."""
    folder = settings.data_path / LEGACY_FOLDER
    if not folder.is_dir() or (folder / IMPORTED_MARKER).exists():
        return None
    return folder if any(folder.iterdir()) else None


async def import_nx27017(settings: Settings, target: SqliteStore) -> ImportReport:
    """Copy everything of the legacy folder into `target` (opened) and mark the folder imported."""
    folder = legacy_folder(settings)
    if folder is None:
        raise FileNotFoundError(f"nothing to import: {settings.data_path / LEGACY_FOLDER} is "
                                "missing, empty or already imported")
    child = Nx27017Child(settings.data_path, settings.mongodb.startup_timeout_seconds)
    url = await child.start()
    try:
        source = MongoStore.connect(url, settings.mongodb)
        try:
            exported = await source.export()
        finally:
            await source.close()
    finally:
        await child.stop()
    await target.import_documents(exported["notifications"], exported["channel_settings"],
                                  exported["push_subscriptions"], exported["events"])
    users = await target.rebuild_states()
    (folder / IMPORTED_MARKER).write_text(
        f"imported into {target.path} at {utcnow().isoformat()}\n", encoding="utf-8")
    return ImportReport(folder, len(exported["notifications"]), users,
                        len(exported["channel_settings"]), len(exported["push_subscriptions"]),
                        len(exported["events"]))
