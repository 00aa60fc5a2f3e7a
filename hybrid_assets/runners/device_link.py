"""Spec 4.1 device communication: connection reliability, automatic reconnection, data transfer.

- connection_reliability: per attempt, spawn a fresh worker, wait for its handshake, answer one
  request, shut it down cleanly (shutdown request honoured, exit 0); 0/1 per attempt.
- reconnection: a supervised pool of its own; each break (closing the worker's stdin pipe, or
  SIGKILL) is one fault experiment (hybrid_assets.faults): background load journaled, break
  detection and the first successful request after the break timed, nothing done in between.
- data_transfer: checked payloads both ways through ``link.transfer`` on a worker of its own:
  each request carries a chunk host->worker with its sha256 and asks a fresh chunk back with
  its sha256; both ends compare digests. Payloads larger than one frame (the limit is in the
  worker's hello) are split into chunks; a payload is intact when every chunk is.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from hybrid_assets.faults.experiment import run_experiment
from hybrid_assets.faults.injectors import INJECTORS, Injector
from hybrid_assets.runners import RunnerContext
from workers.host import WorkerClient, WorkerError
from workers.host.client import PendingRequest
from workers.host.pool import PoolConfig, WorkerPool
from workers.protocol.ops_link import max_payload_bytes

CONNECTION_METRICS = frozenset({"connection_ok", "connection_time_s"})
RECONNECTION_METRICS = frozenset({"reconnection_s", "reconnection_failed", "break_detection_s",
                                  "break_requests_lost"})
TRANSFER_METRICS = frozenset({"transfer_throughput_mbps", "transfer_error", "transfer_round_trip_s"})

BREAKS: dict[str, Injector] = {"close_pipes": INJECTORS["close_pipe"], "kill_worker": INJECTORS["sigkill"]}


# ---- connection reliability ----------------------------------------------------------------
def connection_reliability(ctx: RunnerContext) -> None:
    attempts = int(ctx.params["connections"])
    rec = ctx.recorder
    for i in range(attempts):
        client = WorkerClient(ctx.worker_argv, name=f"{ctx.case_id}-c{i}")
        stage = "handshake"
        try:
            client.start()
            rec.record("connection_time_s", client.ready_at - client.spawned_at, "s", attempt=i)
            stage = "request"
            client.request("ping", {"payload": f"attempt {i}"}, timeout=10.0)
            stage = "shutdown"
            outcome = client.shutdown()
            clean = outcome.how == "request" and outcome.exit_code == 0
            detail = "" if clean else f"shutdown by {outcome.how}, exit code {outcome.exit_code}"
        except WorkerError as exc:
            clean, detail = False, f"{exc.code}: {exc.message}"
        finally:
            if client.alive:
                client.shutdown(request_grace=1.0, term_grace=1.0)  # a failed attempt leaves no process behind
        if clean:
            rec.record("connection_ok", 1.0, "ratio", attempt=i)
        else:
            rec.record("connection_ok", 0.0, "ratio", attempt=i, failed_stage=stage, error=detail[:300])
            ctx.log.warning("connection attempt %d failed at %s: %s", i, stage, detail)


# ---- reconnection ----------------------------------------------------------------------------
def reconnection(ctx: RunnerContext) -> None:
    p = ctx.params
    breaks = int(p["breaks"])
    methods = list(p["break_methods"])
    unknown = [m for m in methods if m not in BREAKS]
    if not methods or unknown:
        raise ValueError(f"break_methods must name some of {sorted(BREAKS)}, got {methods}")
    window = float(p["recovery_window_s"])
    # Each break is measured as an independent first failure, as breaks in service are: the
    # replacement runs ``settle_s`` before the next break, and the pool counts a worker that stayed
    # up that long as a stable start, so its restart back-off starts over. (Breaks every fraction
    # of a second would otherwise read as a crash loop and the back-off would grow per break.)
    settle = float(p.get("settle_s", 0.2))
    config = PoolConfig(size=1, max_restarts=breaks + 1, restart_window_s=window * (breaks + 1),
                        stable_after_s=settle)
    rec = ctx.recorder
    rec.note("reconnection_pool", {"backoff_initial_s": config.backoff_initial_s, "stable_after_s": settle,
                                   "missed_heartbeats": config.missed_heartbeats})
    with WorkerPool(ctx.worker_argv, config, name=f"{ctx.case_id}-pool") as pool:
        for i in range(breaks):
            method = methods[i % len(methods)]
            res = run_experiment(pool, method, BREAKS[method], load_threads=1, op="echo", observe_s=window,
                                 settle_s=0.5)
            labels = {"break": i, "method": method}
            if res.detection_s is not None:
                rec.record("break_detection_s", res.detection_s, "s", **labels)
            if res.recovered and res.recovery_s is not None:
                rec.record("reconnection_s", res.recovery_s, "s", **labels)
                rec.record("reconnection_failed", 0.0, "count", **labels)
            else:
                rec.record("reconnection_failed", 1.0, "count", **labels, pool=pool.describe()[:300])
                ctx.log.warning("break %d (%s) not recovered within %g s: %s", i, method, window, pool.describe())
            rec.record("break_requests_lost", float(res.requests.lost), "count", **labels,
                       leaks="; ".join(res.leaks)[:300])
            if not res.recovered and all(s == "failed" for s in pool.states()):
                break  # the pool gave up for good: later breaks have nothing to break
            up_for = max((time.monotonic() - (c.ready_at or 0.0) for c in pool.clients), default=0.0)
            time.sleep(max(0.0, settle - up_for))


# ---- data transfer ---------------------------------------------------------------------------
def window_throughputs(deliveries: Sequence[tuple[float, int]], start: float, end: float,
                       window_s: float) -> list[float]:
    """Mbit/s (1e6 bits) per full window [start + k w, start + (k + 1) w) ending by ``end``.

    ``deliveries`` are (time confirmed, bytes delivered intact); bytes count in the window their
    confirmation falls in. A partial last window is dropped: it would understate the rate."""
    if window_s <= 0:
        raise ValueError(f"window_s must be positive, got {window_s}")
    n = int((end - start) / window_s + 1e-9)
    totals = [0] * n
    for at, nbytes in deliveries:
        k = int((at - start) // window_s)
        if 0 <= k < n:
            totals[k] += nbytes
    return [b * 8 / window_s / 1e6 for b in totals]


def split(payload: bytes, chunk_bytes: int) -> list[bytes]:
    """``payload`` in chunks of at most ``chunk_bytes`` (one chunk for an empty payload)."""
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    return [payload[i:i + chunk_bytes] for i in range(0, len(payload), chunk_bytes)] or [b""]


def check_reply(sent: bytes, sent_sha256: str, reply_bytes: int, result: dict[str, Any]) -> tuple[bool, bool]:
    """(host->worker intact, worker->host intact) for one ``link.transfer`` answer. The host does
    not trust the worker's verdict alone: the digest the worker computed must be the host's."""
    up = bool(result.get("intact")) and result.get("received_sha256") == sent_sha256 \
        and result.get("received_bytes") == len(sent)
    try:
        data = base64.b64decode(result.get("payload", ""), validate=True)
    except (binascii.Error, TypeError, ValueError):
        return up, False
    down = len(data) == reply_bytes and hashlib.sha256(data).hexdigest() == result.get("sha256")
    return up, down


@dataclass
class _Chunk:
    payload: int  # index of the payload it belongs to
    last: bool  # the payload's last chunk
    data: bytes
    sha256: str
    pending: PendingRequest


@dataclass
class _PayloadState:
    nbytes: int
    up_ok: bool = True
    down_ok: bool = True


class _Link:
    """Payloads through one worker, ``in_flight`` requests at a time; records errors and round trips."""

    def __init__(self, ctx: RunnerContext, payload_bytes: int, in_flight: int, mode: str) -> None:
        if payload_bytes < 1:
            raise ValueError(f"payload_kib must be positive, got {payload_bytes / 1024:g}")
        if in_flight < 1:
            raise ValueError(f"in_flight must be at least 1, got {in_flight}")
        self.ctx, self.mode, self.in_flight = ctx, mode, in_flight
        self.payload_bytes = payload_bytes
        # A few distinct random payloads, cycled: making fresh randomness per payload would
        # measure the host's random generator, not the link; digests are still computed per send.
        self._sources = itertools.cycle([os.urandom(payload_bytes) for _ in range(8)])
        self.client = self._start()
        self.chunk_bytes = max_payload_bytes(self.client.hello.capabilities.max_frame_bytes)
        ctx.recorder.note(f"{ctx.case_id}_frame", {"max_frame_bytes": self.client.hello.capabilities.max_frame_bytes,
                                                   "chunk_bytes": self.chunk_bytes})
        self.deliveries: dict[str, list[tuple[float, int]]] = {"up": [], "down": []}
        self._states: dict[int, _PayloadState] = {}
        self._queue: deque[_Chunk] = deque()
        self._next_payload = 0
        self.payloads_done = 0

    def _start(self) -> WorkerClient:
        return WorkerClient(self.ctx.worker_argv, name=f"{self.ctx.case_id}-link").start()

    def _chunks(self) -> Iterator[tuple[int, bool, bytes]]:
        while True:
            idx = self._next_payload
            self._next_payload += 1
            self._states[idx] = _PayloadState(self.payload_bytes)
            parts = split(next(self._sources), self.chunk_bytes)
            for j, part in enumerate(parts):
                yield idx, j == len(parts) - 1, part

    def run(self, *, payloads: int | None = None, until: float | None = None) -> None:
        """Send ``payloads`` payloads, or start new ones until the monotonic time ``until``
        (a payload once started is sent whole)."""
        source = self._chunks()
        sent = 0
        mid_payload = False
        while True:
            while len(self._queue) < self.in_flight:
                if not mid_payload and ((payloads is not None and sent >= payloads)
                                        or (until is not None and time.monotonic() >= until)):
                    break
                idx, last, data = next(source)
                digest = hashlib.sha256(data).hexdigest()
                pending = self.client.submit("link.transfer", {"payload": data, "sha256": digest,
                                                               "reply_bytes": len(data)}, deadline_ms=30e3)
                self._queue.append(_Chunk(idx, last, data, digest, pending))
                mid_payload = not last
                sent += 1 if last else 0
            if not self._queue:
                return
            self._finish(self._queue.popleft())

    def _finish(self, chunk: _Chunk) -> None:
        state = self._states[chunk.payload]
        error = ""
        if not chunk.pending.wait(31.0):
            error = "no answer within 31 s"
        else:
            try:
                up, down = check_reply(chunk.data, chunk.sha256, len(chunk.data), chunk.pending.result())
                state.up_ok &= up
                state.down_ok &= down
            except WorkerError as exc:
                error = f"{exc.code}: {exc.message}"
        now = time.monotonic()
        if error:
            state.up_ok = state.down_ok = False
            self.ctx.log.warning("transfer of payload %d failed: %s", chunk.payload, error)
        else:
            self.ctx.recorder.record("transfer_round_trip_s", now - chunk.pending.sent_at, "s", mode=self.mode,
                                     in_flight=self.in_flight, chunk_bytes=len(chunk.data))
        if not self.client.alive:
            # A lost worker failed everything in flight (those chunks answer WORKER_LOST in turn
            # and count as errors); the stream carries on with a new worker.
            self.client = self._start()
        if not chunk.last:
            return
        del self._states[chunk.payload]
        self.payloads_done += 1
        for direction, ok in (("up", state.up_ok), ("down", state.down_ok)):
            self.ctx.recorder.record("transfer_error", 0.0 if ok else 1.0, "ratio", direction=direction,
                                     mode=self.mode, **({"error": error[:300]} if error else {}))
            if ok:
                self.deliveries[direction].append((now, state.nbytes))

    def close(self) -> None:
        self.client.shutdown()


def data_transfer(ctx: RunnerContext) -> None:
    p = ctx.params
    mode = str(p["mode"])
    if mode not in ("stream", "count"):
        raise ValueError(f"mode must be 'stream' or 'count', got {mode!r}")
    payload_bytes = int(float(p["payload_kib"]) * 1024)
    in_flight = int(p.get("in_flight", 2 if mode == "stream" else 1))
    link = _Link(ctx, payload_bytes, in_flight, mode)
    try:
        if mode == "count":
            link.run(payloads=int(p["transfers"]))
            return
        duration, window = float(p["duration_s"]), float(p["window_s"])
        start = time.monotonic()
        link.run(until=start + duration)
        end = min(time.monotonic(), start + duration)
        for direction, deliveries in link.deliveries.items():
            for k, mbps in enumerate(window_throughputs(deliveries, start, end, window)):
                ctx.recorder.record("transfer_throughput_mbps", mbps, "Mbit/s", direction=direction, window=k,
                                    payload_bytes=payload_bytes, in_flight=in_flight)
        ctx.recorder.note(f"{ctx.case_id}_payloads", link.payloads_done)
    finally:
        link.close()


RUNNERS = {
    "device.connection_reliability": (CONNECTION_METRICS, connection_reliability),
    "device.reconnection": (RECONNECTION_METRICS, reconnection),
    "device.data_transfer": (TRANSFER_METRICS, data_transfer),
}
