"""Spec 1.1 cold_start_device_discovery, with the device-communication lines of 4.1.

Per cold start: spawn a fresh worker (connection time = spawn to handshake), ask it to
discover devices (discovery time as the host sees it, request to answer), and check every
device it reports against the host's own view (count, memory, compute capability,
completeness of capabilities). Then time round trips on a warm worker of the pool.
"""

from __future__ import annotations

import time
from typing import Any

from hybrid_assets.runners import RunnerContext
from hybrid_assets.runners.ground_truth import ExpectedDevice, GroundTruth, observe
from workers.host import WorkerClient, WorkerError

METRICS = frozenset({
    "connection_time_s", "discovery_time_s", "discovery_internal_s", "discovery_rss_delta_mb", "device_count_match",
    "capability_completeness", "memory_capacity_error", "capability_assessment_s", "gpu_compute_capability_valid",
    "round_trip_s", "comm_error",
})

REQUIRED_FIELDS = {
    "cpu": ("name", "memory_total", "memory_free", "dtypes", "cores"),
    "cuda": ("name", "memory_total", "memory_free", "dtypes", "compute_capability", "driver_version"),
}


def _completeness(device: dict[str, Any]) -> float:
    fields = REQUIRED_FIELDS.get(device.get("kind", ""), REQUIRED_FIELDS["cuda"])
    return sum(1 for f in fields if device.get(f) not in (None, "", 0, [])) / len(fields)


def _match(expected: ExpectedDevice, reported: list[dict[str, Any]]) -> dict[str, Any] | None:
    same_kind = [d for d in reported if d.get("kind") == expected.kind]
    if expected.uuid:
        for d in same_kind:
            if d.get("uuid") and str(d["uuid"]).removeprefix("GPU-") == expected.uuid.removeprefix("GPU-"):
                return d
    position = [d for d in same_kind if not d.get("uuid")] if expected.uuid else same_kind
    idx = expected.index if expected.kind == "cuda" else 0
    return position[idx] if idx < len(position) else None


def _check_devices(ctx: RunnerContext, truth: GroundTruth, reported: list[dict[str, Any]], start: int) -> None:
    rec = ctx.recorder
    rec.record("device_count_match", 1.0 if len(reported) == len(truth.devices) else 0.0, "ratio",
               cold_start=start, reported=len(reported), expected=len(truth.devices))
    for exp in truth.devices:
        dev = _match(exp, reported)
        label = f"{exp.kind}:{exp.index}"
        if dev is None:
            rec.record("capability_completeness", 0.0, "ratio", cold_start=start, device=label, missing=True)
            continue
        rec.record("capability_completeness", _completeness(dev), "ratio", cold_start=start, device=label)
        total = float(dev.get("memory_total") or 0)
        rec.record("memory_capacity_error", abs(total - exp.memory_total) / exp.memory_total, "ratio",
                   cold_start=start, device=label)
        rec.record("capability_assessment_s", float(dev.get("assessment_ms", 0.0)) / 1e3, "s",
                   cold_start=start, device=label)
        if exp.kind == "cuda":
            rec.record("gpu_compute_capability_valid", 1.0 if dev.get("compute_capability") == exp.compute_capability
                       else 0.0, "ratio", cold_start=start, device=label)


def cold_start_discovery(ctx: RunnerContext) -> None:
    p = ctx.params
    cold_starts, round_trips = int(p["cold_starts"]), int(p["round_trips"])
    payload = "x" * int(p.get("payload_bytes", 64))
    rec = ctx.recorder
    truth = observe()
    rec.note("expected_devices", [f"{d.kind}:{d.index}" for d in truth.devices])
    rec.note("host_nvml", truth.nvml_status)
    if not truth.gpus:
        rec.skip("gpu_compute_capability_valid", f"no CUDA device on this testbed ({truth.nvml_status})")

    for i in range(cold_starts):
        client = WorkerClient(ctx.worker_argv, name=f"{ctx.case_id}-cold{i}")
        try:
            client.start()
        except WorkerError as exc:
            rec.record("comm_error", 1.0, "count", phase="handshake", cold_start=i, error=exc.code)
            ctx.log.warning("cold start %d failed: %s", i, exc)
            continue
        try:
            rec.record("connection_time_s", client.ready_at - client.spawned_at, "s", cold_start=i)
            t0 = time.perf_counter()
            try:
                result = client.request("discover_devices", timeout=60.0)
            except WorkerError as exc:
                rec.record("comm_error", 1.0, "count", phase="discover", cold_start=i, error=exc.code)
                ctx.log.warning("discovery in cold start %d failed: %s", i, exc)
                continue
            rec.record("discovery_time_s", time.perf_counter() - t0, "s", cold_start=i)
            rec.record("comm_error", 0.0, "count", phase="discover", cold_start=i)
            rec.record("discovery_internal_s", float(result.get("discovery_ms", 0.0)) / 1e3, "s", cold_start=i)
            rss = (result.get("rss_after_bytes", 0) - result.get("rss_before_bytes", 0)) / 2**20
            rec.record("discovery_rss_delta_mb", rss, "MiB", cold_start=i)
            _check_devices(ctx, truth, list(result.get("devices", [])), i)
            if i == 0:
                rec.note("devices", result.get("devices", []))
                rec.note("worker_torch", result.get("torch_version"))
        finally:
            client.shutdown()

    for j in range(round_trips):
        t0 = time.perf_counter()
        try:
            ctx.pool.request("ping", {"payload": payload}, timeout=10.0)
        except WorkerError as exc:
            rec.record("comm_error", 1.0, "count", phase="ping", seq=j, error=exc.code)
            continue
        rec.record("round_trip_s", time.perf_counter() - t0, "s")
        rec.record("comm_error", 0.0, "count", phase="ping")


RUNNERS = {"device.cold_start_discovery": (METRICS, cold_start_discovery)}
