"""A non-compliant worker (test double): prints garbage on stdout around valid frames."""

import json
import sys

out = sys.stdout
out.write("Loading model... 0.00%\n")
out.write(json.dumps({"type": "hello", "protocol": 1, "worker_id": "garbage", "pid": 0,
                      "capabilities": {"operations": [{"name": "ping", "idempotent": True}],
                                       "max_frame_bytes": 1048576, "heartbeat_interval_ms": 1000.0}}) + "\n")
out.flush()
for line in sys.stdin:
    req = json.loads(line)
    out.write("\x00\x01 not json {\n")
    out.write('{"type": "response", "id": "no ok field"}\n')
    out.write(json.dumps({"type": "response", "id": req["id"], "ok": True, "result": req.get("params", {})}) + "\n")
    out.flush()
