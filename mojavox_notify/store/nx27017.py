"""`nx-27017`, a MongoDB wire-protocol server over SQLite files, as a child process.

It was the embedded storage before the SQLite engine. It stays for two jobs: the wire-level
test server of the MongoDB engine, and reading a data folder it wrote so that
`mojavox-notify import-nx27017` can copy it into the SQLite engine. The server never runs it,
so it is not a dependency of the package: the `importer` extra installs it (and `test` does).

Run as `python -m mojavox_notify.store.nx27017 PARENT_PID NX_ARGS...` this module is the child
itself: it quiets nx-27017's per-command logging and exits when its parent dies, so a SIGKILLed
parent never leaves an orphan holding the data files.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path

from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

log = logging.getLogger(__name__)

# An orphaned child notices its parent is gone within half a second (`_exit_when_orphaned`).
PREVIOUS_CHILD_EXIT_SECONDS = 5.0
#: The extra that installs the nx-27017 package.
EXTRA = "importer"


class Nx27017Error(RuntimeError):
    """The nx-27017 child could not be started."""


class Nx27017Child:
    """Starts, watches and stops one nx-27017 child whose files live under `data_dir/mongo`."""

    def __init__(self, data_dir: Path, startup_timeout: float = 20.0):
        self.data_dir = Path(data_dir)
        self.startup_timeout = startup_timeout
        self.port: int | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._watcher: asyncio.Task | None = None
        self._stopping = False

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "nx-27017.log"

    @property
    def pid_path(self) -> Path:
        return self.data_dir / "nx-27017.pid"

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def start(self, port: int | None = None) -> str:
        """Start the child (on `port`, or a free one) and wait until it answers a ping;
        returns its URL."""
        if importlib.util.find_spec("nx_27017") is None:
            raise Nx27017Error("nx-27017, which reads the earlier embedded storage, is not "
                               f"installed; it comes with the {EXTRA} extra: "
                               f"pip install 'mojavox-notify[{EXTRA}]'")
        files = self.data_dir / "mongo"
        files.mkdir(parents=True, exist_ok=True)
        await self._clear_pid_file(files)
        self.port = port or _free_port()
        self._stopping = False
        with open(self.log_path, "ab") as output:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "mojavox_notify.store.nx27017", str(os.getpid()),
                "--data-dir", str(files), "--host", "127.0.0.1", "-p", str(self.port),
                "--log-file", os.devnull, "--pid-file", str(self.pid_path),
                stdin=asyncio.subprocess.DEVNULL, stdout=output, stderr=output)
        try:
            await self._wait_until_ready()
        except BaseException:
            await self.stop()
            raise
        self._watcher = asyncio.get_running_loop().create_task(self._watch())
        log.info("nx-27017 (pid %s) on port %s, files in %s",
                 self._process.pid, self.port, files)
        return self.url

    async def _clear_pid_file(self, files: Path) -> None:
        """Wait for the child of a server that was SIGKILLed to exit, then drop its pid file.

        nx-27017 refuses to start while its pid file names a live process, and the file of a
        killed child stays behind, naming an exiting (or unreaped, or reused) pid.
        """
        deadline = time.monotonic() + PREVIOUS_CHILD_EXIT_SECONDS
        while True:
            pid = _read_pid(self.pid_path)
            if pid is None or not _serves(pid, files):
                self.pid_path.unlink(missing_ok=True)
                return
            if time.monotonic() > deadline:
                raise Nx27017Error(
                    f"another nx-27017 (pid {pid}) is using {files}; stop it first")
            await asyncio.sleep(0.1)

    async def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        client = AsyncMongoClient(self.url, serverSelectionTimeoutMS=500, connectTimeoutMS=500)
        try:
            while True:
                if self._process.returncode is not None:
                    raise Nx27017Error(
                        f"nx-27017 exited with code {self._process.returncode} while starting; "
                        f"see {self.log_path}")
                try:
                    await client.admin.command("ping")
                    return
                except PyMongoError:
                    if time.monotonic() > deadline:
                        raise Nx27017Error(
                            f"nx-27017 did not answer within {self.startup_timeout:g}s; "
                            f"see {self.log_path}") from None
                    await asyncio.sleep(0.1)
        finally:
            await client.close()

    async def _watch(self) -> None:
        code = await self._process.wait()
        if not self._stopping:
            log.error("nx-27017 (pid %s) died with exit code %s; see %s",
                      self._process.pid, code, self.log_path)

    async def stop(self) -> None:
        self._stopping = True
        process = self._process
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), timeout=5)
            except asyncio.TimeoutError:
                process.kill()
                await process.wait()
        if self._watcher is not None:
            await self._watcher


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None


def _serves(pid: int, files: Path) -> bool:
    """Whether `pid` is a live nx-27017 on `files` (a zombie or a reused pid is not)."""
    proc = Path("/proc")
    if not (proc / "self").exists():  # no procfs: trust the pid alone
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False
    try:
        return str(files).encode() in (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return False


def _exit_when_orphaned(parent_pid: int) -> None:
    def watch():
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _child_main() -> None:
    parent_pid = int(sys.argv[1])
    sys.argv = ["nx-27017", *sys.argv[2:]]
    # nx-27017 logs every command at INFO; configuring the root logger first keeps warnings only.
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s nx-27017 %(levelname)s %(name)s: %(message)s")
    _exit_when_orphaned(parent_pid)
    from nx_27017.nx_27017 import main
    main()


if __name__ == "__main__":
    _child_main()
