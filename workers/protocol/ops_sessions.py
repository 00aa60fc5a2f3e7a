"""Sessions: per-user state that survives a worker crash (issue 6)."""

from __future__ import annotations

from workers.protocol.opspec import OperationSpec

SPECS: tuple[OperationSpec, ...] = ()
