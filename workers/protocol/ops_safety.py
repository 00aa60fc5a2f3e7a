"""Safety validation: a classifier and a policy engine that fail closed (issue 6)."""

from __future__ import annotations

from workers.protocol.opspec import OperationSpec

SPECS: tuple[OperationSpec, ...] = ()
