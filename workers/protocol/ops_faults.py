"""Faults on the protocol link itself (issue 6, 1.5 communication failures): damage in the worker's
own output stream. Damage on the way in is written by the host (``WorkerClient.write_raw``), and a
broken pipe is made by the host too (``WorkerClient.break_pipe``)."""

from __future__ import annotations

import msgspec

from workers.protocol.opspec import OperationSpec


class CorruptOutputParams(msgspec.Struct, forbid_unknown_fields=True):
    # Each entry is written as is onto the protocol stream (include the newline to end a frame;
    # leave it out to damage the next frame too, as a torn write would).
    chunks: list[str]


class CorruptOutputResult(msgspec.Struct):
    written: int  # bytes


SPECS: tuple[OperationSpec, ...] = (
    OperationSpec("fault.corrupt_output", CorruptOutputParams, CorruptOutputResult, idempotent=False, fault=True,
                  description="Write damaged bytes onto the protocol stream (corruption worker -> host)."),
)
