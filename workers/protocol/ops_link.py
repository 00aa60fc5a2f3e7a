"""Host-worker link operations (4.1 connection, reconnection and data transfer benchmarks)."""

from __future__ import annotations

from workers.protocol.opspec import OperationSpec

SPECS: tuple[OperationSpec, ...] = ()
