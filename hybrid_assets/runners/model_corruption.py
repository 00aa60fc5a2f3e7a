"""Spec 3.3 model corruption: corrupted cached models (on disk, at rest in the host's RAM cache, in the
cache-to-device transfer) at three severities, and corruption of a resident model in device memory.

Every corruption is injected into a PRIVATE copy of the model root (var/models is shared by everyone):
the worker is configured on the copy, so its own repair (backup, else rebuild from the recipe) writes
there too. The oracle for "what was served" is the image digest of a fixed seeded request against the
clean model's digest (bitwise-identical on CPU); weights-only (synthetic) models have no such oracle, so
for them "served" means the load that made them resident, and detection must come with that load.

Operational choices, per the cases' why texts:
- during_loading: the file on disk is damaged; the worker loads it straight from disk (no host RAM copy),
  so the load is the first read. during_storage: the host RAM cache's copy is damaged at rest, after the
  model was served and left the device; the next load reads it. during_transfer: the host's copy is
  damaged between its cache fill (``ensure``) and ``model.load``. Detection time is from that first read
  to the reply that reports the corruption (what a client can observe).
- Severity per corruption_type: minor flips one bit (tensor data; for metadata, one bit of the
  safetensors JSON header); significant truncates the file (partial_file), zeroes a whole tensor
  (checksum_mismatch) or damages the header (metadata); complete rewrites every byte (the weights file,
  or for metadata the component's config JSON).
- Backups alternate with the injection number (even: ``store.backup`` first; odd: none), so both repair
  paths, backup and rebuild from the recipe, are exercised.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hybrid_assets.runners import RunnerContext
from hybrid_assets.runners.model_support import ModelSession, ensure_models, model_session
from workers.host.errors import WorkerError
from workers.models.corrupt import Corruption, corrupt_bytes, corrupt_file
from workers.models.manifest import MANIFEST_NAME
from workers.models.store import ModelStore

CACHE_METRICS = frozenset({
    "major_corruption_detection_s", "significant_corruption_detected", "minor_corruption_detected",
    "fallback_failed_requests_count", "cache_rebuilt_ok", "cache_rebuild_s", "integrity_verified_before_use_ok",
    "clean_model_corruption_detected",
})
VRAM_METRICS = frozenset({
    "vram_corruption_detection_s", "other_model_request_error", "served_from_corrupted_count",
    "reloaded_from_clean_cache_ok", "reload_s", "resumed_without_verification_count",
})
FAULT_FLAG = "--allow-fault-injection"
# The oracle request: small, seeded, digests only (no shared-memory handoff to manage).
REFERENCE = {"width": 64, "height": 64, "steps": 2, "seed": 4242, "output": "digest", "progress": False}
FOLLOW_UP_REQUESTS = 2  # requests for the corrupted model after detection (the first must be served)
OTHER_MODEL_PAUSE_S = 0.02  # between requests to the other model (it has an inference slot of its own)
MEMORY_ERROR_FLIPS = 16  # gpu_memory_error: a burst of flipped bits (an uncorrectable region), not one


def model_for_size(size: str) -> tuple[str, int | None]:
    """'tiny' -> the smallest tiny SD pipeline; 'Ngb' -> a synthetic weights file of N GiB."""
    if size == "tiny":
        return "tiny-sd-a", None
    m = re.fullmatch(r"(\d+)gb", size)
    if m is None:
        raise ValueError(f"model_sizes entry {size!r}: expected 'tiny' or '<N>gb'")
    return f"synthetic-{int(m.group(1)) * 1024}m", int(m.group(1)) * 1024


@contextmanager
def private_root(store: ModelStore, names: list[str]) -> Iterator[ModelStore]:
    """A throwaway copy of the manifest and of ``names`` (with dependencies): corruption happens here."""
    tmp = Path(tempfile.mkdtemp(prefix="model-corruption-"))
    try:
        shutil.copy2(store.root / MANIFEST_NAME, tmp / MANIFEST_NAME)
        for name in store.load_order(names):
            shutil.copytree(store.model_dir(name), tmp / store.entry(name).path)
        yield ModelStore(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def with_fault_flag(ctx: RunnerContext) -> RunnerContext:
    argv = list(ctx.worker_argv)
    return ctx if FAULT_FLAG in argv else dataclasses.replace(ctx, worker_argv=[*argv, FAULT_FLAG])


def is_pipeline(store: ModelStore, name: str) -> bool:
    return store.entry(name).kind == "sd_pipeline"


def digest_of(s: ModelSession, name: str, **extra: Any) -> str:
    _, result = s.host.generate({"model": name, **REFERENCE, **extra}, timeout=120)
    return str(result["sha256"][0])


def runner_hash_ok(store: ModelStore, name: str, read: Callable[[str], bytes] | None = None) -> bool:
    """The runner's own sha256 of every file (disk, or ``read(rel)``) against the manifest."""
    entry = store.entry(name)
    for rel, f in entry.files.items():
        data = read(rel) if read is not None else store.file_path(name, rel).read_bytes()
        if hashlib.sha256(data).hexdigest() != f.sha256:
            return False
    return True


# ---- corruption plans ---------------------------------------------------------------------------------


def targets(store: ModelStore, name: str) -> tuple[str, str | None]:
    """(largest .safetensors, its component's config.json or None)."""
    files = store.entry(name).files
    weights = max((r for r in files if r.endswith(".safetensors")), key=lambda r: (files[r].bytes, r))
    config = str(Path(weights).parent / "config.json") if "/" in weights else "config.json"
    return weights, config if config in files else None


def plan(store: ModelStore, name: str, ctype: str, severity: str) -> tuple[str, str]:
    """(file, how): how is a Corruption value or 'header_bit' / 'header_all' (done here, on the header)."""
    weights, config = targets(store, name)
    sev = severity.split("_")[0]
    if ctype == "metadata_corruption":
        if sev == "minor":
            return weights, "header_bit"
        if sev == "significant":
            return weights, Corruption.HEADER.value
        return (config, Corruption.ALL_BYTES.value) if config else (weights, "header_all")
    if sev == "minor":
        return weights, Corruption.FLIP_BIT.value
    if sev == "complete":
        return weights, Corruption.ALL_BYTES.value
    return weights, (Corruption.TRUNCATE if ctype == "partial_file_corruption" else Corruption.TENSOR_ZERO).value


def _header_span(head: bytes) -> tuple[int, int]:
    n = int.from_bytes(head[:8], "little")
    return 8, 8 + n


def damage_bytes(data: bytes, rel: str, how: str, seed: int) -> bytes:
    if how in ("header_bit", "header_all"):
        lo, hi = _header_span(data[:8])
        rng = random.Random(f"{how}:{seed}")
        buf = bytearray(data)
        if how == "header_bit":
            buf[rng.randrange(lo, hi)] ^= 1 << rng.randrange(8)
        else:
            buf[lo:hi] = rng.randbytes(hi - lo)
        return bytes(buf)
    return corrupt_bytes(data, how, seed=seed, name=rel)[0]


def damage_file(path: Path, rel: str, how: str, seed: int) -> None:
    if how not in ("header_bit", "header_all"):
        corrupt_file(path, how, seed=seed)
        return
    with open(path, "r+b") as fh:  # only the header is read and rewritten (the file may be 10 GB)
        lo, hi = _header_span(os.pread(fh.fileno(), 8, 0))
        head = os.pread(fh.fileno(), hi, 0)
        os.pwrite(fh.fileno(), damage_bytes(head, rel, how, seed)[lo:hi], lo)


# ---- 3.3 cache_corruption_detection --------------------------------------------------------------------


def _load_step(result: dict[str, Any], name: str) -> dict[str, Any]:
    return next(st for st in result["steps"] if st["name"] == name)


def _serve(s: ModelSession, name: str, ref: str | None, *, use_cache: bool) -> bool:
    """One request for ``name`` as a client makes it (load, then generate): True when served clean."""
    try:
        s.host.load(name, use_cache=use_cache, timeout=600)
        if ref is None:  # weights only: served = resident and answering verification
            return bool(s.client.request("model.verify", {"name": name}, timeout=600)["intact"])
        return digest_of(s, name) == ref
    except WorkerError:
        return False


def _unload_if_resident(s: ModelSession, name: str) -> None:
    if any(m["name"] == name for m in s.client.request("model.list")["resident"]):
        s.host.unload(name)


def _inject_once(ctx: RunnerContext, s: ModelSession, name: str, ref: str | None, timing: str, ctype: str,
                 severity: str, k: int) -> None:
    store, cache, rec = s.store, s.cache, ctx.recorder
    assert cache is not None
    rel, how = plan(store, name, ctype, severity)
    backup_dir = store.root / ".backup" / store.entry(name).path
    if k % 2 == 0:
        store.backup(name)
    else:
        shutil.rmtree(backup_dir, ignore_errors=True)
    _unload_if_resident(s, name)
    cache.evict(name)  # every injection starts from a clean host copy (reset between injections)
    error = ""
    if timing == "during_loading":
        damage_file(store.file_path(name, rel), rel, how, k)
        t0 = time.perf_counter()
        try:
            result = s.host.load(name, use_cache=False, timeout=600).result
        except WorkerError as exc:
            result, error = {}, exc.code
    else:
        s.host.load(name)  # fills the host cache and serves once; then the model leaves the device
        if ref is not None:
            digest_of(s, name)
        s.host.unload(name)
        if timing == "during_transfer":
            cache.ensure(name)  # the cache read that precedes a transfer; the copy goes bad after it
        cache.overwrite(name, rel, damage_bytes(cache.read(name, rel), rel, how, k))
        t0 = time.perf_counter()
        try:
            if timing == "during_storage":  # the client's next request: ensure (a hit) and model.load
                result = s.host.load(name, timeout=600).result
            else:  # straight into the transfer, as ModelHost.load does after ensure
                result = s.client.request("model.load", {"name": name, "host_files": cache.files(name)},
                                          timeout=600)
                s.host._note_loaded(result)
        except WorkerError as exc:
            result, error = {}, exc.code
    reply_s = time.perf_counter() - t0
    step = _load_step(result, name) if result else {}
    reported = bool(error == "MODEL_CORRUPT" or step.get("repaired") or step.get("host_copy_corrupt"))
    first_ok = bool(result) and (ref is None or digest_of(s, name) == ref) if reported else False
    labels = {"severity": severity, "timing": timing, "corruption": how, "file": rel, "model": name,
              "injection": k, "error": error, "repaired": step.get("repaired", ""),
              "host_copy_corrupt": step.get("host_copy_corrupt", False)}
    # Detected before serving: the reply that made the model resident (or refused it) reported it.
    if severity == "minor_corruption":
        rec.record("minor_corruption_detected", 1.0 if reported else 0.0, "ratio", **labels)
    else:
        rec.record("significant_corruption_detected", 1.0 if reported else 0.0, "ratio", **labels)
        if reported:
            rec.record("major_corruption_detection_s", reply_s, "s", **labels,
                       worker_read_verify_s=step.get("read_s", 0.0) + step.get("verify_s", 0.0))
    if not reported:
        if ref is not None and result:
            labels["served_digest_matches_reference"] = digest_of(s, name) == ref
        ctx.log.warning("undetected corruption: %s", labels)
        return
    # Fallback: the requests issued after detection, the first one included.
    failed = (0 if first_ok else 1) + sum(
        not _serve(s, name, ref, use_cache=timing != "during_loading") for _ in range(FOLLOW_UP_REQUESTS - 1))
    rec.record("fallback_failed_requests_count", float(failed), "count", **labels)
    if timing == "during_loading":
        # The cache entry is the store's copy on disk: repaired by the worker, hashed here independently.
        rebuilt = bool(step.get("repaired")) and runner_hash_ok(store, name)
        rec.record("cache_rebuilt_ok", 1.0 if rebuilt else 0.0, "ratio", **labels)
        if rebuilt:  # the worker's verify phase: the failed check, the repair and the passing re-check
            rec.record("cache_rebuild_s", float(step.get("verify_s", 0.0)), "s", **labels)
    else:
        # The cache entry is the host's RAM copy: rebuilt only if the system replaced it by now.
        rebuilt = name in cache and runner_hash_ok(store, name, lambda r: cache.read(name, r))
        rec.record("cache_rebuilt_ok", 1.0 if rebuilt else 0.0, "ratio", **labels)
    # Integrity verified before use: the load's reply, which precedes any serving, reports the repair or the
    # fallback and a passing re-check (the worker raises MODEL_CORRUPT when the re-check fails); the first request
    # matched the reference; the runner's own hash of what it was built from (the disk copy, in every path
    # here) agrees.
    verified = bool(result) and step.get("verify_s", 0.0) > 0 and first_ok and runner_hash_ok(store, name)
    rec.record("integrity_verified_before_use_ok", 1.0 if verified else 0.0, "ratio", **labels)


def _clean_checks(ctx: RunnerContext, s: ModelSession, names: list[str], timings: list[str], n: int) -> None:
    """One 0/1 sample per integrity check of an uncorrupted model, timings in turn. Worker loads alternate
    between two models when there are two (the device cache fits one: each load evicts the other), else the
    model is unloaded first; a load that finds the model resident checked nothing and is not counted."""
    assert s.cache is not None
    turn = 0
    for i in range(n):
        timing = timings[i % len(timings)]
        if timing == "during_storage":
            name = names[i % len(names)]
            s.cache.ensure(name)  # a miss re-reads and checks every file (raises on a bad one)
            flagged = any(not c.ok for c in s.cache.verify(name))
        else:
            turn += 1
            name = names[turn % len(names)]
            if len(names) == 1:
                _unload_if_resident(s, name)
            try:
                result = s.host.load(name, use_cache=timing == "during_transfer", timeout=600).result
                step = _load_step(result, name)
                if step["source"] == "resident":
                    ctx.log.warning("clean check %d: %s was still resident; not a check", i, name)
                    continue
                flagged = bool(step["repaired"] or step["host_copy_corrupt"])
            except WorkerError as exc:
                flagged = exc.code == "MODEL_CORRUPT"
        ctx.recorder.record("clean_model_corruption_detected", 1.0 if flagged else 0.0, "ratio", timing=timing,
                            model=name, check=i)


def cache_corruption_recovery(ctx: RunnerContext) -> None:
    p = ctx.params
    sizes = [str(x) for x in p["model_sizes"]]
    severities = [str(x) for x in p.get("corruption_severities", [])]
    models = [model_for_size(sz) for sz in sizes]
    store = ensure_models(ctx, synthetic_mib=[mib for _, mib in models if mib])
    for name, _ in models:
        clean = not severities
        names = [name, "tiny-sd-b"] if clean and name == "tiny-sd-a" else [name]
        biggest = max(store.entry(n).total_bytes for n in names) / (1 << 20)
        device_mib = biggest * 1.5 if len(names) > 1 else biggest * 1.6 + 8  # two models: room for one only
        with private_root(store, names) as priv, model_session(ctx, priv, cache_mib=device_mib,
                                                                host_cache_mib=biggest * 2.5 + 8) as s:
            s.host.load(name)  # warm-up: the first build in a worker pays the imports
            if clean:
                _clean_checks(ctx, s, names, [str(t) for t in p["corruption_timings"]], int(p["clean_checks"]))
                continue
            ref = digest_of(s, name) if is_pipeline(priv, name) else None
            k = 0
            for severity in severities:
                for _ in range(int(p["injections_per_severity"])):
                    _inject_once(ctx, s, name, ref, str(p["corruption_timing"]), str(p["corruption_type"]),
                                 severity, k)
                    k += 1
    ctx.recorder.note("oracle", "image digest of a seeded 64x64 request vs the clean model's (pipelines); "
                                "weights-only models: detection must come with the load that made them resident")


# ---- 3.3 vram_model_corruption ---------------------------------------------------------------------------


class OtherModelLoad:
    """Requests to the other resident model, throughout: one 0/1 error sample each."""

    def __init__(self, s: ModelSession, name: str, ref: str) -> None:
        self.s, self.name, self.ref = s, name, ref
        self.outcomes: list[tuple[bool, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="other-model-load", daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                ok = digest_of(self.s, self.name) == self.ref
                self.outcomes.append((ok, "" if ok else "digest differs from the clean reference"))
            except WorkerError as exc:
                self.outcomes.append((False, exc.code))
            self._stop.wait(OTHER_MODEL_PAUSE_S)

    def __enter__(self) -> OtherModelLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)


def _flip(s: ModelSession, name: str, vtype: str, seed: int) -> list[str]:
    flips = MEMORY_ERROR_FLIPS if vtype == "gpu_memory_error" else 1
    return [s.client.request("fault.model_corrupt_resident", {"name": name, "seed": seed * 1000 + j})["tensor"]
            for j in range(flips)]


def _transfer_corrupt_load(s: ModelSession, name: str, seed: int) -> dict[str, Any]:
    """Reload ``name`` through a corrupted copy in transit (one flipped bit); the host cache stays clean."""
    from multiprocessing import shared_memory

    assert s.cache is not None
    rel, _ = targets(s.store, name)
    bad = damage_bytes(s.cache.read(name, rel), rel, Corruption.FLIP_BIT.value, seed)
    seg = shared_memory.SharedMemory(create=True, size=len(bad))  # unlink() below drops its registration
    try:
        seg.buf[: len(bad)] = bad
        files = s.cache.files(name)
        files[rel] = {"shm": seg.name.lstrip("/"), "bytes": len(bad)}
        return s.client.request("model.load", {"name": name, "host_files": files}, timeout=600)
    finally:
        seg.close()
        seg.unlink()


def _vram_injection(ctx: RunnerContext, s: ModelSession, name: str, ref: str | None, vtype: str, method: str,
                    k: int) -> None:
    rec = ctx.recorder
    labels: dict[str, Any] = {"method": method, "vram_corruption_type": vtype, "model": name, "injection": k}
    detected_s: float | None = None
    transfer_reload: dict[str, Any] | None = None
    if vtype == "transfer_corruption":
        s.host.unload(name)
        t_inj = time.perf_counter()
        step = _load_step(_transfer_corrupt_load(s, name, k), name)
        labels["transfer_caught_at_load"] = bool(step["host_copy_corrupt"])
        if step["host_copy_corrupt"]:  # the load's own verification caught it before device memory; that load
            detected_s = time.perf_counter() - t_inj  # is the recovery too (it read the bad file from disk)
            transfer_reload = step
    else:
        t_inj = time.perf_counter()
        labels["tensors"] = len(_flip(s, name, vtype, k))
    if detected_s is None:
        if method == "checksum_verification":
            if not s.client.request("model.verify", {"name": name}, timeout=600)["intact"]:
                detected_s = time.perf_counter() - t_inj
        elif method == "inference_output_validation" and ref is not None:
            try:  # the system's own output validation is its NaN guard
                labels["output_changed"] = digest_of(s, name, nan_guard=True) != ref
            except WorkerError as exc:
                if exc.code in ("NAN_OUTPUT", "MODEL_CORRUPT"):
                    detected_s = time.perf_counter() - t_inj
    corrupt_resident = vtype != "transfer_corruption" or not labels["transfer_caught_at_load"]
    if detected_s is None:
        rec.record("reloaded_from_clean_cache_ok", 0.0, "ratio", **labels, detected=False)
        ctx.log.warning("vram corruption not detected: %s", labels)
        s.host.unload(name)  # back to a clean copy for the next injection (the runner's reset)
        s.host.load(name)
        return
    rec.record("vram_corruption_detection_s", detected_s, "s", **labels)
    # After detection, requests as a client makes them (load, then generate): the worker reloads a model it
    # marked corrupt by itself; a request answered while the corrupt copy is still resident was served from it.
    served_corrupt = unverified = 0
    reload = transfer_reload
    total = s.store.entry(name).total_bytes
    reload_unverified = reload is not None and not reload["verify_s"] > 0
    for _ in range(FOLLOW_UP_REQUESTS):
        try:
            step = _load_step(s.host.load(name, timeout=600).result, name)
        except WorkerError as exc:
            labels["reload_error"] = exc.code
            continue
        if step["source"] != "resident" and reload is None:
            reload, corrupt_resident = step, False
            # Verified = the reload's reply reports a hash check of every byte of the model before it serves.
            reload_unverified = not (step["verify_s"] > 0 and step["bytes"] == total)
        try:
            if ref is not None:
                digest_of(s, name)
            elif not s.client.request("model.verify", {"name": name})["intact"]:
                continue
        except WorkerError:
            continue
        served_corrupt += 1 if corrupt_resident else 0
        unverified += 1 if reload is not None and reload_unverified else 0
    rec.record("served_from_corrupted_count", float(served_corrupt), "count", **labels)
    if reload is not None:
        rec.record("reload_s", reload["read_s"] + reload["verify_s"] + reload["build_s"], "s", **labels)
        rec.record("resumed_without_verification_count", float(unverified), "count", **labels)
    from_cache = reload is not None and reload["source"] == "shm" and not reload["host_copy_corrupt"]
    try:
        clean = ref is None or digest_of(s, name) == ref
    except WorkerError as exc:  # e.g. NAN_OUTPUT again: the corrupt copy is still the one resident
        clean, labels["final_check_error"] = False, exc.code
    intact = bool(s.client.request("model.verify", {"name": name})["intact"])
    if not (clean and intact):  # the runner's reset: the next injection starts from a clean copy
        s.host.unload(name)
        s.host.load(name)
    labels.update(reload_source=reload["source"] if reload else "none", clean_after=clean, intact_after=intact,
                  bad_file_read_from_disk=bool(reload and reload["host_copy_corrupt"]))
    rec.record("reloaded_from_clean_cache_ok", 1.0 if from_cache and clean and intact else 0.0, "ratio", **labels)


def vram_corruption_recovery(ctx: RunnerContext) -> None:
    p = ctx.params
    vtype, per = str(p["vram_corruption_type"]), int(p["injections_per_method"])
    models = [model_for_size(str(sz)) for sz in p["model_sizes"]]
    store = ensure_models(ctx, synthetic_mib=[mib for _, mib in models if mib])
    fctx = with_fault_flag(ctx)
    other = "tiny-sd-b"
    unsupported = {"cross_validation": "the runtime has no cross-validation of a resident copy against a second "
                                       "copy or replica (no such operation); not injected"}
    if vtype == "gpu_memory_error":
        ctx.recorder.note("gpu_memory_error", f"{MEMORY_ERROR_FLIPS} bit flips in resident weights; the CPU "
                                              "testbed reports no device memory error (no ECC events)")
    for method, why in unsupported.items():
        if method in p["detection_methods"]:
            ctx.recorder.note(f"skipped_{method}", why)
    for name, _ in models:
        mib = (store.entry(name).total_bytes + store.entry(other).total_bytes) / (1 << 20)
        # Two inference slots: the other model's requests run beside the corrupted one's, not behind them.
        with private_root(store, [name, other]) as priv, model_session(fctx, priv, cache_mib=mib * 1.5 + 8,
                                                                        host_cache_mib=mib * 1.5 + 8,
                                                                        inference_slots=2) as s:
            s.host.load(name)
            s.host.load(other)
            ref = digest_of(s, name) if is_pipeline(priv, name) else None
            with OtherModelLoad(s, other, digest_of(s, other)) as load:
                k = 0
                for method in p["detection_methods"]:
                    if method in unsupported:
                        continue
                    for _ in range(per):
                        _vram_injection(ctx, s, name, ref, vtype, str(method), k)
                        k += 1
            for i, (ok, why) in enumerate(load.outcomes):
                ctx.recorder.record("other_model_request_error", 0.0 if ok else 1.0, "count", request=i, why=why,
                                    model=other)


RUNNERS = {
    "model.cache_corruption_recovery": (CACHE_METRICS, cache_corruption_recovery),
    "model.vram_corruption_recovery": (VRAM_METRICS, vram_corruption_recovery),
}
