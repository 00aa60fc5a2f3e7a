"""Faults on the protocol link: damaged bytes written onto the worker's own output stream."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from workers.protocol.ops_faults import CorruptOutputParams, CorruptOutputResult
from workers.runtime.context import RequestContext

if TYPE_CHECKING:
    from workers.runtime.server import WorkerServer


def work_handlers(server: WorkerServer) -> dict[str, Callable[[RequestContext, Any], Any]]:
    def corrupt_output(ctx: RequestContext, p: CorruptOutputParams) -> CorruptOutputResult:
        data = b"".join(c.encode("utf-8", "surrogateescape") for c in p.chunks)
        server.write_raw(data)
        return CorruptOutputResult(len(data))

    return {"fault.corrupt_output": corrupt_output}
