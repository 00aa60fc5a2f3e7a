"""Shared by the batch runners: items of each inference type, the host's input images, one ``batch.run`` in
flight with its events and host times (retrying QUEUE_FULL after its retry-after), batches sent at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from hybrid_assets.runners.model_support import control_image, init_image
from hybrid_assets.runners.queue_support import CONTROL, LORA, PROMPTS, inference_params
from workers.host.client import WorkerClient
from workers.host.errors import WorkerError
from workers.protocol import codec
from workers.protocol.images import ImageRef, ShmLedger
from workers.protocol.messages import ErrorCode, Event


def item_params(kind: str, steps: int, k: int, images: dict[str, ImageRef]) -> dict[str, Any]:
    """One item of ``kind`` without a seed (the batch's seed_base assigns it)."""
    params = inference_params(0, steps, prompt=PROMPTS[k % len(PROMPTS)])
    del params["seed"]
    if kind == "text_to_image":
        return params
    if kind == "image_to_image":
        return {**params, "mode": "image_to_image", "init_image": codec.to_builtins(images["init"]), "strength": 0.6}
    if kind == "controlnet":
        return {**params, "mode": "controlnet", "control_model": CONTROL,
                "control_image": codec.to_builtins(images["control"])}
    if kind == "lora":
        return {**params, "lora": LORA}
    raise ValueError(f"unknown inference type {kind!r}: text_to_image, image_to_image, controlnet or lora")


def input_images(ledger: ShmLedger, kind: str, seed: int) -> dict[str, ImageRef]:
    if kind == "image_to_image":
        return {"init": ledger.publish(init_image(64, seed))}
    if kind == "controlnet":
        return {"control": ledger.publish(control_image(64, seed))}
    return {}


@dataclass
class BatchCall:
    """One batch.run in flight: its events, its answer, host times."""

    priority: int
    size: int
    built: float = 0.0  # host perf_counter when building started
    submitted: float = 0.0
    admitted: float | None = None  # host time of the admitted event
    admitted_t_s: float | None = None  # the worker queue's clock
    answered: float | None = None
    rid: Any = None
    result: dict[str, Any] | None = None
    error: WorkerError | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    rejections: int = 0
    sent_items: list[dict[str, Any]] = field(default_factory=list)
    seed_base: int = 0
    _admitted_ev: threading.Event = field(default_factory=threading.Event)

    def on_event(self, ev: Event) -> None:
        if ev.data.get("stage") == "admitted":
            self.admitted = time.perf_counter()
            self.admitted_t_s = ev.data.get("t_s")
            self._admitted_ev.set()
        elif "item" in ev.data:
            self.events.append(ev.data["item"])

    def run(self, client: WorkerClient, items: list[dict[str, Any]], seed_base: int, timeout: float,
            cancel_when_admitted: bool = False) -> None:
        """Send (retrying QUEUE_FULL after its retry-after) and wait for the answer."""
        self.sent_items, self.seed_base = items, seed_base
        while True:
            self.submitted = time.perf_counter()
            pending = client.submit("batch.run", {"items": items, "seed_base": seed_base}, priority=self.priority,
                                    deadline_ms=timeout * 1e3, on_event=self.on_event)
            self.rid = pending.id
            if cancel_when_admitted:
                while not self._admitted_ev.wait(0.01) and not pending.done:
                    pass
                if self._admitted_ev.is_set():
                    client.submit("cancel", {"target": pending.id})
            pending.wait(timeout + 5)
            self.answered = time.perf_counter()
            try:
                self.result = pending.result()
                return
            except WorkerError as exc:
                if exc.code != ErrorCode.QUEUE_FULL:
                    self.error = exc
                    return
                self.rejections += 1
                time.sleep(max(0.01, exc.retry_after_s or 0.01))


def run_together(calls: list[tuple[BatchCall, Any]]) -> None:
    threads = [threading.Thread(target=fn, daemon=True) for _, fn in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@contextmanager
def published() -> Iterator[ShmLedger]:
    """Input images the host publishes; whatever is left is unlinked at the end."""
    ledger = ShmLedger()
    try:
        yield ledger
    finally:
        ledger.unlink_all()
