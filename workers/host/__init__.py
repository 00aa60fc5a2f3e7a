"""The host side: spawn, supervise and talk to workers (usable without Dagster)."""

from workers.host.client import PendingRequest, ShutdownOutcome, WorkerClient
from workers.host.command import ENV_WORKER_CMD, WorkerCommandError, resolve_worker_command
from workers.host.errors import (
    NoWorkerAvailable,
    RequestTimeout,
    WorkerError,
    WorkerLost,
    WorkerStartError,
)

__all__ = [
    "ENV_WORKER_CMD",
    "NoWorkerAvailable",
    "PendingRequest",
    "RequestTimeout",
    "ShutdownOutcome",
    "WorkerClient",
    "WorkerCommandError",
    "WorkerError",
    "WorkerLost",
    "WorkerStartError",
    "resolve_worker_command",
]
