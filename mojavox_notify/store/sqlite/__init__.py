"""The embedded engine: SQLite in this process, WAL mode, real indexes.

One file holds everything; several processes on one host may share it. By concern:
- `store.py`: `SqliteStore`, the storage interface, each operation one function run on the file;
- `execution.py`: how those functions reach the file (the event loop's own connection for small
  ones, the writer and reader threads, the write turn among processes, checkpoints);
- `schema.py`: the tables and indexes, and files of earlier schemas brought up to date;
- `insertion.py`: storing notifications with their counters, push jobs and claims (the hot path);
- `queries.py`: the other functions run on the file;
- `rows.py`: rows to documents and back, times as epoch milliseconds;
- `importing.py`: documents of the MongoDB shape copied in (`import-nx27017`), counters rebuilt.
"""

from .execution import CHECKPOINT_DELAY_SECONDS
from .schema import SCHEMA_VERSION
from .store import SqliteStore

__all__ = ["CHECKPOINT_DELAY_SECONDS", "SCHEMA_VERSION", "SqliteStore"]
