"""The floor: a bare JSON-lines echo, the least a Python worker on pipes can cost."""

import json
import sys

out = sys.stdout.buffer
for line in sys.stdin.buffer:
    out.write(json.dumps(json.loads(line)).encode() + b"\n")
    out.flush()
