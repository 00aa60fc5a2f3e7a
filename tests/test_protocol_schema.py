"""The generated JSON Schema is current and describes real messages."""

from __future__ import annotations

import json

import jsonschema
import msgspec

from workers.protocol import codec, schema
from workers.protocol.messages import Capabilities, ErrorInfo, Event, Hello, OperationInfo, Request, Response
from workers.protocol.operations import OPERATIONS


def test_schema_file_is_up_to_date() -> None:
    assert schema.SCHEMA_PATH.read_text() == schema.render(), (
        "docs/protocol/schema.json is stale: run `python -m workers.protocol.schema --write`")


def _validator(direction: str) -> jsonschema.Draft202012Validator:
    doc = json.loads(schema.SCHEMA_PATH.read_text())
    sub = {**doc[direction], "$defs": doc["$defs"]}
    return jsonschema.Draft202012Validator(sub)


def test_real_messages_validate_and_bad_ones_do_not() -> None:
    host = _validator("host_to_worker")
    worker = _validator("worker_to_host")
    host.validate(json.loads(codec.encode(Request(id=1, op="ping", params={"payload": "x"}))))
    hello = Hello(protocol=1, worker_id="w", pid=1, capabilities=Capabilities(
        operations=[OperationInfo("ping", True)], max_frame_bytes=1024, heartbeat_interval_ms=1000.0))
    for msg in (hello, Response(id=1, ok=False, error=ErrorInfo("PARSE_ERROR", "x")),
                Event(event="heartbeat", data={"seq": 1})):
        worker.validate(json.loads(codec.encode(msg)))
    assert not host.is_valid({"type": "request", "id": 1})  # no op
    assert not worker.is_valid({"type": "event", "event": "bogus"})


def test_every_operation_documents_params_and_result() -> None:
    doc = json.loads(schema.SCHEMA_PATH.read_text())
    assert set(doc["operations"]) == {op.name for op in OPERATIONS}
    for op in OPERATIONS:
        entry = doc["operations"][op.name]
        assert entry["idempotent"] == op.idempotent
        assert "$ref" in entry["params"] and "$ref" in entry["result"]
    ping_params = doc["$defs"]["PingParams"]
    assert ping_params["properties"]["payload"]["type"] == "string"
    assert msgspec.json.decode(b'{"payload": "x"}', type=OPERATIONS[0].params).payload == "x"
