"""Part 1 model workflows (1.1 device-aware placement, 1.2 dependency-aware loading and cache
coherency) on the runtime as it is: ModelHost over a worker's device cache, the host RAM cache,
and simulated devices behind the host's DeviceRouter.

``model_set`` / ``model_graph`` ``tiny`` and ``small`` are the store's smoke and standard model
sets; ``full`` (the deployment's own models) does not exist offline: its lines are SKIPPED.
"""

from __future__ import annotations

import hashlib
import json
import struct
import threading
import time
from collections import Counter
from typing import Any

import msgspec
import psutil

from hybrid_assets.runners import RunnerContext
from hybrid_assets.runners.model_dependencies import RecordingClient
from hybrid_assets.runners.model_state import AGREE_TIMEOUT_S, wait_agreed
from hybrid_assets.runners.model_support import MiB, control_image, ensure_models, model_session
from workers.host import WorkerClient
from workers.host.devices import DeviceRouter
from workers.host.errors import WorkerError
from workers.host.models import ModelHost
from workers.models import generate
from workers.models.store import ModelStore
from workers.protocol.images import ShmLedger

PLACEMENT_METRICS = frozenset({"compatibility_assessment_error", "unsuitable_placement_detected", "placement_time_s"})
LOADING_METRICS = frozenset({"dependency_graph_error_count", "loading_order_violation_count", "model_ready_ok",
                             "load_time_s"})
COHERENCY_METRICS = frozenset({"ram_cache_population_ok", "vram_load_sync_ok", "cache_vram_state_mismatch_detected",
                               "cache_to_vram_sync_s"})
SET_PROFILES = {"tiny": "smoke", "small": "standard"}
SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64", "I8": "int8",
                      "I32": "int32", "U8": "uint8"}
PROBE = {"prompt": "probe", "width": 64, "height": 64, "steps": 2, "seed": 0, "output": "digest",
         "progress": False}


def model_set(ctx: RunnerContext, key: str, metrics: frozenset[str]) -> tuple[ModelStore, list[str]] | None:
    """The store and the named set's models, or None after skipping every metric (``full``)."""
    which = str(ctx.params[key])
    if which not in SET_PROFILES:
        for metric in metrics:
            ctx.recorder.skip(metric, f"{key} {which!r}: the deployment's own models are not available offline; "
                                      f"only {sorted(SET_PROFILES)} (the store's generated sets) can run here")
        return None
    profile = SET_PROFILES[which]
    store = ensure_models(None, profile=profile)
    return store, [s.name for s in generate.PROFILES[profile]]


# ---- 1.1 device-aware placement -------------------------------------------------------------------
def model_dtypes(store: ModelStore, name: str) -> set[str]:
    """The dtypes of a model's stored weights, read from the safetensors headers."""
    found: set[str] = set()
    for rel in store.entry(name).weight_files():
        with open(store.file_path(name, rel), "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        found |= {SAFETENSORS_DTYPES.get(v["dtype"], v["dtype"]) for k, v in header.items() if k != "__metadata__"}
    return found


def _free_bytes(listed: dict[str, Any]) -> dict[str, int]:
    """Free memory per device as the host observes it: a simulated device's budget minus its use;
    the CPU's available RAM (the host shares the machine with the worker)."""
    free = {d["id"]: int(d["memory_total"] - d["memory_used"]) for d in listed["devices"] if d["kind"] == "simulated"}
    free["cpu"] = int(psutil.virtual_memory().available)
    return free


def device_aware_placement(ctx: RunnerContext) -> None:
    """The runtime has no placement planner or compatibility check of its own for models across
    devices: ``models.configure`` puts the whole model cache on one device. What the system does
    offer is asked, and judged against the host's ground truth:

    - its verdict on (model, device): whether the device accepts the model's weights when asked to
      hold them (``device.run`` load of the model's footprint, then freed);
    - its placement: the host's DeviceRouter (least-loaded) choosing where the weights go.

    Ground truth (the why-text): the footprint at the model's stored dtype fits the device's free
    memory as the host observes it just before, and discovery lists that dtype for the device.
    """
    rec = ctx.recorder
    chosen = model_set(ctx, "model_set", PLACEMENT_METRICS)
    if chosen is None:
        return
    store, names = chosen
    placements = int(ctx.params["placements"])
    n_sim = int(ctx.params.get("simulated_devices", 0))
    footprint = {n: store.entry(n).total_bytes for n in names}
    dtypes = {n: model_dtypes(store, n) for n in names}
    total = sum(footprint.values())
    # Unequal devices: even ones hold half the set and take every float type, odd ones a quarter
    # and float32 only, so some models fit or run on one device and not the other.
    specs = [{"name": f"sim:gpu{i}", "memory_bytes": int(total * (0.5 if i % 2 == 0 else 0.25)), "backing": "cpu",
              "dtypes": ["float32", "float16", "bfloat16"] if i % 2 == 0 else ["float32"]} for i in range(n_sim)]
    with WorkerClient(ctx.worker_argv, name=f"{ctx.case_id}-devices", startup_timeout=120).start() as c:
        if specs:
            c.request("devices.configure", {"devices": specs})
        found = c.request("discover_devices", {"probe_dtypes": True}, timeout=120)
        supported = {("cpu" if d["kind"] == "cpu" else d["id"]): set(d["dtypes"]) for d in found["devices"]
                     if d["kind"] in ("cpu", "simulated")}
        sims = [s["name"] for s in specs]
        devices = [*sims, "cpu"]
        router = DeviceRouter(c, sims or ["cpu"], fallback="cpu")
        placed: dict[str, list[str]] = {d: [] for d in devices}
        start_free = _free_bytes(c.request("devices.list", {}))
        rec.note("devices", {d: {"free_mib": round(start_free[d] / MiB, 1), "dtypes": sorted(supported.get(d, set()))}
                             for d in devices})
        rec.note("models", {n: {"mib": footprint[n] / MiB, "dtypes": sorted(dtypes[n])} for n in names})
        for i in range(placements):
            if i and i % len(names) == 0:  # a round placed the whole set: start the next from empty devices
                _free_placed(c, placed)
            name = names[i % len(names)]
            need = footprint[name]
            free = _free_bytes(c.request("devices.list", {}))
            truth = {d: need <= free[d] and dtypes[name] <= supported.get(d, set()) for d in devices}
            for dev in devices:
                verdict = _accepts(c, dev, need)
                rec.record("compatibility_assessment_error", 0.0 if verdict == truth[dev] else 1.0, "count",
                           model=name, device=dev, truth=truth[dev], verdict=verdict)
            tag = f"p{i}-{name}"
            before = _free_bytes(c.request("devices.list", {}))
            t0 = time.perf_counter()
            error = ""
            try:
                routed = router.run({"workload": "load", "weights_bytes": need, "model": tag}, timeout=120)
                dev = routed.device
                placed[dev].append(tag)
                rec.record("placement_time_s", time.perf_counter() - t0, "s", model=name, device=dev)
            except WorkerError as exc:
                dev, error = router.dispatches[-1][1], f"{exc.code}: {exc.message}"[:160]
            after = _free_bytes(c.request("devices.list", {}))
            # Simulated devices never evict weights to make room (they refuse); a drop in the chosen
            # device's use below what it held plus the new model would be an eviction all the same.
            evicted = dev in sims and not error and before[dev] - after[dev] < need
            to_cpu_with_room = dev == "cpu" and any(truth[d] for d in sims)
            unsuitable = bool(error) or not truth[dev] or to_cpu_with_room or evicted
            rec.record("unsuitable_placement_detected", 1.0 if unsuitable else 0.0, "count", model=name, device=dev,
                       **({"error": error} if error else {}), suitable=truth[dev], evicted=evicted)


def _accepts(c: WorkerClient, dev: str, nbytes: int) -> bool:
    """The system's own answer to "can this device hold the model": it takes the weights or refuses."""
    try:
        c.request("device.run", {"device": dev, "workload": "load", "weights_bytes": nbytes, "model": "probe"},
                  timeout=120)
    except WorkerError:
        return False
    if dev != "cpu":
        c.request("memory.free", {"device": dev, "tag": "model:probe"})
    return True


def _free_placed(c: WorkerClient, placed: dict[str, list[str]]) -> None:
    for dev, tags in placed.items():
        if dev != "cpu":
            for tag in tags:
                c.request("memory.free", {"device": dev, "tag": f"model:{tag}"})
        tags.clear()


# ---- 1.2 dependency-aware loading ----------------------------------------------------------------------
def _graphs(store: ModelStore, names: list[str]) -> list[list[str]]:
    """Load requests: every dependent together (a shared base), each dependent alone, then each
    pipeline that nothing depends on. Dependents are named before their bases: the order asked
    for is not the order that works."""
    dependents = sorted(n for n in names if store.entry(n).depends_on)
    needed = {d for n in dependents for d in store.entry(n).depends_on}
    pipelines = sorted(n for n in names if store.entry(n).kind == "sd_pipeline" and n not in needed)
    return [g for g in (dependents, *([d] for d in dependents), *([p] for p in pipelines)) if g]


def graph_errors(store: ModelStore, graph: list[str], loaded: list[str], worker: dict[str, list[str]]) -> int:
    """Edges the worker resolved (its residents' ``depends_on``) that the manifests do not declare
    for the requested graph, or the reverse; plus models of the graph not resident and models
    loaded that the graph does not need."""
    closure = store.load_order(graph)
    declared = {(m, d) for m in closure for d in store.entry(m).depends_on}
    resolved = {(m, d) for m, deps in worker.items() if m in closure for d in deps}
    return len(declared ^ resolved) + len(set(closure) - set(worker)) + len(set(loaded) - set(closure))


def order_violations(store: ModelStore, loaded: list[str]) -> int:
    """Models loaded before one of their dependencies (from cold: every dependency loads in the
    same request) plus shared dependencies loaded more than once."""
    early = sum(1 for k, m in enumerate(loaded) if any(d not in loaded[:k] for d in store.entry(m).depends_on))
    return early + sum(n - 1 for n in Counter(loaded).values())


def _probe(store: ModelStore, name: str, ledger: ShmLedger) -> dict[str, Any] | None:
    entry = store.entry(name)
    if entry.kind == "sd_pipeline":
        return {"model": name, **PROBE}
    if entry.kind == "lora":
        return {"model": entry.depends_on[0], "lora": name, **PROBE}
    if entry.kind == "controlnet":
        ref = ledger.publish(control_image(PROBE["width"]))
        return {"model": entry.depends_on[0], "mode": "controlnet", "control_model": name,
                "control_image": msgspec.structs.asdict(ref), **PROBE}
    return None  # synthetic weights run no inference


def dependency_aware_loading(ctx: RunnerContext) -> None:
    rec = ctx.recorder
    chosen = model_set(ctx, "model_graph", LOADING_METRICS)
    if chosen is None:
        return
    store, names = chosen
    loads = int(ctx.params["loads"])
    graphs = _graphs(store, names)
    cache_mib = sum(store.entry(n).total_bytes for n in names) * 2 / MiB + 64
    ledger = ShmLedger()
    with model_session(ctx, store, cache_mib=cache_mib) as s:
        client = RecordingClient(s.client)
        host = ModelHost(client, store)  # type: ignore[arg-type]  # records every model.load answer
        try:
            for i in range(loads):
                graph = graphs[i % len(graphs)]
                host.configure(cache_mib=cache_mib)  # nothing resident: every model in the graph loads
                client.take_loads()
                t0 = time.perf_counter()
                for target in graph:
                    host.load(target, use_cache=False)
                rec.record("load_time_s", time.perf_counter() - t0, "s", graph=",".join(graph))
                steps = [st for r in client.take_loads() for st in r["steps"]]
                loaded = [st["name"] for st in steps if st["source"] != "resident"]
                closure = store.load_order(graph)
                worker = {m["name"]: m["depends_on"] for m in s.client.request("model.list")["resident"]}
                rec.record("dependency_graph_error_count", graph_errors(store, graph, loaded, worker), "count",
                           graph=",".join(graph))
                rec.record("loading_order_violation_count", order_violations(store, loaded), "count",
                           graph=",".join(graph), order=",".join(loaded))
                for name in closure:
                    params = _probe(store, name, ledger)
                    if params is not None:
                        rec.record("model_ready_ok", _ready(host, client, params), "ratio", model=name,
                                   graph=",".join(graph))
        finally:
            ledger.unlink_all()


def _ready(host: ModelHost, client: RecordingClient, params: dict[str, Any]) -> float:
    """1 when the probe generates an image and nothing was loaded, evicted or left loading for it."""
    before = client.request("model.list")
    try:
        _, result = host.generate(params, timeout=120)
    except WorkerError:
        return 0.0
    after = client.request("model.list")
    same = {m["name"] for m in before["resident"]} == {m["name"] for m in after["resident"]}  # use reorders LRU
    quiet = same and after["evictions"] == before["evictions"] and not after["loading"] and not client.take_loads()
    return 1.0 if quiet and len(result["sha256"]) == 1 else 0.0


# ---- 1.2 cache coherency -----------------------------------------------------------------------------
def cache_coherency(ctx: RunnerContext) -> None:
    rec = ctx.recorder
    chosen = model_set(ctx, "model_set", COHERENCY_METRICS)
    if chosen is None:
        return
    store, names = chosen
    cycles = int(ctx.params["cycles"])
    total = sum(store.entry(n).total_bytes for n in names)
    biggest = max(store.entry(n).total_bytes for n in names)
    # Caps below the set's size, so both caches evict on their own between the cycle's operations.
    device_mib = max(0.6 * total, 1.2 * biggest) / MiB
    host_mib = max(0.75 * total, 1.5 * biggest) / MiB
    source: dict[tuple[str, str], str] = {}

    def source_sha(name: str, rel: str) -> str:
        if (name, rel) not in source:
            source[name, rel] = hashlib.sha256(store.file_path(name, rel).read_bytes()).hexdigest()
        return source[name, rel]

    with model_session(ctx, store, cache_mib=device_mib, host_cache_mib=host_mib) as s:
        cache, host = s.cache, s.host
        assert cache is not None

        def check(op: str, name: str) -> None:
            report = host.sync_state()
            device_ok = s.client.request("model.list")["device"] == "cpu"
            rec.record("cache_vram_state_mismatch_detected", 0.0 if report.consistent and device_ok else 1.0, "count",
                       op=op, model=name)

        def populate(name: str) -> dict[str, str]:
            """Fill (or hit) the RAM cache for the model's chain; the target's cached checksums."""
            sums: dict[str, str] = {}
            for m in store.load_order([name]):
                fill = cache.ensure(m)
                cached = {rel: hashlib.sha256(cache.read(m, rel)).hexdigest() for rel in store.entry(m).files}
                ok = m in cache and all(cached[rel] == source_sha(m, rel) for rel in cached)
                rec.record("ram_cache_population_ok", 1.0 if ok else 0.0, "ratio", model=m, hit=fill.hit)
                if m == name:
                    sums = cached
            return sums

        def transfer(op: str, name: str) -> None:
            if name in host.expected:
                host.unload(name)  # a transfer starts from a model the device does not hold
            cached = populate(name)
            t0 = time.monotonic()
            out = host.load(name)
            agreed_at, _ = wait_agreed(host, AGREE_TIMEOUT_S)
            worker = {m["name"]: m for m in s.client.request("model.list")["resident"]}.get(name)
            step = next(st for st in out.result["steps"] if st["name"] == name)
            ok = (worker is not None and worker["files"] == cached and not worker["corrupt"]
                  and host.expected.get(name) == cached and step["source"] == "shm" and not step["host_copy_corrupt"])
            rec.record("vram_load_sync_ok", 1.0 if ok else 0.0, "ratio", model=name, op=op)
            if agreed_at is not None:
                rec.record("cache_to_vram_sync_s", agreed_at - t0, "s", model=name, op=op, device="cpu")
            check(op, name)

        host.load(names[0])  # warm-up (imports, first pipeline build), not a sample
        for c in range(cycles):
            name = names[c % len(names)]
            populate(name)
            check("ram_load", name)
            transfer("transfer", name)
            host.unload(name)
            check("evict_device", name)
            if c % 2:
                cache.evict(name)
                check("evict_ram", name)
            transfer("reload", name)
            _concurrent(host, cache, store, name)
            check("concurrent", name)
        rec.note("caps_mib", {"device": round(device_mib, 1), "host_ram": round(host_mib, 1)})
        rec.note("device_evictions", s.client.request("model.list")["evictions"])
        rec.note("host_cache", {"hits": cache.hits, "misses": cache.misses, "evictions": cache.evictions})


def _concurrent(host: ModelHost, cache: Any, store: ModelStore, name: str) -> None:
    """Two loads of the same model at once, from the RAM cache, while it is not resident: the
    worker must load it once and both answers must leave one consistent view. The chain is put in
    the RAM cache first: two fills of the same entry at once are not what is tested here."""
    if name in host.expected:
        host.unload(name)
    for m in store.load_order([name]):
        cache.ensure(m)
    errors: list[BaseException] = []

    def load() -> None:
        try:
            host.load(name)
        except WorkerError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    if errors:
        raise errors[0]


RUNNERS = {
    "model.device_aware_placement": (PLACEMENT_METRICS, device_aware_placement),
    "model.dependency_aware_loading": (LOADING_METRICS, dependency_aware_loading),
    "model.cache_coherency": (COHERENCY_METRICS, cache_coherency),
}
