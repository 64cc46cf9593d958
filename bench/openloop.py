"""Open-loop HTTP load: `python -m bench.openloop SPEC.json` (started by `bench.harness.open_loop`).

Requests arrive as a Poisson process at `rate` per second (seeded), whatever the server does: each
arrival takes an idle keep-alive HTTP/1.1 connection (or opens one, up to `max_connections`; past
that it waits for one, and the wait counts). Latency runs from the arrival's *scheduled* time to
the last byte of the response, so a slow server cannot hide its slowness by slowing the arrivals
(no coordinated omission), and a client that falls behind counts against the server too (its lag
is reported). A request is `[path, headers]` (a GET) or `[path, headers, method, body]`. Runs for
`seconds`, or until SIGTERM when `seconds` is 0; then waits for the requests in flight and writes
every sample (scheduled CLOCK_MONOTONIC time, latency, status) as JSON. The first 429 it receives
is also written, at once, to the `marker` file.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
_CLOSE = re.compile(rb"\r\nconnection:[ \t]*close", re.IGNORECASE)
Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def _raw(host: str, path: str, headers: dict[str, str], method: str = "GET", body: str | None = None) -> bytes:
    """One request's bytes: `[path, headers]` is a GET; `[path, headers, method, body]` sends `body`
    (UTF-8) with its Content-Length."""
    data = b"" if body is None else body.encode()
    fields = {**headers, "Content-Length": str(len(data))} if body is not None else headers
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
    return head.encode() + data


class Client:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.port = int(spec["port"])
        host = f"127.0.0.1:{self.port}"
        self.requests = [_raw(host, *request) for request in spec["requests"]]
        self.rate = float(spec["rate"])
        self.seconds = float(spec["seconds"])
        self.rng = random.Random(int(spec["seed"]))
        self.marker = Path(spec["marker"])
        self.idle: list[Connection] = []
        self.slots = asyncio.Semaphore(int(spec["max_connections"]))
        self.samples: list[tuple[float, float, int]] = []
        self.lag: list[float] = []
        self.errors = 0
        self.error_kinds: dict[str, int] = {}
        self.refused_seen = False
        self.stopping = False

    def _error(self, exc: BaseException) -> None:
        name = type(exc).__name__
        self.error_kinds[name] = self.error_kinds.get(name, 0) + 1

    async def _connect(self) -> Connection:
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def _exchange(self, conn: Connection, raw: bytes) -> tuple[int, bool]:
        reader, writer = conn
        writer.write(raw)
        await writer.drain()  # a large body (bench.hostile's) is written before the answer is awaited
        head = await reader.readuntil(b"\r\n\r\n")
        length = _LENGTH.search(head)
        if length is None:
            raise ValueError("response without Content-Length")
        await reader.readexactly(int(length.group(1)))
        return int(head[9:12]), _CLOSE.search(head) is None

    async def one(self, raw: bytes, scheduled: float) -> None:
        async with self.slots:
            self.lag.append(time.monotonic() - scheduled)
            status = 0
            for attempt in range(2):  # a keep-alive connection the server closed meanwhile: once more on a new one
                try:
                    conn = self.idle.pop() if self.idle and attempt == 0 else await self._connect()
                except OSError as exc:
                    self._error(exc)
                    continue
                try:
                    status, keep = await self._exchange(conn, raw)
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    conn[1].close()
                    if attempt:
                        self._error(exc)
                    continue
                if keep:
                    self.idle.append(conn)
                else:
                    conn[1].close()
                break
            done = time.monotonic()
        if status == 0:
            self.errors += 1
        self.samples.append((scheduled, done - scheduled, status))
        if status == 429 and not self.refused_seen:
            self.refused_seen = True
            self.marker.write_text(repr(done))

    async def run(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop)
        started = time.monotonic()
        end = started + self.seconds if self.seconds > 0 else float("inf")
        tasks: set[asyncio.Task[None]] = set()
        at = started
        i = 0
        while not self.stopping:
            at += self.rng.expovariate(self.rate)
            if at >= end:
                break
            delay = at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.stopping:
                break
            task = asyncio.create_task(self.one(self.requests[i % len(self.requests)], at))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        if tasks:
            await asyncio.wait(tasks, timeout=30)
        for _, writer in self.idle:
            writer.close()
        lag = sorted(self.lag) or [0.0]
        return {"started": started, "stopped": time.monotonic(), "rate": self.rate, "sent": i,
                "unfinished": sum(1 for t in tasks if not t.done()), "errors": self.errors, "error_kinds": self.error_kinds,
                "client_lag_p99_ms": 1000 * lag[int(0.99 * (len(lag) - 1))], "client_lag_max_ms": 1000 * lag[-1],
                "samples": self.samples}

    def _stop(self) -> None:
        self.stopping = True


def main(argv: list[str]) -> None:
    spec = json.loads(Path(argv[0]).read_text())
    result = asyncio.run(Client(spec).run())
    Path(spec["out"]).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
