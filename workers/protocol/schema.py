"""Generate the protocol's JSON Schema (``docs/protocol/schema.json``).

    python -m workers.protocol.schema --write   # regenerate
    python -m workers.protocol.schema --check   # exit 1 if the file is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import msgspec

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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", action="store_true")
    group.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    text = render()
    if args.write:
        SCHEMA_PATH.parent.mkdir(parents=True, exist_ok=True)
        SCHEMA_PATH.write_text(text)
        print(f"wrote {SCHEMA_PATH}")
        return 0
    current = SCHEMA_PATH.read_text() if SCHEMA_PATH.exists() else ""
    if current != text:
        print(f"{SCHEMA_PATH} is stale: run `python -m workers.protocol.schema --write`", file=sys.stderr)
        return 1
    print(f"{SCHEMA_PATH} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
