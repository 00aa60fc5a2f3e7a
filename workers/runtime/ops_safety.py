"""Safety validation: a classifier and a policy engine that fail closed (issue 6)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from workers.runtime.context import RequestContext

if TYPE_CHECKING:
    from workers.runtime.server import WorkerServer


def work_handlers(server: WorkerServer) -> dict[str, Callable[[RequestContext, Any], Any]]:
    return {}
