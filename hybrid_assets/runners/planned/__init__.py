"""Planned runners: declared with the metrics they will produce, not written yet.

Each ``part<N>.py`` module holds ``PLANNED: dict[str, frozenset[str]]``. A case whose runner
is planned records ERROR "not implemented", never a fake result; when a later issue writes
the runner, it moves to the implemented registry (``hybrid_assets.runners._registry``) with
the same name and at least the same metrics.
"""

from __future__ import annotations

import importlib
import pkgutil


def planned_runners() -> dict[str, frozenset[str]]:
    merged: dict[str, set[str]] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for name, metrics in getattr(module, "PLANNED", {}).items():
            merged.setdefault(name, set()).update(metrics)
    return {name: frozenset(metrics) for name, metrics in merged.items()}
