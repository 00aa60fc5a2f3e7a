"""A worker (test double) that speaks a future protocol version."""

import json
import sys
import time

print(json.dumps({"type": "hello", "protocol": 99, "worker_id": "future", "pid": 0,
                  "capabilities": {"operations": [], "max_frame_bytes": 1048576,
                                   "heartbeat_interval_ms": 1000.0}}), flush=True)
sys.stdin.read()
time.sleep(0.1)
