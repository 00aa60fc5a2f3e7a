"""Handlers of link operations (see workers/protocol/ops_link.py)."""

from __future__ import annotations

import hashlib
import os
import string
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from workers.protocol.ops_link import (
    DIGEST_HEX_LEN,
    FRAME_ENVELOPE_BYTES,
    CapabilityProfileParams,
    CapabilityProfileResult,
    LinkTransferParams,
    LinkTransferResult,
    max_payload_bytes,
)
from workers.runtime.context import RequestContext
from workers.runtime.profiling import profile_device

if TYPE_CHECKING:
    from workers.runtime.server import WorkerServer

_HEX = frozenset(string.hexdigits.lower())


def work_handlers(server: WorkerServer) -> dict[str, Callable[[RequestContext, Any], Any]]:
    # A worker started with a tiny frame limit still serves everything else; it just cannot
    # carry transfer payloads (every reply_bytes > 0 is refused by name below).
    room = server.config.max_frame_bytes - FRAME_ENVELOPE_BYTES
    reply_limit = max_payload_bytes(server.config.max_frame_bytes) if room >= 4 else 0

    def transfer(ctx: RequestContext, p: LinkTransferParams) -> LinkTransferResult:
        if p.payload and not p.sha256:
            raise ValueError("sha256 is required with a payload (the digest the host computed before sending)")
        expected = p.sha256.lower()
        if expected and (len(expected) != DIGEST_HEX_LEN or not set(expected) <= _HEX):
            raise ValueError(f"sha256 must be {DIGEST_HEX_LEN} hex digits, got {p.sha256[:80]!r}")
        if p.reply_bytes < 0:
            raise ValueError(f"reply_bytes must not be negative, got {p.reply_bytes}")
        if p.reply_bytes > reply_limit:
            # The answer would exceed the frame limit this worker announced: the host must split.
            raise ValueError(f"reply_bytes {p.reply_bytes} exceeds the {reply_limit} bytes that fit in one frame "
                             f"of {server.config.max_frame_bytes} bytes; split the transfer")
        received = hashlib.sha256(p.payload).hexdigest()
        reply = os.urandom(p.reply_bytes)  # fresh each time: a stale or reordered reply cannot pass
        return LinkTransferResult(
            received_bytes=len(p.payload), received_sha256=received, intact=received == expected if expected else True,
            payload=reply, sha256=hashlib.sha256(reply).hexdigest(),
        )

    def capability_profile(ctx: RequestContext, p: CapabilityProfileParams) -> CapabilityProfileResult:
        return profile_device(p, ctx.check)

    return {"link.transfer": transfer, "device.capability_profile": capability_profile}
