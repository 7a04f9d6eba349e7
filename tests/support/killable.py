"""What the test servers a test may kill and start again (redis-server, nats-server) share."""

from __future__ import annotations

import subprocess


class KillableServer:
    """A server process of a test's own: `start()` is each server's; `kill()` and `stop()` are
    these."""

    process: subprocess.Popen | None = None

    def kill(self) -> None:
        """SIGKILL: an abrupt loss, like a crashed host (connections reset, nothing flushed)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None
