"""Dashboard clients in worker processes, so the server under test has the cores it would have.

Each worker opens its share of sockets (from its own 127.0.0.x address), answers the protocol's
handshake and pings, and timestamps every notification frame (and MOJAVOX Notify's broadcast
frames); the parent drives it through a pipe: collect what arrived, forget it, close.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import random
import time

import websockets

from targets import token

CONNECT_CONCURRENCY = 64
# After a restart each worker retries this many sockets at once (a browser per socket would
# retry all at once; a worker process has to bound its own connect attempts), for 60 s at most.
STORM_CONCURRENCY = 256
STORM_TRIES = 200


def family(kind: str) -> str:
    """`mojavox@<ref>` (a baseline's source) speaks as `mojavox` does."""
    return kind.split("@", 1)[0]


def socket_url(kind: str, port: int, user: str) -> str:
    if kind == "mojavox":
        return f"ws://127.0.0.1:{port}/ws/notifications?token={token(user)}"
    if kind == "socketio":
        return f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket&user={user}"
    return f"ws://127.0.0.1:{port}/ws?user={user}"


async def handshake(kind: str, connection) -> None:
    if kind == "mojavox":
        assert json.loads(await connection.recv())["type"] == "connected"
    elif kind == "socketio":
        assert (await connection.recv()).startswith("0")  # Engine.IO open
        await connection.send("40")  # Socket.IO connect to the default namespace
        assert (await connection.recv()).startswith("40")


def delivery_of(kind: str, message: str) -> tuple[str | None, dict | None]:
    """("notification" or "broadcast", its payload) of a frame that delivers one, else
    (None, None): other frames, pings."""
    if kind == "socketio":
        if not message.startswith("42"):
            return None, None
        name, payload = json.loads(message[2:])
        return (name, payload) if name == "notification" else (None, None)
    frame = json.loads(message)
    if frame.get("type") in ("notification", "broadcast"):
        return frame["type"], frame["payload"]
    return None, None


def sent_of(payload: dict) -> float | None:
    """When the generator sent it: a `sent` field, `data.sent`, or a "bench <sent>" message."""
    sent = payload.get("sent", (payload.get("data") or {}).get("sent"))
    message = payload.get("message")
    if sent is None and isinstance(message, str) and message.startswith("bench "):
        sent = float(message[6:])
    return sent


class Worker:
    def __init__(self, kind: str, port: int, users: list[str], address: str):
        self.kind, self.port, self.users, self.address = kind, port, users, address
        self.arrivals: list[tuple[float, float | None]] = []  # (arrived, sent or None)
        self.connections = []
        # The reconnect storm (mojavox): each user's notification ids as received, and once
        # armed, a socket that closes reconnects with `since` its last one, retrying.
        self.received: dict[str, list[str]] = {user: [] for user in users}
        self.reconnecting = False
        self.back: dict[str, float] = {}  # user -> when its socket was live again
        self.attempts = 0

    async def run(self, pipe) -> None:
        started = time.perf_counter()
        limit = asyncio.Semaphore(CONNECT_CONCURRENCY)
        self._storm_limit = asyncio.Semaphore(STORM_CONCURRENCY)
        results = await asyncio.gather(*(self._open(user, limit) for user in self.users))
        pipe.send(("connected", sum(results), len(results) - sum(results), time.perf_counter() - started))
        loop = asyncio.get_running_loop()
        while True:
            command = await loop.run_in_executor(None, pipe.recv)
            if command == "collect":
                pipe.send(self.arrivals)
            elif command == "forget":
                self.arrivals = []
                pipe.send("ok")
            elif command == "arm":
                self.reconnecting, self.back, self.attempts = True, {}, 0
                pipe.send("ok")
            elif command == "back":
                pipe.send((len(self.back), max(self.back.values(), default=0.0), self.attempts))
            elif command == "received":
                pipe.send(self.received)
            elif command == "close":
                self.reconnecting = False
                await asyncio.gather(*(c.close() for c in self.connections), return_exceptions=True)
                pipe.send("closed")
                return

    async def _open(self, user: str, limit: asyncio.Semaphore, tries: int = 3) -> bool:
        async with limit:
            for _ in range(tries):
                url = socket_url(self.kind, self.port, user)
                if self.received[user]:  # resume after the last notification it has
                    url += f"&since={self.received[user][-1]}"
                self.attempts += 1
                try:
                    connection = await websockets.connect(
                        url, local_addr=(self.address, 0),
                        open_timeout=30, ping_interval=None, max_queue=None, compression=None)
                    await asyncio.wait_for(handshake(self.kind, connection), 30)
                except (OSError, asyncio.TimeoutError, websockets.WebSocketException):
                    await asyncio.sleep(random.uniform(0.1, 0.5))
                    continue
                self.connections.append(connection)
                if self.reconnecting:
                    self.back[user] = time.time()
                asyncio.get_running_loop().create_task(self._read(connection, user))
                return True
            return False

    async def _read(self, connection, user: str) -> None:
        try:
            async for message in connection:
                arrived = time.time()
                if self.kind == "socketio" and message == "2":
                    await connection.send("3")
                    continue
                delivered, payload = delivery_of(self.kind, message)
                if payload is not None:
                    sent = sent_of(payload)
                    self.arrivals.append((arrived, sent))
                    if delivered == "notification" and "id" in payload:
                        self.received[user].append(payload["id"])
        except websockets.WebSocketException:
            pass
        if self.reconnecting:
            self.connections.remove(connection)
            await asyncio.sleep(random.uniform(0.0, 0.3))  # clients' retries are spread
            await self._open(user, self._storm_limit, tries=STORM_TRIES)


def _serve(kind: str, port: int, users: list[str], address: str, pipe) -> None:
    asyncio.run(Worker(kind, port, users, address).run(pipe))


class Peers:
    """`processes` workers sharing `users` (one socket each)."""

    def __init__(self, kind: str, port: int, users: list[str], processes: int):
        kind = family(kind)
        self.pipes, self.processes = [], []
        context = multiprocessing.get_context("spawn")
        for index in range(processes):
            parent, child = context.Pipe()
            share = users[index::processes]
            process = context.Process(target=_serve, daemon=True,
                                      args=(kind, port, share, f"127.0.0.{2 + index}", child))
            process.start()
            self.pipes.append(parent)
            self.processes.append(process)

    def connected(self, timeout: float = 300) -> tuple[int, int, float]:
        """(opened, failed, seconds of the slowest worker)."""
        answers = [self._receive(pipe, timeout) for pipe in self.pipes]
        return (sum(a[1] for a in answers), sum(a[2] for a in answers), max(a[3] for a in answers))

    def collect(self) -> list[tuple[float, float | None]]:
        for pipe in self.pipes:
            pipe.send("collect")
        return [arrival for pipe in self.pipes for arrival in self._receive(pipe, 60)]

    def forget(self) -> None:
        for pipe in self.pipes:
            pipe.send("forget")
        for pipe in self.pipes:
            self._receive(pipe, 60)

    def arm(self) -> None:
        """From now on a socket that closes reconnects with `since` (the reconnect storm)."""
        for pipe in self.pipes:
            pipe.send("arm")
        for pipe in self.pipes:
            self._receive(pipe, 60)

    def back(self) -> tuple[int, float, int]:
        """(sockets live again since armed, when the last of them was, connect attempts)."""
        for pipe in self.pipes:
            pipe.send("back")
        answers = [self._receive(pipe, 60) for pipe in self.pipes]
        return (sum(a[0] for a in answers), max(a[1] for a in answers), sum(a[2] for a in answers))

    def received(self) -> dict[str, list[str]]:
        """Every user's notification ids, in the order its sockets received them."""
        for pipe in self.pipes:
            pipe.send("received")
        found: dict[str, list[str]] = {}
        for pipe in self.pipes:
            found.update(self._receive(pipe, 60))
        return found

    def close(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send("close")
                self._receive(pipe, 60)
            except (OSError, EOFError, TimeoutError):
                pass
        for process in self.processes:
            process.join(10)
            if process.is_alive():
                process.kill()

    @staticmethod
    def _receive(pipe, timeout: float):
        if not pipe.poll(timeout):
            raise TimeoutError("a client worker did not answer")
        return pipe.recv()
