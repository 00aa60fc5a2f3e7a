"""Device-domain operations: simulated devices, hot add/removal, disconnection, health monitoring."""

from __future__ import annotations

from workers.protocol.opspec import OperationSpec

SPECS: tuple[OperationSpec, ...] = ()
