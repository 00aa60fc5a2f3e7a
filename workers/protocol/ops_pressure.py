"""Memory-pressure operations: balloons, evictable caches and probes for the 1.4 and 3.2 episodes."""

from __future__ import annotations

from workers.protocol.opspec import OperationSpec

SPECS: tuple[OperationSpec, ...] = ()
