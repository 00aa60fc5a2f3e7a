"""Shared plumbing of the session runners: a SessionHost of their own (fault operations enabled), a
prepare hook that gives every (replacement) worker the model its sessions use, and comparisons of
session state and of what the worker holds.

Session runners never use the run's shared pool: they crash workers, corrupt state and count what
the worker holds, which must not leak into other cases.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Union

from hybrid_assets.runners import RunnerContext
from workers.host.client import WorkerClient
from workers.host.pool import PoolConfig
from workers.host.sessions import Prepare, SessionHost

FAULT_FLAG = "--allow-fault-injection"
# What the worker holds for sessions; a leak is any of these above its value before the sessions.
HELD = ("sessions", "state_bytes", "workspace_bytes", "scratch_files", "scratch_entries", "open_fds")


def with_fault_flag(ctx: RunnerContext) -> RunnerContext:
    argv = list(ctx.worker_argv)
    return ctx if FAULT_FLAG in argv else dataclasses.replace(ctx, worker_argv=[*argv, FAULT_FLAG])


def model_prepare(ctx: RunnerContext, model: str) -> tuple[str, Prepare]:
    """The store's name for ``model`` (tiny-random: the smoke base pipeline) and a hook that configures
    a worker on the model root and loads it (every replacement gets it before its sessions)."""
    from hybrid_assets.runners.inference_latency import resolve_pipeline
    from hybrid_assets.runners.model_support import ensure_models

    store = ensure_models(ctx)
    name = model if model in store.names() else resolve_pipeline(ctx, store, model)

    def prepare(client: WorkerClient) -> None:
        client.request("models.configure", {"root": str(store.root), "verify": "structure", "cache_mib": 1024},
                       timeout=120.0)
        client.request("model.load", {"name": name}, timeout=120.0)

    return name, prepare


@contextmanager
def session_host(ctx: RunnerContext, *, workers: int = 1, prepare: Union[Prepare, None] = None,
                 stable_after_s: float = 1.0, max_restarts: int = 10, restart_window_s: float = 600.0,
                 backoff_initial_s: float = 0.1, max_resubmits: int = 2) -> Iterator[SessionHost]:
    config = PoolConfig(size=workers, backoff_initial_s=backoff_initial_s, stable_after_s=stable_after_s,
                        max_restarts=max_restarts, restart_window_s=restart_window_s, startup_timeout_s=60.0)
    host = SessionHost(with_fault_flag(ctx).worker_argv, workers=workers, config=config, prepare=prepare,
                       name=f"{ctx.case_id}-sessions", max_resubmits=max_resubmits)
    ctx.recorder.note("session_pool", {"workers": workers, "stable_after_s": stable_after_s,
                                       "max_restarts": max_restarts, "restart_window_s": restart_window_s,
                                       "backoff_initial_s": backoff_initial_s, "max_resubmits": max_resubmits})
    with host:  # starts it
        yield host


def diff_fields(expected: Mapping[str, Any], actual: Any) -> list[str]:
    """The top-level fields that differ (missing, extra or changed), sorted; [] when equal."""
    if not isinstance(actual, Mapping):
        return [f"<state is a {type(actual).__name__}>"]
    keys = set(expected) | set(actual)
    return sorted(k for k in keys if k not in expected or k not in actual or expected[k] != actual[k])


def leaks(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """What the worker holds above ``before`` (session.list totals)."""
    out = [f"{k} {after[k]} > {before[k]}" for k in HELD if after.get(k, 0) > before.get(k, 0)]
    refs_before, refs_after = before.get("model_refs", {}), after.get("model_refs", {})
    out += [f"model_refs[{m}] {n} > {refs_before.get(m, 0)}" for m, n in refs_after.items()
            if n > refs_before.get(m, 0)]
    return out
