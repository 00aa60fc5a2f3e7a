"""4.5 inference latency (text-to-image, image-to-image, ControlNet overhead), and the
toolkit the other inference runners (inference_throughput, inference_workflows) share.

Every runner drives dedicated workers of its own (never ctx.pool: they hold models) through the model host,
warms the pipeline up with a generation of the measured shape before timing anything, and times from the
host's request to the decoded image taken out of shared memory.

Output quality, for random-weight models, is judged as determinism: a reference image is rendered per
(model, mode, resolution, steps, batch, prompt, seed) on an idle worker first, and outputs produced under
load, concurrency or on another device are compared to it: sha256 equality of the raw uint8 bytes (what the
bitwise lines judge), else the mean absolute difference / 255 and 1 - SSIM (what the part-2 quality lines
judge: 0.0 exactly when the bytes are equal).
"""

from __future__ import annotations

import hashlib
import math
import os
import statistics
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hybrid_assets.runners import RunnerContext
from hybrid_assets.runners.ground_truth import observe
from hybrid_assets.runners.model_support import control_image, ensure_models, init_image
from workers.host import WorkerClient, WorkerError, WorkerLost
from workers.host.models import ModelHost
from workers.models import generate
from workers.models.store import ModelStore
from workers.protocol.images import ShmLedger

ENV_INFERENCE_MODEL = "HYBRID_INFERENCE_MODEL"  # the deployment's own pipeline, for model: configured/full
GPU_MODEL = "sd15-shaped-fp16"  # SD1.5's shapes with random fp16 weights: the spec's compute cost
PROMPTS = ("a red fox in fresh snow", "a lighthouse on a cliff at dusk", "a bowl of ramen, studio light",
           "an old map of an island", "a robot reading in a library", "a field of sunflowers at noon")
# Resolution and steps of a request when a case names only a model class (part-1 workflows)
CLASS_POINTS = {"tiny": (64, 4), "tiny-random": (64, 4), "small": (128, 10), "full": (512, 20),
                "configured": (512, 20)}
WARMUP_SEED = 10_000  # never one of the measured seeds


# ---- devices and models -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    name: str  # as recorded: cpu, cuda:0, or sim:cpu1 (a simulated device backed by the CPU)
    backing: str  # the worker's models.configure device
    kind: str  # cpu | cuda: outputs of devices of one kind must be bit-identical

    @property
    def dtype(self) -> str:
        return "float16" if self.kind == "cuda" else "float32"


def real_devices() -> list[Device]:
    """The GPUs the host sees through NVML (cuda:k in visible order), else the CPU."""
    gpus = observe().gpus
    if gpus:
        return [Device(f"cuda:{k}", f"cuda:{k}", "cuda") for k in range(len(gpus))]
    return [Device("cpu", "cpu", "cpu")]


def resolve_pipeline(ctx: RunnerContext, store: ModelStore, model: str) -> str:
    """tiny/tiny-random: the smoke base pipeline; small: the wider tiny one; configured/full: the
    deployment's pipeline ($HYBRID_INFERENCE_MODEL), else SD1.5-shaped weights, built on demand; any other
    value: a pipeline of the store by name."""
    if model in ("tiny", "tiny-random"):
        name = generate.BASE
    elif model == "small":
        name = "tiny-sd-c"
    elif model in ("configured", "full"):
        name = os.environ.get(ENV_INFERENCE_MODEL) or GPU_MODEL
        if name == GPU_MODEL and name not in store.names():
            generate.build(store.root, generate.PROFILES["gpu"], log=ctx.log.info)
    else:
        name = model
    if name not in store.names():
        raise ValueError(f"model {model!r} resolves to {name!r}, which the store at {store.root} does not hold; "
                         f"it has {store.names()}")
    if store.entry(name).kind != "sd_pipeline":
        raise ValueError(f"model {model!r} resolves to {name!r}, a {store.entry(name).kind}, not an sd_pipeline")
    return name


def companion(store: ModelStore, base: str, kind: str) -> str:
    """The store's ControlNet or LoRA built on ``base``."""
    found = sorted(n for n in store.names() if store.entry(n).kind == kind and base in store.entry(n).depends_on)
    if not found:
        raise ValueError(f"the store at {store.root} has no {kind} model built on {base!r}")
    return found[0]


# ---- requests ---------------------------------------------------------------------------------------------


class Inputs:
    """Conditioning images in shared memory, published once per size and reused by every request."""

    def __init__(self) -> None:
        self._ledger = ShmLedger()
        self._refs: dict[tuple[str, int, int], dict[str, Any]] = {}
        self._lock = threading.Lock()

    def _get(self, what: str, width: int, height: int) -> dict[str, Any]:
        with self._lock:
            key = (what, width, height)
            if key not in self._refs:
                make = init_image if what == "init" else control_image
                img = np.ascontiguousarray(make(max(width, height))[:, :height, :width])
                ref = self._ledger.publish(img)
                self._refs[key] = {"shm": ref.shm, "shape": ref.shape, "sha256": ref.sha256}
            return self._refs[key]

    def init(self, width: int, height: int) -> dict[str, Any]:
        return self._get("init", width, height)

    def control(self, width: int, height: int) -> dict[str, Any]:
        return self._get("control", width, height)

    def close(self) -> None:
        self._ledger.unlink_all()

    def __enter__(self) -> Inputs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class Job:
    """One inference request; equal jobs must give bitwise-equal images on one device kind."""

    model: str
    mode: str = "text_to_image"  # text_to_image | image_to_image | controlnet (the worker's modes)
    width: int = 64
    height: int = 64
    steps: int = 4
    seed: int = 0
    batch: int = 1
    prompt: str = PROMPTS[0]
    control_model: str | None = None
    lora: str | None = None
    strength: float = 0.75

    def params(self, inputs: Inputs) -> dict[str, Any]:
        p: dict[str, Any] = {"model": self.model, "mode": self.mode, "prompt": self.prompt, "width": self.width,
                             "height": self.height, "steps": self.steps, "seed": self.seed, "batch": self.batch,
                             "progress": False, "output": "shm"}
        if self.mode == "image_to_image":
            p.update(init_image=inputs.init(self.width, self.height), strength=self.strength)
        elif self.mode == "controlnet":
            p.update(control_model=self.control_model, control_image=inputs.control(self.width, self.height))
        if self.lora is not None:
            p["lora"] = self.lora
        return p


@dataclass
class Outcome:
    job: Job
    started: float  # perf_counter, host side
    ended: float
    images: np.ndarray | None = None
    result: dict[str, Any] = field(default_factory=dict)
    error: str = ""  # the failure, "" when the images came back
    lost: bool = False  # the worker died under the request

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def latency_s(self) -> float:
        return self.ended - self.started


def run_job(host: ModelHost, job: Job, inputs: Inputs, *, timeout: float = 600.0, priority: int = 5) -> Outcome:
    """Send one request and take its images; a failure is an Outcome with its error, never raised."""
    t0 = time.perf_counter()
    try:
        images, result = host.generate(job.params(inputs), timeout=timeout, priority=priority)
    except WorkerError as exc:
        return Outcome(job, t0, time.perf_counter(), error=f"{exc.code}: {exc.message[:160]}",
                       lost=isinstance(exc, WorkerLost))
    t1 = time.perf_counter()
    if images is None or images.shape[0] != job.batch:
        got = None if images is None else tuple(images.shape)
        return Outcome(job, t0, t1, images, result, error=f"NO_IMAGE: expected {job.batch} images, got {got}")
    return Outcome(job, t0, t1, images, result)


# ---- workers ----------------------------------------------------------------------------------------------


@dataclass
class Session:
    device: Device
    client: WorkerClient
    host: ModelHost


@contextmanager
def open_sessions(ctx: RunnerContext, store: ModelStore, devices: Sequence[Device], *, cache_mib: float = 8192,
                  inference_slots: int = 1, start_timeout: float = 180.0) -> Iterator[list[Session]]:
    """One fresh worker per device, started in parallel (imports take seconds each), configured."""
    clients: list[WorkerClient | None] = [None] * len(devices)
    failures: list[BaseException] = []

    def start(i: int) -> None:
        try:
            clients[i] = WorkerClient(ctx.worker_argv, name=f"{ctx.case_id}-{devices[i].name}",
                                      startup_timeout=start_timeout).start()
        except BaseException as exc:  # re-raised in the caller's thread below
            failures.append(exc)

    threads = [threading.Thread(target=start, args=(i,), daemon=True) for i in range(len(devices))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        if failures:
            raise failures[0]
        sessions = []
        for dev, client in zip(devices, clients, strict=True):
            assert client is not None
            host = ModelHost(client, store)
            host.configure(cache_mib=cache_mib, device=dev.backing, dtype=dev.dtype, inference_slots=inference_slots)
            sessions.append(Session(dev, client, host))
        yield sessions
    finally:
        for client in clients:
            if client is not None:
                client.shutdown()


def warm_up(session: Session, jobs: Sequence[Job], inputs: Inputs, timeout: float = 600.0) -> float:
    """Generate each job's shape once (the first generation in a process costs seconds); returns seconds."""
    import dataclasses

    total = 0.0
    for job in jobs:
        out = run_job(session.host, dataclasses.replace(job, seed=WARMUP_SEED), inputs, timeout=timeout)
        if not out.ok:
            raise RuntimeError(f"warm-up on {session.device.name} failed for {job}: {out.error}")
        total += out.latency_s
    return total


def render_references(session: Session, jobs: Sequence[Job], inputs: Inputs,
                      timeout: float = 600.0) -> dict[Job, np.ndarray]:
    """Each distinct job rendered alone on an idle worker: the images later outputs are compared to."""
    refs: dict[Job, np.ndarray] = {}
    for job in dict.fromkeys(jobs):
        out = run_job(session.host, job, inputs, timeout=timeout)
        if not out.ok or out.images is None:
            raise RuntimeError(f"reference for {job} on {session.device.name} failed: {out.error}")
        refs[job] = out.images
    return refs


# ---- comparisons ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    identical: bool  # sha256 of the raw uint8 bytes equal
    mean_abs_diff: float  # mean |a - b| / 255 over every pixel and channel
    ssim: float  # mean over channels of Wang et al.'s SSIM (11-tap Gaussian window, sigma 1.5)

    @property
    def degradation(self) -> float:
        """1 - SSIM: the part-2 quality lines' measure (0.0 for identical images)."""
        return max(0.0, 1.0 - self.ssim)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two (h, w, c) uint8 images, as in Wang et al. 2004 and skimage's gaussian_weights mode."""
    from scipy.ndimage import gaussian_filter

    if a.shape != b.shape:
        raise ValueError(f"ssim: shapes differ, {a.shape} vs {b.shape}")
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    scores = []
    for ch in range(a.shape[-1]):
        x, y = a[..., ch].astype(np.float64), b[..., ch].astype(np.float64)

        def blur(img: np.ndarray) -> np.ndarray:
            return gaussian_filter(img, sigma=1.5, truncate=3.5, mode="reflect")

        mx, my = blur(x), blur(y)
        vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        scores.append(float(s.mean()))
    return float(np.mean(scores))


def _digest(img: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest()


def compare(reference: np.ndarray, output: np.ndarray) -> list[Comparison]:
    """Per image of a (batch, h, w, c) pair; a shape mismatch is the worst comparison, not an exception."""
    if reference.shape != output.shape:
        return [Comparison(False, 1.0, 0.0)] * max(1, output.shape[0] if output.ndim == 4 else 1)
    out = []
    for ref, img in zip(reference, output, strict=True):
        if _digest(ref) == _digest(img):
            out.append(Comparison(True, 0.0, 1.0))
        else:
            mad = float(np.abs(ref.astype(np.int16) - img.astype(np.int16)).mean() / 255.0)
            out.append(Comparison(False, mad, ssim(ref, img)))
    return out


QUALITY_DEFINITION = ("per output image against the same request rendered alone on an idle worker of the same "
                      "device kind before the load: bitwise = sha256 of the raw uint8 bytes equal; "
                      "quality_degradation_ratio = 1 - SSIM (Gaussian 11-tap, sigma 1.5, mean over RGB), 0.0 "
                      "when bitwise equal; mean_abs_diff = mean |a-b| / 255 as a label")


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


# ---- 4.5 latency runners ----------------------------------------------------------------------------------

T2I_METRICS = frozenset({"text_to_image_latency_s", "inference_failed"})
I2I_METRICS = frozenset({"image_to_image_latency_s", "inference_failed"})
CONTROLNET_METRICS = frozenset({"controlnet_overhead_ratio", "controlnet_quality_degradation_ratio",
                                "base_latency_s", "controlnet_latency_s"})


def request_steps_for(executed: int, strength: float) -> int:
    """The smallest request step count at which image-to-image runs exactly ``executed`` steps
    (diffusers runs int(steps * strength) of the schedule)."""
    n = max(1, math.ceil(executed / strength))
    while max(1, int(n * strength)) < executed:
        n += 1
    if max(1, int(n * strength)) != executed:
        raise ValueError(f"no request step count runs exactly {executed} steps at strength {strength}")
    return n


def _latency_case(ctx: RunnerContext, metric: str, mode: str) -> None:
    p = ctx.params
    store = ensure_models(ctx)
    model = resolve_pipeline(ctx, store, str(p["model"]))
    width, height, steps = int(p["width_px"]), int(p["height_px"]), int(p["steps"])
    strength = float(p.get("strength", 0.75))
    request_steps = request_steps_for(steps, strength) if mode == "image_to_image" else steps
    timeout = float(p.get("request_timeout_s", 600))
    device = real_devices()[0]
    rec = ctx.recorder
    with Inputs() as inputs, open_sessions(ctx, store, [device]) as (session,):
        load = session.host.load(model)
        base = Job(model, mode, width, height, request_steps, strength=strength)
        rec.note("warmup_s", round(warm_up(session, [base], inputs, timeout), 3))
        gen_s, overhead_s = [], []
        for i in range(int(p["samples"])):
            job = Job(model, mode, width, height, request_steps, seed=i, prompt=PROMPTS[i % len(PROMPTS)],
                      strength=strength)
            out = run_job(session.host, job, inputs, timeout=timeout)
            done = out.result.get("steps_done")
            if out.ok and done != steps:  # the point is defined by the steps that ran
                out.error = f"STEPS: {done} denoising steps ran, the point has {steps}"
            rec.record("inference_failed", 0.0 if out.ok else 1.0, "count", seed=i,
                       **({"error": out.error} if out.error else {}))
            if out.ok:
                rec.record(metric, out.latency_s, "s", seed=i, generation_s=out.result["seconds"],
                           queue_s=out.result["queue_s"])
                gen_s.append(out.result["seconds"])
                overhead_s.append(out.latency_s - out.result["seconds"])
    rec.note("device", device.name)
    rec.note("model", model)
    rec.note("point", {"width": width, "height": height, "executed_steps": steps, "request_steps": request_steps,
                       **({"strength": strength} if mode == "image_to_image" else {})})
    rec.note("model_load_s", round(load.seconds, 3))
    rec.note("median_generation_s", median(gen_s))
    rec.note("median_host_overhead_s", median(overhead_s))


def text_to_image_latency(ctx: RunnerContext) -> None:
    _latency_case(ctx, "text_to_image_latency_s", "text_to_image")


def image_to_image_latency(ctx: RunnerContext) -> None:
    _latency_case(ctx, "image_to_image_latency_s", "image_to_image")


def paired(session: Session, first: Job, second: Job, inputs: Inputs, swap: bool,
            timeout: float) -> tuple[Outcome, Outcome]:
    """Run a pair back to back, in alternating order across pairs so that drift favours neither."""
    if swap:
        b = run_job(session.host, second, inputs, timeout=timeout)
        a = run_job(session.host, first, inputs, timeout=timeout)
    else:
        a = run_job(session.host, first, inputs, timeout=timeout)
        b = run_job(session.host, second, inputs, timeout=timeout)
    return a, b


def controlnet_inference(ctx: RunnerContext) -> None:
    p = ctx.params
    rec = ctx.recorder
    store = ensure_models(ctx)
    model = resolve_pipeline(ctx, store, str(p["model"]))
    control = companion(store, model, "controlnet")
    timeout = float(p.get("request_timeout_s", 600))
    device = real_devices()[0]
    # CLIP text-image similarity needs a trained CLIP and a trained generator: the models here have random
    # weights and no CLIP weights exist offline, so the score would measure noise. The case says so too.
    rec.skip("controlnet_quality_degradation_ratio",
             "CLIP-score degradation needs trained weights (a trained pipeline and CLIP); the models on this "
             "testbed have random weights and no CLIP weights are available offline")
    changed = pairs_done = 0
    with Inputs() as inputs, open_sessions(ctx, store, [device]) as (session,):
        session.host.load(model)
        session.host.load(control)
        for size, steps in (tuple(pt) for pt in p["points"]):
            size, steps = int(size), int(steps)
            base = Job(model, "text_to_image", size, size, steps)
            with_cn = Job(model, "controlnet", size, size, steps, control_model=control)
            warm_up(session, [base, with_cn], inputs, timeout)
            for k in range(int(p["pairs_per_point"])):
                prompt = PROMPTS[k % len(PROMPTS)]
                a, b = paired(session, Job(model, "text_to_image", size, size, steps, seed=k, prompt=prompt),
                               Job(model, "controlnet", size, size, steps, seed=k, prompt=prompt,
                                   control_model=control), inputs, swap=k % 2 == 1, timeout=timeout)
                labels = {"size": size, "steps": steps, "pair": k}
                if a.ok:
                    rec.record("base_latency_s", a.latency_s, "s", **labels)
                if b.ok:
                    rec.record("controlnet_latency_s", b.latency_s, "s", **labels)
                if a.ok and b.ok:
                    rec.record("controlnet_overhead_ratio", b.latency_s / a.latency_s - 1.0, "ratio", **labels)
                    pairs_done += 1
                    changed += int(a.result["sha256"] != b.result["sha256"])
                else:
                    rec.note(f"pair_failed_{size}_{steps}_{k}", a.error or b.error)
    rec.note("device", device.name)
    rec.note("models", {"base": model, "controlnet": control})
    rec.note("condition", f"{p.get('condition', 'canny')}: a synthetic edge map (white line segments on black), "
                          "the shape of a canny output")
    # evidence the ControlNet was applied at all: same prompt and seed, different image
    rec.note("controlnet_changed_output_pairs", f"{changed}/{pairs_done}")


RUNNERS = {
    "inference.text_to_image_latency": (T2I_METRICS, text_to_image_latency),
    "inference.image_to_image_latency": (I2I_METRICS, image_to_image_latency),
    "inference.controlnet_inference": (CONTROLNET_METRICS, controlnet_inference),
}
