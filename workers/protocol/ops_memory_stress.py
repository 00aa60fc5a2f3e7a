"""Memory stress and benchmark operations (2.2 and 4.2): thrashing, concurrent allocation, GC scaling."""

from __future__ import annotations

from workers.protocol.opspec import OperationSpec

SPECS: tuple[OperationSpec, ...] = ()
