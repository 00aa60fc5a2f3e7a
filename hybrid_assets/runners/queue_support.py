"""Shared plumbing of the queue and batch runners: a dedicated worker with the tiny models loaded and its
job queue configured, the request kinds the cases name, an open-loop injector that stamps every answer's
arrival, the worker's dispatch trace, and memory sampling.

Request kinds (``request_complexity``): simple_inference is one ``job.run`` of inference.run (64 px,
``inference_steps`` steps); complex_workflows is one ``workflow.run`` of inference -> 2x upscale -> safety
validation (each step present in the worker; a missing one is noted, the chain runs without it);
mixed_complexity alternates the two in pairs.

Arrival times of answers are stamped by a poller (every ``POLL_S``) that watches the requests in flight:
the host client resolves requests on its reader thread and has no completion hook, so a request's answer
time is known to within one poll period; comparisons of answer order use that resolution.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psutil

from hybrid_assets.runners import RunnerContext
from hybrid_assets.runners.model_support import ModelSession, ensure_models, model_session
from workers.host.client import PendingRequest, WorkerClient
from workers.host.errors import WorkerError

MODEL = "tiny-sd-a"
LORA, CONTROL = "tiny-lora-a", "tiny-controlnet-a"
POLL_S = 0.002
PROMPTS = ("a lighthouse at dusk", "a red bicycle", "a bowl of fruit", "a snowy mountain", "a city street at night")
UPSCALE_OP, SAFETY_OP = "postprocess.upscale", "safety.validate"


def has_op(client: WorkerClient, op: str) -> bool:
    return client.operation_info(op) is not None


@contextmanager
def queue_session(ctx: RunnerContext, *, capacity: int = 1000, concurrency: int = 1, models: tuple[str, ...] = (MODEL,),
                  device: str = "cpu", **queue: Any) -> Iterator[ModelSession]:
    """A fresh worker: the model store configured, ``models`` loaded, the job queue set up."""
    store = ensure_models(ctx)
    with model_session(ctx, store, cache_mib=1024.0, device=device) as s:
        for name in models:
            s.host.load(name)
        if has_op(s.client, "safety.configure"):  # the classifier complex workflows end with
            s.client.request("safety.configure", {"root": str(store.root)}, timeout=120)
        s.client.request("queue.configure", {"capacity": capacity, "concurrency": concurrency, **queue})
        yield s


def inference_params(seed: int, steps: int, size: int = 64, model: str = MODEL, **extra: Any) -> dict[str, Any]:
    return {"model": model, "prompt": PROMPTS[seed % len(PROMPTS)], "width": size, "height": size, "steps": steps,
            "seed": seed, "output": "digest", "progress": False, **extra}


def complex_steps(client: WorkerClient, seed: int, steps: int) -> list[dict[str, Any]]:
    """inference -> 2x upscale -> safety validation, as far as the worker offers the operations."""
    chain: list[dict[str, Any]] = [{"op": "inference.run", "params": inference_params(seed, steps, output="shm")}]
    if has_op(client, UPSCALE_OP):
        chain.append({"op": UPSCALE_OP, "params": {"factor": 2}})
    if has_op(client, SAFETY_OP):
        chain.append({"op": SAFETY_OP, "params": {}})
    return chain


def complex_note(client: WorkerClient) -> str:
    missing = [op for op in (UPSCALE_OP, SAFETY_OP) if not has_op(client, op)]
    chain = " -> ".join(["inference.run"] + [op for op in (UPSCALE_OP, SAFETY_OP) if op not in missing])
    return chain + (f" (not in this worker: {', '.join(missing)})" if missing else "")


def request_for(client: WorkerClient, kind: str, seed: int, steps: int) -> tuple[str, dict[str, Any]]:
    """(op, params) of one request of ``kind`` (simple or complex)."""
    if kind == "simple":
        return "job.run", {"op": "inference.run", "params": inference_params(seed, steps)}
    if kind == "complex":
        return "workflow.run", {"steps": complex_steps(client, seed, steps), "output": "digest"}
    raise ValueError(f"unknown request kind {kind!r}")


def kind_of(complexity: str, i: int) -> str:
    if complexity == "simple_inference":
        return "simple"
    if complexity == "complex_workflows":
        return "complex"
    if complexity == "mixed_complexity":
        return "simple" if (i // 2) % 2 == 0 else "complex"
    raise ValueError(f"request_complexity must be simple_inference, complex_workflows or mixed_complexity, "
                     f"got {complexity!r}")


def digest_of(op: str, result: dict[str, Any]) -> str:
    """The output digest of a job.run / workflow.run answer."""
    if op == "workflow.run":
        return (result.get("sha256") or [""])[0]
    inner = result.get("result") or {}
    return (inner.get("sha256") or [""])[0]


def job_info(result: dict[str, Any]) -> dict[str, Any]:
    return result.get("job") or {}


@dataclass
class Sent:
    i: int
    op: str
    kind: str
    priority: int
    scheduled: float
    sent: float
    pending: PendingRequest
    answered: float | None = None
    tag: Any = None

    def outcome(self) -> tuple[dict[str, Any] | None, WorkerError | None]:
        try:
            return self.pending.result(), None
        except WorkerError as exc:
            return None, exc

    @property
    def latency(self) -> float:
        assert self.answered is not None
        return self.answered - self.scheduled


@dataclass
class Injector:
    """Sends requests (open loop, or when asked) and stamps each answer's arrival."""

    client: WorkerClient
    sent: list[Sent] = field(default_factory=list)
    _open: list[Sent] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Injector:
        self._thread = threading.Thread(target=self._poll, name="injector-poll", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)

    def _poll(self) -> None:
        while not self._stop.wait(POLL_S):
            now = time.monotonic()
            with self._lock:
                still = []
                for s in self._open:
                    if s.pending.done:
                        s.answered = now
                    else:
                        still.append(s)
                self._open = still

    def send(self, op: str, params: dict[str, Any], *, kind: str = "", priority: int = 5,
             scheduled: float | None = None, deadline_ms: float | None = None, tag: Any = None,
             on_event: Callable[[Any], None] | None = None) -> Sent:
        t = time.monotonic()
        pending = self.client.submit(op, params, priority=priority, deadline_ms=deadline_ms, on_event=on_event)
        s = Sent(len(self.sent), op, kind, priority, scheduled if scheduled is not None else t, t, pending, tag=tag)
        with self._lock:
            self.sent.append(s)
            self._open.append(s)
        return s

    def open_loop(self, rate: float, duration: float, make: Callable[[int], tuple[str, dict[str, Any], str, int]],
                  start_index: int = 0) -> list[Sent]:
        """``rate`` per second for ``duration`` s, evenly spaced; ``make(i)`` -> (op, params, kind, priority).
        Requests are built before their slot comes, so building never delays the schedule."""
        n = max(1, round(rate * duration))
        built = [make(start_index + k) for k in range(n)]
        t0 = time.monotonic()
        out = []
        for k, (op, params, kind, prio) in enumerate(built):
            due = t0 + k / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            out.append(self.send(op, params, kind=kind, priority=prio, scheduled=due))
        return out

    def in_flight(self) -> int:
        with self._lock:
            return len(self._open)

    def wait(self, sents: list[Sent], timeout: float) -> bool:
        """Wait until every one of ``sents`` is answered (and stamped); False at the timeout."""
        end = time.monotonic() + timeout
        for s in sents:
            if not s.pending.wait(max(0.0, end - time.monotonic())):
                return False
        while any(s.answered is None for s in sents):
            if time.monotonic() > end:
                return False
            time.sleep(POLL_S)
        return True


def read_trace(client: WorkerClient, after: int = -1) -> tuple[list[dict[str, Any]], int]:
    """The worker's dispatch trace after index ``after``, every page; (entries as dicts, last index)."""
    fields = ("index", "seq", "key", "op", "priority", "enqueued_s", "started_s", "ended_s", "slot", "outcome")
    entries: list[dict[str, Any]] = []
    last = after
    while True:
        page = client.request("queue.trace", {"after": last, "limit": 5000})
        if page["dropped"]:
            raise RuntimeError(f"the worker's trace dropped {page['dropped']} entries before they were read")
        rows = [dict(zip(fields, row, strict=True)) for row in page["entries"]]
        entries += rows
        if not rows:
            return entries, last
        last = rows[-1]["index"]


class RssSampler:
    """RSS of the worker and this process every ``interval_s`` (for high-water comparisons)."""

    def __init__(self, worker_pid: int, interval_s: float = 0.02) -> None:
        self._worker = psutil.Process(worker_pid)
        self._me = psutil.Process()
        self.interval_s = interval_s
        self.samples: list[tuple[float, int, int]] = []  # (monotonic, worker rss, host rss)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.samples.append((time.monotonic(), self._worker.memory_info().rss, self._me.memory_info().rss))
            except psutil.NoSuchProcess:
                return

    def peak(self, start: float, end: float) -> tuple[int, int, int] | None:
        """(peak of worker + host, peak worker, peak host) within [start, end]."""
        got = [(w + h, w, h) for t, w, h in list(self.samples) if start <= t <= end]
        if not got:
            return None
        return max(g[0] for g in got), max(g[1] for g in got), max(g[2] for g in got)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)


class DepthSampler:
    """queue.stats depth every ``interval_s`` (a control operation: answered at once, even under load)."""

    def __init__(self, client: WorkerClient, interval_s: float = 0.1) -> None:
        self.client, self.interval_s = client, interval_s
        self.samples: list[tuple[float, int, int]] = []  # (monotonic, depth, concurrency)
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="depth-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                s = self.client.request("queue.stats", timeout=10)
            except WorkerError:
                self.errors += 1
                continue
            self.samples.append((time.monotonic(), int(s["depth"]), int(s["concurrency"])))

    def between(self, start: float, end: float) -> list[tuple[float, int, int]]:
        return [x for x in list(self.samples) if start <= x[0] <= end]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(12)
