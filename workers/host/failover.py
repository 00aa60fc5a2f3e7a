"""Cross-domain recovery on the host: a cascade from one failure to a served request again.

``ModelFallback``: a resident model whose weights go bad (device-memory corruption) is caught by a
guard that re-verifies it periodically (``model.verify``) or by the worker refusing it
(MODEL_CORRUPT). Traffic moves to a fallback model at once; the primary is unloaded, reloaded from
verified files and verified again, then takes its traffic back. A request the corruption reaches
is retried on the fallback (generation is idempotent), so the user sees an answer, not the fault.

``WorkerFailover``: one worker per device. When the primary's worker is lost (its device failed
and took the process with it, so its memory pools are released by the kernel), the standby loads
the primary's models and takes its traffic; a request in flight on the lost worker is retried on
the standby once it serves.

Both keep a timeline of what happened (monotonic seconds) so experiments can measure detection,
recovery start and full recovery from the system's own records.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from workers.host.errors import WorkerError, WorkerLost
from workers.host.models import ModelHost
from workers.protocol.messages import ErrorCode

log = logging.getLogger("workers.failover")


@dataclass
class Timeline:
    events: list[tuple[str, float, str]] = field(default_factory=list)  # (kind, monotonic, detail)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def mark(self, kind: str, detail: str = "") -> float:
        t = time.monotonic()
        with self._lock:
            self.events.append((kind, t, detail))
        return t

    def first(self, kind: str, after: float = 0.0) -> float | None:
        with self._lock:
            return next((t for k, t, _ in self.events if k == kind and t >= after), None)


class ModelFallback:
    def __init__(self, host: ModelHost, primary: str, fallback: str, *, verify_interval_s: float = 0.25) -> None:
        if primary == fallback:
            raise ValueError(f"the fallback of {primary!r} must be another model")
        self.host, self.primary, self.fallback = host, primary, fallback
        self.verify_interval_s = verify_interval_s
        self.timeline = Timeline()
        self._lock = threading.Lock()
        self._degraded = False
        self._repairing = threading.Event()
        self._stop = threading.Event()
        self._guard = threading.Thread(target=self._guard_loop, name=f"guard-{primary}", daemon=True)

    def start(self) -> ModelFallback:
        for name in (self.primary, self.fallback):
            self.host.load(name)
        self._guard.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._guard.join(timeout=30)

    def __enter__(self) -> ModelFallback:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def active(self) -> str:
        with self._lock:
            return self.fallback if self._degraded else self.primary

    def generate(self, params: Mapping[str, Any], *, timeout: float = 120.0) -> dict[str, Any]:
        """inference.run on the active model; one retry on the fallback when the primary is refused
        as corrupt. The answer says which model served (``model``)."""
        model = self.active
        try:
            return self.host.client.request("inference.run", {**params, "model": model}, timeout=timeout)
        except WorkerError as exc:
            if model != self.primary:
                raise
            if exc.code == ErrorCode.MODEL_CORRUPT:
                self._on_corrupt(f"request refused: {exc.message}")
            elif not (exc.code == ErrorCode.MODEL_NOT_LOADED and self.active == self.fallback):
                raise
            # Sent to the primary just before the switch (refused as corrupt, or it was unloaded for
            # repair under the request): the fallback serves it.
            return self.host.client.request("inference.run", {**params, "model": self.fallback}, timeout=timeout)

    def _guard_loop(self) -> None:
        while not self._stop.wait(self.verify_interval_s):
            if self._repairing.is_set():
                continue
            try:
                intact = self.host.client.request("model.verify", {"name": self.primary}, timeout=60)["intact"]
            except WorkerError as exc:
                if exc.code == ErrorCode.MODEL_CORRUPT:
                    intact = False
                else:
                    log.warning("guard of %s: verify failed: %s", self.primary, exc)
                    continue
            if not intact:
                self._on_corrupt("model.verify found the resident weights changed")

    def _on_corrupt(self, why: str) -> None:
        with self._lock:
            if self._degraded:
                return
            self._degraded = True
            self._repairing.set()
        self.timeline.mark("corrupt_detected", why)
        self.timeline.mark("fallback_active", self.fallback)
        threading.Thread(target=self._repair, name=f"repair-{self.primary}", daemon=True).start()

    def _repair(self) -> None:
        try:
            self.timeline.mark("repair_started", self.primary)
            self.host.unload(self.primary)
            self.host.load(self.primary)
            if not self.host.client.request("model.verify", {"name": self.primary}, timeout=60)["intact"]:
                raise RuntimeError(f"{self.primary} still fails verification after a reload")
            with self._lock:
                self._degraded = False
            self.timeline.mark("primary_restored", self.primary)
        except (WorkerError, RuntimeError) as exc:
            self.timeline.mark("repair_failed", str(exc))
            log.error("repair of %s failed: %s", self.primary, exc)
        finally:
            self._repairing.clear()


class WorkerFailover:
    def __init__(self, primary: ModelHost, standby: ModelHost, models: list[str], *,
                 takeover_timeout_s: float = 120.0) -> None:
        if not models:
            raise ValueError("WorkerFailover needs the primary's models to move")
        self.primary, self.standby, self.models = primary, standby, list(models)
        self.takeover_timeout_s = takeover_timeout_s
        self.timeline = Timeline()
        self._lock = threading.Lock()
        self._failed_over = threading.Event()
        self._takeover_started = False
        primary.client.on_lost(lambda _client, reason: self._on_primary_lost(reason))

    @property
    def active(self) -> ModelHost:
        return self.standby if self._failed_over.is_set() else self.primary

    def generate(self, params: Mapping[str, Any], *, timeout: float = 120.0) -> tuple[str, dict[str, Any]]:
        """inference.run where the primary's models live now; returns (which host served, result)."""
        host = self.active
        try:
            return ("standby" if host is self.standby else "primary",
                    host.client.request("inference.run", dict(params), timeout=timeout))
        except WorkerLost:
            if host is self.standby:
                raise
            if not self._failed_over.wait(self.takeover_timeout_s):
                raise
            return "standby", self.standby.client.request("inference.run", dict(params), timeout=timeout)

    def _on_primary_lost(self, reason: str) -> None:
        with self._lock:
            if self._takeover_started:
                return
            self._takeover_started = True
        self.timeline.mark("primary_lost", reason)
        threading.Thread(target=self._take_over, name="failover", daemon=True).start()

    def _take_over(self) -> None:
        self.timeline.mark("takeover_started", f"loading {self.models} on the standby")
        try:
            for name in self.models:
                self.standby.load(name)
            self.timeline.mark("models_placed", ",".join(self.models))
            self._failed_over.set()
            self.timeline.mark("standby_active")
        except WorkerError as exc:
            self.timeline.mark("takeover_failed", str(exc))
            log.error("failover to the standby failed: %s", exc)
