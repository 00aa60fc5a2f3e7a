"""What one protocol operation is: its name, parameter and result types, and how it is served."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OperationSpec:
    name: str
    params: type
    result: type
    idempotent: bool
    control: bool = False  # answered on the reader thread, never queued behind work
    fault: bool = False  # registered only when the worker starts with --allow-fault-injection
    description: str = ""
