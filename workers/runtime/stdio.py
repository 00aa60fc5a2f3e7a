"""Keep file descriptor 1 for the protocol alone.

Native libraries (ncnn, CUDA tooling, tqdm in C extensions) write to fd 1 directly, under
Python's ``sys.stdout``. Redirecting ``sys.stdout`` is not enough: we duplicate fd 1 to a
private descriptor for the protocol and point fd 1 at stderr, so whatever anybody prints
lands in the log, never in the host's message stream.
"""

from __future__ import annotations

import os
import sys
from typing import BinaryIO


def claim_stdout() -> BinaryIO:
    """The protocol's output stream; fd 1 and ``sys.stdout`` now go to stderr."""
    sys.stdout.flush()
    protocol_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    os.set_inheritable(protocol_fd, False)  # children must not write into the protocol either
    return open(protocol_fd, "wb", buffering=0, closefd=True)
