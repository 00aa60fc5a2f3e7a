"""4.3 lifecycle management with dependencies: loading order (requested vs the system's) and the
cost of automatic dependency resolution, on a set of typed models with real dependency edges (a
diffusion pipeline with its parts, a ControlNet and a LoRA on it).

The runtime resolves dependencies on every load: ``ModelHost.load`` walks the manifest
(dependencies first) and the worker's device cache does the same for each request, so no request
order can make it load a dependent before its base or a shared base twice.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from hybrid_assets.runners import RunnerContext
from hybrid_assets.runners.model_support import MiB, ensure_models, model_session
from workers.host import WorkerClient
from workers.host.models import ModelHost
from workers.models.store import ModelStore

ORDER_METRICS = frozenset({"loading_order_time_ratio", "chosen_order_total_s", "requested_order_total_s"})
RESOLUTION_METRICS = frozenset({"dependency_resolution_overhead_ratio"})


class RecordingClient:
    """A ``WorkerClient`` stand-in that keeps every ``model.load`` answer in order: ``ModelHost.load``
    returns only the target's, and the dependency steps are in the answers before it."""

    def __init__(self, client: WorkerClient) -> None:
        self.client = client
        self.loads: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def request(self, op: str, params: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        result = self.client.request(op, params, **kw)
        if op == "model.load":
            with self._lock:
                self.loads.append(result)
        return result

    def take_loads(self) -> list[dict[str, Any]]:
        with self._lock:
            loads, self.loads = self.loads, []
        return loads

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def dependent_set(store: ModelStore) -> tuple[list[str], list[str]]:
    """(every model with dependencies plus what they need, in the manifest's dependency order;
    the leaves: the ones nothing else in the set depends on)."""
    dependents = sorted(n for n in store.names() if store.entry(n).depends_on)
    if not dependents:
        raise ValueError(f"no model in {store.root} declares a dependency: build the profile's ControlNet/LoRA")
    ordered = store.load_order(dependents)
    needed = {d for n in ordered for d in store.entry(n).depends_on}
    return ordered, [n for n in ordered if n not in needed]


def _note_scale(ctx: RunnerContext, store: ModelStore, ordered: list[str]) -> None:
    ctx.recorder.note("model_set", {n: round(store.entry(n).total_bytes / MiB, 2) for n in ordered})
    if "model_gib_scale" in ctx.params:
        # The typed models (pipeline, ControlNet, LoRA) have their sizes fixed by their recipes; the
        # store has no scaled versions of them, and synthetic stand-ins would lose the edges' kinds.
        ctx.recorder.note("model_gib_scale_not_applied",
                          f"asked {ctx.params['model_gib_scale']}; the set is the store's typed tiny models")


def _cold(host: ModelHost, cache_mib: float) -> None:
    """Nothing resident (configure unloads everything). The OS page cache stays warm for both
    variants alike: the files are read from it, not from the disk."""
    host.configure(cache_mib=cache_mib)


def loading_order(ctx: RunnerContext) -> None:
    rec = ctx.recorder
    trials = int(ctx.params["trials"])
    store = ensure_models(ctx)
    ordered, _ = dependent_set(store)
    # The order a caller asks for: dependents first (the reverse of the dependency order). The
    # runtime still loads each dependency before its dependent, as it must.
    requested = list(reversed(ordered))
    cache_mib = sum(store.entry(n).total_bytes for n in ordered) * 2 / MiB + 64
    _note_scale(ctx, store, ordered)
    with model_session(ctx, store, cache_mib=cache_mib) as s:
        for name in ordered:  # warm-up: the first pipeline build in a worker pays imports
            s.host.load(name, use_cache=False)
        for t in range(trials):
            variants = [("requested", requested), ("chosen", s.store.load_order(requested))]
            if t % 2:
                variants.reverse()  # alternate which goes first: drift hits both alike
            totals: dict[str, float] = {}
            for label, order in variants:
                _cold(s.host, cache_mib)
                t0 = time.perf_counter()
                for name in order:
                    s.host.load(name, use_cache=False)
                totals[label] = time.perf_counter() - t0
                missing = sorted(set(ordered) - set(s.host.expected))
                if missing:
                    raise RuntimeError(f"trial {t} ({label} order {order}): {missing} not resident afterwards")
            rec.record("requested_order_total_s", totals["requested"], "s", trial=t, order=",".join(requested))
            rec.record("chosen_order_total_s", totals["chosen"], "s", trial=t,
                       order=",".join(s.store.load_order(requested)))
            rec.record("loading_order_time_ratio", totals["chosen"] / totals["requested"], "ratio", trial=t)


def dependency_resolution(ctx: RunnerContext) -> None:
    rec = ctx.recorder
    pairs = int(ctx.params["pairs"])
    store = ensure_models(ctx)
    ordered, leaves = dependent_set(store)
    cache_mib = sum(store.entry(n).total_bytes for n in ordered) * 2 / MiB + 64
    _note_scale(ctx, store, ordered)
    with model_session(ctx, store, cache_mib=cache_mib) as s:
        for name in ordered:  # warm-up, not a sample
            s.host.load(name, use_cache=False)

        def automatic() -> None:
            for leaf in leaves:  # the system finds and orders the dependencies itself
                s.host.load(leaf, use_cache=False)

        def explicit() -> None:
            for name in ordered:  # already resolved and ordered: one plain request per model
                s.client.request("model.load", {"name": name}, timeout=600)

        for p in range(pairs):
            runs = [("automatic", automatic), ("explicit", explicit)]
            if p % 2:
                runs.reverse()
            took: dict[str, float] = {}
            for label, fn in runs:
                _cold(s.host, cache_mib)
                t0 = time.perf_counter()
                fn()
                took[label] = time.perf_counter() - t0
                listed = {m["name"] for m in s.client.request("model.list")["resident"]}
                if set(ordered) - listed:
                    raise RuntimeError(f"pair {p} ({label}): {sorted(set(ordered) - listed)} not resident afterwards")
            rec.record("dependency_resolution_overhead_ratio",
                       (took["automatic"] - took["explicit"]) / took["explicit"], "ratio", pair=p,
                       automatic_s=took["automatic"], explicit_s=took["explicit"])
        rec.note("leaves_requested", leaves)
        rec.note("explicit_order", ordered)


RUNNERS = {
    "model.loading_order": (ORDER_METRICS, loading_order),
    "model.dependency_resolution": (RESOLUTION_METRICS, dependency_resolution),
}
