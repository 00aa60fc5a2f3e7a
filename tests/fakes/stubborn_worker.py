"""A worker (test double) that ignores the shutdown request and SIGTERM: only SIGKILL stops it."""

import json
import signal
import sys
import time

signal.signal(signal.SIGTERM, signal.SIG_IGN)
print(json.dumps({"type": "hello", "protocol": 1, "worker_id": "stubborn", "pid": 0,
                  "capabilities": {"operations": [], "max_frame_bytes": 1048576,
                                   "heartbeat_interval_ms": 60000.0}}), flush=True)
for _line in sys.stdin:
    pass  # never answers
while True:  # and does not exit on EOF either
    time.sleep(1)
