"""1.5 cascade failure recovery: a failure in one domain followed through the others until a request
is served again, under a closed-loop user load.

primary_device_failure: one worker per device (a worker holds its device's memory pools and
models; in smoke the two "devices" are two CPU workers, as the testbed has no second accelerator).
The primary's worker is SIGKILLed, as a device failure that takes its process with it; the kernel
releases its pools. The host's ``WorkerFailover`` (workers/host/failover.py) detects the loss, loads
the models on the standby and routes traffic there. Each failure uses a fresh pair of workers.

model_corruption: one bit of the primary model's resident weights flipped in device memory
(``fault.model_corrupt_resident``). The host's ``ModelFallback`` guard re-verifies the model every
0.25 s; traffic moves to the fallback model while the primary is reloaded from verified files.

Times come from the system's own timelines (monotonic), measured from the injection.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import ExitStack
from typing import Any

from hybrid_assets.runners import RunnerContext
from hybrid_assets.runners.model_corruption import with_fault_flag
from hybrid_assets.runners.model_support import ensure_models, model_session, pipelines
from workers.host.errors import WorkerError
from workers.host.failover import ModelFallback, WorkerFailover

CASCADE_METRICS = frozenset({
    "cascade_detection_s", "recovery_initiation_s", "cascade_full_recovery_s", "fallback_activation_s",
    "user_request_error",
})
USER_REQUEST = {"width": 64, "height": 64, "steps": 2, "output": "digest", "progress": False}
PRE_INJECTION_S = 1.0  # user traffic before each injection, inside the judged window
RECOVERY_TIMEOUT_S = 120.0


class UserLoad:
    """Closed-loop users; every request's (start, end, served_by, error) is kept."""

    def __init__(self, send: Any, users: int = 2) -> None:
        self._send, self.users = send, users
        self.log: list[tuple[float, float, str, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(u,), daemon=True) for u in range(users)]

    def __enter__(self) -> UserLoad:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=RECOVERY_TIMEOUT_S)

    def _loop(self, user: int) -> None:
        seed = user * 100_000
        while not self._stop.is_set():
            seed += 1
            t0 = time.monotonic()
            try:
                served, error = self._send({**USER_REQUEST, "seed": seed}), ""
            except WorkerError as exc:
                served, error = "", f"{exc.code}: {exc.message}"
            with self._lock:
                self.log.append((t0, time.monotonic(), served, error))

    def between(self, start: float, end: float) -> list[tuple[float, float, str, str]]:
        with self._lock:
            return [r for r in self.log if start <= r[0] <= end]


def _wait(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def cascade_failure_recovery(ctx: RunnerContext) -> None:
    p = ctx.params
    initial = str(p.get("initial_failure", "primary_device_failure"))
    failures = int(p.get("failures", 5))
    if initial == "primary_device_failure":
        _device_failures(ctx, failures)
    elif initial == "model_corruption":
        _model_corruptions(ctx, failures)
    else:
        raise ValueError(f"unknown initial_failure {initial!r}: primary_device_failure or model_corruption")


def _device_failures(ctx: RunnerContext, failures: int) -> None:
    store = ensure_models(ctx)
    model = pipelines(store)[0]
    for k in range(failures):
        _one_device_failure(ctx, store, model, k)


def _one_device_failure(ctx: RunnerContext, store: Any, model: str, k: int) -> None:
    """One failure on a fresh pair of workers."""
    rec = ctx.recorder
    with ExitStack() as stack:
        primary = stack.enter_context(model_session(ctx, store, cache_mib=256))
        standby = stack.enter_context(model_session(ctx, store, cache_mib=256))
        primary.host.load(model)
        failover = WorkerFailover(primary.host, standby.host, [model])
        with UserLoad(lambda params: failover.generate({**params, "model": model})[0]) as users:
            time.sleep(PRE_INJECTION_S)
            pid = primary.client.pid
            assert pid is not None
            t_inj = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            released = _wait(lambda: not _pid_alive(pid), 10.0)
            t_released = time.monotonic() if released else None
            active = _wait(lambda: failover.timeline.first("standby_active") is not None, RECOVERY_TIMEOUT_S)
            probe_ok = False
            if active:
                try:
                    served, _ = failover.generate({**USER_REQUEST, "model": model, "seed": 7})
                    probe_ok = served == "standby"
                except WorkerError as exc:
                    ctx.log.error("failure %d: probe on the standby failed: %s", k, exc)
            t_probe = time.monotonic()
        tl = failover.timeline
        lost, started = tl.first("primary_lost"), tl.first("takeover_started")
        if lost is not None:
            rec.record("cascade_detection_s", lost - t_inj, "s", failure=k)
        if started is not None:
            # The first recovery actions: the failed device's pools released (the kernel, as the
            # process died) and the takeover begun; the later of the two.
            rec.record("recovery_initiation_s", max(started, t_released or started) - t_inj, "s", failure=k)
        if active and probe_ok:
            rec.record("cascade_full_recovery_s", t_probe - t_inj, "s", failure=k)
        window = users.between(t_inj - PRE_INJECTION_S, t_probe)
        rec.note(f"failure_{k}", {
            "pools_released_s": round(t_released - t_inj, 3) if t_released else None,
            "user_requests": len(window), "user_requests_failed": sum(1 for r in window if r[3]),
            "timeline": [(kind, round(t - t_inj, 3), d) for kind, t, d in tl.events]})


def _pid_alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _model_corruptions(ctx: RunnerContext, failures: int) -> None:
    rec = ctx.recorder
    ctx = with_fault_flag(ctx)
    store = ensure_models(ctx)
    names = pipelines(store)
    if len(names) < 2:
        raise RuntimeError(f"model corruption needs a primary and a fallback pipeline; the store has {names}")
    primary, fallback = names[0], names[1]
    with (model_session(ctx, store, cache_mib=512, inference_slots=2) as session,
          ModelFallback(session.host, primary, fallback) as guard,
          UserLoad(lambda params: guard.generate(params)["model"], users=3) as users):
                for k in range(failures):
                    if not _wait(lambda: guard.active == primary, RECOVERY_TIMEOUT_S):
                        raise RuntimeError(f"episode {k}: {primary} never came back after the last repair")
                    time.sleep(PRE_INJECTION_S)
                    t_inj = time.monotonic()
                    session.client.request("fault.model_corrupt_resident", {"name": primary, "seed": k}, timeout=60)
                    _wait(lambda t=t_inj: guard.timeline.first("primary_restored", t) is not None
                          or guard.timeline.first("repair_failed", t) is not None, RECOVERY_TIMEOUT_S)
                    t_end = time.monotonic()
                    # Served by the fallback after the injection, wherever the request started (one in
                    # flight at the injection and moved to the fallback counts).
                    served = [r for r in users.between(t_inj - 60.0, t_end)
                              if r[2] == fallback and not r[3] and r[1] > t_inj]
                    first_served = min((r[1] for r in served), default=None)
                    if first_served is not None:
                        rec.record("fallback_activation_s", first_served - t_inj, "s", failure=k)
                    window_end = first_served if first_served is not None else t_end
                    window = users.between(t_inj - PRE_INJECTION_S, window_end)
                    for _start, _end, _served, error in window:
                        rec.record("user_request_error", int(bool(error)), "count", failure=k)
                    detected = guard.timeline.first("corrupt_detected", t_inj)
                    restored = guard.timeline.first("primary_restored", t_inj)
                    rec.note(f"episode_{k}", {
                        "detected_s": round(detected - t_inj, 3) if detected else None,
                        "primary_restored_s": round(restored - t_inj, 3) if restored else None,
                        "requests_in_window": len(window),
                        "errors": sorted({r[3] for r in window if r[3]})})


RUNNERS = {
    "cross_domain.cascade_failure_recovery": (CASCADE_METRICS, cascade_failure_recovery),
}
