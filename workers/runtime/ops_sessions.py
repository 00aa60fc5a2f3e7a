"""Sessions: per-user state that survives a worker crash (issue 6)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from workers.runtime.context import RequestContext

if TYPE_CHECKING:
    from workers.runtime.server import WorkerServer


def work_handlers(server: WorkerServer) -> dict[str, Callable[[RequestContext, Any], Any]]:
    return {}
