"""Spec 4.1 hot_discovery_refresh: warm re-discovery latency and cache hits, and incremental
discovery of device changes.

Both run on a fresh worker of their own, so the simulated devices present are the case's and
nobody else's. A refresh is ``discover_devices`` with ``use_cache`` on a worker that has already
discovered once; the answer says per device whether its capabilities came from the cache
(``cached``), and only that flag counts as a hit. Incremental discovery times a simulated device
being added or removed in the worker's device layer until the host's inventory (the
``DeviceRouter`` view, kept from the worker's change events) shows it, without any rediscovery.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Union

from hybrid_assets.runners import RunnerContext
from hybrid_assets.runners.device_events import DeviceEvents, Seen, sim_specs
from workers.host import WorkerClient, WorkerError
from workers.host.devices import DeviceRouter

REFRESH_METRICS = frozenset({"refresh_latency_s", "refresh_cache_hit", "refresh_error", "refresh_device_count_match",
                             "cold_discovery_s"})
INCREMENTAL_METRICS = frozenset({"change_detection_s", "change_missed", "spurious_change_detected"})


def hot_discovery_refresh(ctx: RunnerContext) -> None:
    p = ctx.params
    refreshes = int(p["warm_refreshes"])
    n_sims = int(p.get("simulated_devices", 0))
    rec = ctx.recorder
    with WorkerClient(ctx.worker_argv, name=f"{ctx.case_id}-worker").start() as client:
        if n_sims:
            client.request("devices.configure", {"devices": sim_specs(n_sims)})
        t0 = time.perf_counter()
        first = client.request("discover_devices", {}, timeout=120.0)  # the cold discovery the cache comes from
        rec.record("cold_discovery_s", time.perf_counter() - t0, "s", simulated=n_sims)
        expected = sorted(d["id"] for d in first["devices"])
        rec.note("devices", expected)
        for i in range(refreshes):
            t0 = time.perf_counter()
            try:
                result = client.request("discover_devices", {"use_cache": True}, timeout=60.0)
            except WorkerError as exc:
                rec.record("refresh_error", 1.0, "count", refresh=i, error=exc.code)
                ctx.log.warning("refresh %d failed: %s", i, exc)
                continue
            rec.record("refresh_latency_s", time.perf_counter() - t0, "s", refresh=i)
            rec.record("refresh_error", 0.0, "count", refresh=i)
            found = result["devices"]
            rec.record("refresh_device_count_match", 1.0 if sorted(d["id"] for d in found) == expected else 0.0,
                       "ratio", refresh=i, reported=len(found), expected=len(expected))
            for d in found:
                # Only what the answer says counts: a device whose entry does not claim the cache is a miss.
                rec.record("refresh_cache_hit", 1.0 if d.get("cached") else 0.0, "ratio", refresh=i,
                           device=d["id"], kind=d.get("kind"))


def _pace(start: float, index: int, per_min: Union[float, None]) -> None:
    if per_min:
        wait = start + index * 60.0 / float(per_min) - time.monotonic()
        if wait > 0:
            time.sleep(wait)


def incremental_discovery(ctx: RunnerContext) -> None:
    p = ctx.params
    changes, window = int(p["changes"]), float(p["detection_window_s"])
    kinds = list(p.get("change_kinds", ["add", "remove"]))
    bad = sorted(set(kinds) - {"add", "remove"})
    if bad or not kinds:
        raise ValueError(f"change_kinds: expected a list of 'add' and 'remove', got {kinds!r}")
    per_min = p.get("changes_per_min")
    base = int(p.get("base_devices", 2))
    rec = ctx.recorder
    with WorkerClient(ctx.worker_argv, name=f"{ctx.case_id}-worker").start() as client:
        client.request("devices.configure", {"devices": sim_specs(base, prefix="sim:base")})
        # The host inventory under test; subscribed first, so our listener sees an event after the
        # router has applied it.
        router = DeviceRouter(client, [f"sim:base{i}" for i in range(base)])
        events = DeviceEvents(client, kinds={"change"})
        added: list[str] = []
        names = (f"sim:inc{i}" for i in itertools.count())
        kind_cycle = itertools.cycle(kinds)
        start = time.monotonic()
        for i in range(changes):
            _pace(start, i, per_min)
            kind = next(kind_cycle)
            if kind == "remove" and not added:
                kind = "add"  # nothing of ours to remove yet
            name = next(names) if kind == "add" else added.pop(0)
            mark = events.mark()
            t0 = time.monotonic()
            if kind == "add":
                client.request("devices.add", {"name": name, "memory_bytes": 64 << 20, "backing": "cpu"})
                added.append(name)
            else:
                client.request("devices.remove", {"name": name})
            change = "added" if kind == "add" else "removed"

            def shown(s: Seen, name: str = name, change: str = change) -> bool:
                if s.data.get("device") != name or s.data.get("change") != change:
                    return False
                return (router.view(name) is not None) == (change == "added")

            seen = events.wait_for(mark, shown, window)
            if seen is None:
                rec.record("change_missed", 1.0, "count", change=change, seq=i)
                ctx.log.warning("change %d (%s %s) not in the host inventory within %g s", i, change, name, window)
            else:
                rec.record("change_missed", 0.0, "count", change=change, seq=i)
                rec.record("change_detection_s", seen.t - t0, "s", change=change, seq=i)
            others = [s for s in events.since(mark) if s is not seen]
            rec.record("spurious_change_detected", 1.0 if others else 0.0, "count", change=change, seq=i,
                       unexpected=[(s.data.get("change"), s.data.get("device")) for s in others][:5])
        listed = client.request("devices.list")
        worker_view = sorted(d["id"] for d in listed["devices"] if d.get("kind") == "simulated")
        host_view = sorted(router.views)
        rec.note("inventory_matches_worker", host_view == worker_view)
        rec.note("change_seq", listed["change_seq"])


RUNNERS: dict[str, tuple[frozenset[str], Any]] = {
    "device.hot_discovery_refresh": (REFRESH_METRICS, hot_discovery_refresh),
    "device.incremental_discovery": (INCREMENTAL_METRICS, incremental_discovery),
}
