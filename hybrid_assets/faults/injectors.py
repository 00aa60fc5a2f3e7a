"""Faults. From outside: signals, a closed pipe, bytes corrupted in transit. Through the
protocol: operations a worker serves only when started with --allow-fault-injection."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

from workers.host.client import WorkerClient
from workers.host.pool import WorkerPool

Injector = Callable[[WorkerPool], str]  # does the fault; returns what it did, for the record


def _victim(pool: WorkerPool) -> WorkerClient:
    clients = pool.clients
    if not clients:
        raise RuntimeError("no ready worker to inject a fault into")
    return clients[0]


def sigkill(pool: WorkerPool) -> str:
    c = _victim(pool)
    os.kill(c.pid, signal.SIGKILL)
    return f"SIGKILL to worker pid {c.pid}"


def sigstop(pool: WorkerPool) -> str:
    """A hung worker: alive, silent. The pool must notice from missed heartbeats."""
    c = _victim(pool)
    os.kill(c.pid, signal.SIGSTOP)
    return f"SIGSTOP to worker pid {c.pid}"


def close_pipe(pool: WorkerPool) -> str:
    """The host's end of the worker's stdin closes (the spec's stdin/stdout pipe break)."""
    c = _victim(pool)
    c.close_stdin()
    return f"closed the stdin pipe of worker pid {c.pid}"


def corrupt_bytes(pool: WorkerPool) -> str:
    """Damaged frames in transit: a truncated request, invalid UTF-8 and a broken object."""
    c = _victim(pool)
    c.write_raw(b'{"type":"request","id":99999,"op":"pi\xff\xfe\n{"type": "request", "id": \n\x00\x01garbage\n')
    return f"wrote 3 corrupted frames to worker pid {c.pid}"


def protocol_crash(pool: WorkerPool) -> str:
    c = _victim(pool)
    c.submit("fault.crash", {"exit_code": 70})
    return f"fault.crash sent to worker pid {c.pid}"


INJECTORS: dict[str, Injector] = {
    "sigkill": sigkill,
    "sigstop": sigstop,
    "close_pipe": close_pipe,
    "corrupt_bytes": corrupt_bytes,
    "protocol_crash": protocol_crash,
}
