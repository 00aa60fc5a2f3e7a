"""Generate the protocol's JSON Schema (``docs/protocol/schema.json``).

    python -m workers.protocol.schema --write   # regenerate
    python -m workers.protocol.schema --check   # exit 1 if the file is stale
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from workers.generated import generated_file_main
from workers.protocol.messages import PROTOCOL_VERSION, Request, WorkerMessage
from workers.protocol.operations import OPERATIONS

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "docs" / "protocol" / "schema.json"


def build_schema() -> dict[str, Any]:
    """One document: both directions of messages, plus each operation's params and result."""
    op_types: list[Any] = []
    for spec in OPERATIONS:
        op_types += [spec.params, spec.result]
    schemas, components = msgspec.json.schema_components(
        [Request, WorkerMessage, *op_types], ref_template="#/$defs/{name}"
    )
    host_to_worker, worker_to_host = schemas[0], schemas[1]
    operations = {}
    for i, spec in enumerate(OPERATIONS):
        operations[spec.name] = {
            "description": spec.description,
            "idempotent": spec.idempotent,
            "control": spec.control,
            "fault_injection_only": spec.fault,
            "params": schemas[2 + 2 * i],
            "result": schemas[3 + 2 * i],
        }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"hybrid-worker-protocol/v{PROTOCOL_VERSION}",
        "title": f"Hybrid worker protocol v{PROTOCOL_VERSION}",
        "description": (
            "JSON lines over stdin (host to worker) and stdout (worker to host). "
            "Generated from workers/protocol/messages.py; do not edit by hand."
        ),
        "protocol_version": PROTOCOL_VERSION,
        "host_to_worker": host_to_worker,
        "worker_to_host": worker_to_host,
        "operations": operations,
        "$defs": components,
    }


def render() -> str:
    return json.dumps(build_schema(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    return generated_file_main(SCHEMA_PATH, render, "python -m workers.protocol.schema --write", __doc__ or "", argv)


if __name__ == "__main__":
    sys.exit(main())
