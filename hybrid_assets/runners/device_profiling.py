"""Spec 4.1 comprehensive capability profiling: a complete, measured profile per device in 10 s.

The devices come from one discovery at the start (dtypes probed by running kernels). Then, round
after round, each real device gets a ``device.capability_profile`` request, timed by the host
from request to answer. A profile is complete when discovery's fields are there and every
measured field holds a real value: the three copy bandwidths and a throughput for every dtype
discovery found the device runs (the profile must agree with discovery on what runs).
"""

from __future__ import annotations

import math
import time
from typing import Any

from hybrid_assets.runners import RunnerContext
from workers.host import WorkerError

METRICS = frozenset({"profile_time_s", "profile_completeness", "profile_error"})

DISCOVERY_FIELDS = {
    "cpu": ("name", "memory_total", "memory_free", "cores"),
    "cuda": ("name", "memory_total", "memory_free", "compute_capability", "driver_version"),
}
BANDWIDTH_FIELDS = ("host_to_device_gbps", "device_to_host_gbps", "device_copy_gbps")
PROFILE_PARAMS = ("bandwidth_bytes", "max_matmul_n", "min_kernel_s", "repeats")


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def profile_fields(profile: dict[str, Any], expected_dtypes: list[str]) -> dict[str, bool]:
    """Each required field of ``profile`` -> present and valid."""
    device = profile.get("device") or {}
    kind = device.get("kind", "cuda")
    fields = {f"device.{f}": device.get(f) not in (None, "", 0, []) for f in DISCOVERY_FIELDS.get(kind, ())}
    fields.update({f: _positive(profile.get(f)) for f in BANDWIDTH_FIELDS})
    compute = profile.get("compute") or {}
    fields["dtypes"] = bool(profile.get("dtypes"))
    for dtype in sorted(set(expected_dtypes) | set(profile.get("dtypes") or [])):
        fields[f"compute.{dtype}"] = _positive((compute.get(dtype) or {}).get("ops_per_s"))
    return fields


def capability_profiling(ctx: RunnerContext) -> None:
    p = ctx.params
    rounds = int(p["profiles"])
    request = {k: p[k] for k in PROFILE_PARAMS if k in p}
    rec = ctx.recorder
    found = ctx.pool.request("discover_devices", {"probe_dtypes": True}, timeout=120.0)["devices"]
    real = [d for d in found if d.get("kind") in ("cpu", "cuda")]
    rec.note("profiled_devices", [d["id"] for d in real])
    skipped = [d["id"] for d in found if d not in real]
    if skipped:
        rec.note("not_profiled", {"devices": skipped, "why": "not real devices (simulated)"})
    for i in range(rounds):
        for dev in real:
            labels = {"device": dev["id"], "round": i}
            t0 = time.perf_counter()
            try:
                profile = ctx.pool.request("device.capability_profile", {"device": dev["id"], **request},
                                           timeout=60.0)
            except WorkerError as exc:
                rec.record("profile_error", 1.0, "count", **labels, error=f"{exc.code}: {exc.message}"[:300])
                rec.record("profile_completeness", 0.0, "ratio", **labels)
                ctx.log.warning("profile of %s failed: %s", dev["id"], exc)
                continue
            rec.record("profile_time_s", time.perf_counter() - t0, "s", **labels,
                       worker_ms=float(profile.get("profile_ms", 0.0)))
            fields = profile_fields(profile, list(dev.get("dtypes") or []))
            missing = sorted(f for f, ok in fields.items() if not ok)
            rec.record("profile_completeness", sum(fields.values()) / len(fields), "ratio", **labels,
                       **({"missing": ",".join(missing)[:300]} if missing else {}))
            errors = list(profile.get("errors") or [])
            rec.record("profile_error", 1.0 if errors else 0.0, "count", **labels,
                       **({"error": "; ".join(errors)[:300]} if errors else {}))
            if i == 0:
                rec.note(f"profile_{dev['id']}", {k: v for k, v in profile.items() if k != "device"})


RUNNERS = {"device.capability_profiling": (METRICS, capability_profiling)}
