"""The host's side of the worker's job queue: retrying admission, running batches to the end.

- ``request_admitted`` sends a queue operation and, when the worker answers QUEUE_FULL, waits the
  ``retry_after_s`` it named and tries again, within a total wait budget: rejection is explicit
  and the host decides how long to keep trying.
- ``BatchRunner`` runs a whole batch through ``batch.run`` and resumes it until every item has run:
  after a partial answer (the call's deadline, a cancel) with the indices the worker listed, and
  after losing the worker with every item not yet reported in a progress event. Items keep their
  index in the whole batch (and so their seed, with ``seed_base``) across resumptions.

What the queue promises across a worker restart: nothing admitted is silently dropped. A job in
flight when its worker dies is failed WORKER_LOST by the client (the sessions' host resubmits
idempotent requests); a batch loses no completed item, because each was reported as it finished,
and ``BatchRunner`` resubmits the rest on the replacement.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from workers.host.client import WorkerClient
from workers.host.errors import WorkerError
from workers.protocol.messages import ErrorCode, Event

RETRY_FLOOR_S = 0.01  # never retry sooner, whatever the worker estimates


@dataclass
class Admission:
    attempts: int = 0  # requests sent
    rejections: int = 0  # QUEUE_FULL answers
    waited_s: float = 0.0  # time spent waiting to retry


def request_admitted(client: WorkerClient, op: str, params: Mapping[str, Any], *, priority: int = 5,
                     timeout: float = 30.0, max_wait_s: float = 60.0, on_event: Union[Callable[[Event], None], None]
                     = None, admission: Union[Admission, None] = None,
                     sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """``client.request``, retrying QUEUE_FULL after the worker's retry_after_s for at most
    ``max_wait_s`` in all; then the last QUEUE_FULL error is raised."""
    adm = admission if admission is not None else Admission()
    budget_end = time.monotonic() + max_wait_s
    while True:
        adm.attempts += 1
        try:
            return client.request(op, params, timeout=timeout, priority=priority, on_event=on_event)
        except WorkerError as exc:
            if exc.code != ErrorCode.QUEUE_FULL:
                raise
            adm.rejections += 1
            wait = max(RETRY_FLOOR_S, exc.retry_after_s or RETRY_FLOOR_S)
            if time.monotonic() + wait > budget_end:
                raise
            sleep(wait)
            adm.waited_s += wait


@dataclass
class BatchOutcome:
    items: list[dict[str, Any]]  # one final result per item, in index order
    complete: bool  # every item ran (ok or error)
    calls: int  # batch.run requests answered or lost
    resumed_from: list[int] = field(default_factory=list)  # first index of each resumed call
    workers_lost: int = 0
    admission: Admission = field(default_factory=Admission)
    seconds: float = 0.0

    @property
    def ok(self) -> int:
        return sum(1 for r in self.items if r.get("status") == "ok")


class BatchRunner:
    """Runs ``items`` (batch.run item dicts) to the end over as many calls as it takes."""

    def __init__(self, get_client: Callable[[], WorkerClient], *, priority: int = 5, call_timeout_s: float = 600.0,
                 max_calls: int = 10, max_wait_s: float = 60.0, seed_base: Union[int, None] = None,
                 window: Union[int, None] = None, images: str = "digest",
                 on_item: Union[Callable[[dict[str, Any]], None], None] = None) -> None:
        if max_calls < 1:
            raise ValueError(f"max_calls must be >= 1, got {max_calls}")
        self.get_client, self.priority, self.call_timeout_s = get_client, priority, call_timeout_s
        self.max_calls, self.max_wait_s, self.seed_base = max_calls, max_wait_s, seed_base
        self.window, self.images, self.on_item = window, images, on_item

    def run(self, items: Sequence[Mapping[str, Any]]) -> BatchOutcome:
        t0 = time.perf_counter()
        done: dict[int, dict[str, Any]] = {}  # index -> a result that ran (ok or error)
        last: dict[int, dict[str, Any]] = {}  # index -> the latest word on it (not_run, cancelled too)
        pending = list(range(len(items)))
        out = BatchOutcome([], False, 0)
        while pending and out.calls < self.max_calls:
            if out.calls:
                out.resumed_from.append(pending[0])
            out.calls += 1
            params: dict[str, Any] = {"items": [dict(items[i]) for i in pending], "indices": pending,
                                      "images": self.images}
            for key, value in (("seed_base", self.seed_base), ("window", self.window)):
                if value is not None:
                    params[key] = value

            def on_event(ev: Event) -> None:
                item = ev.data.get("item")
                if isinstance(item, dict):
                    last[item["index"]] = item
                    if item["status"] in ("ok", "error"):
                        done[item["index"]] = item
                    if self.on_item is not None:
                        self.on_item(item)

            try:
                result = request_admitted(self.get_client(), "batch.run", params, priority=self.priority,
                                          timeout=self.call_timeout_s, max_wait_s=self.max_wait_s,
                                          on_event=on_event, admission=out.admission)
            except WorkerError as exc:
                if exc.code not in (ErrorCode.WORKER_LOST, ErrorCode.TIMEOUT):
                    raise
                out.workers_lost += exc.code == ErrorCode.WORKER_LOST
                pending = [i for i in pending if i not in done]  # what the events reported is kept
                continue
            for item in result["items"]:
                last[item["index"]] = item
                if item["status"] in ("ok", "error"):
                    done[item["index"]] = item
            pending = [i for i in pending if i not in done]
        out.items = [done.get(i) or last.get(i) or {"index": i, "status": "not_run"} for i in range(len(items))]
        out.complete = not pending
        out.seconds = time.perf_counter() - t0
        return out
