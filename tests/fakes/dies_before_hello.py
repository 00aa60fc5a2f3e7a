"""A worker (test double) that fails during start-up, before the handshake."""

import sys

print("fatal: cannot initialise the runtime (test double)", file=sys.stderr, flush=True)
sys.exit(3)
