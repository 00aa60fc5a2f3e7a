"""One postprocessing request as up to three stages (upscale, enhance, convert), each recovered from
failure as the request asks, each output validated before it goes on or out.

Recovery (``on_failure``), per the spec's 3.6 enhancement_processing_failure:
- ``error``: the request fails with the stage's error code (OUT_OF_MEMORY after the tile back-off).
- ``fallback_to_original_image``: the first failure stops processing; the original input is delivered,
  as pixels, unprocessed.
- ``alternative_enhancement_algorithm``: the failed stage is done by another algorithm (Real-ESRGAN <->
  classical; ai -> standard, standard <-> basic enhancement; another file format).
- ``graceful_degradation``: the failed stage is served at the next lower level (highest -> standard
  quality, Real-ESRGAN -> classical, ai -> standard -> basic -> none, a format -> PNG -> raw pixels).
Every result says which stage failed, why, and which path served it (``StageReport``).

Faults (``FaultPlan``): a stage fails for the next N requests that reach it, for one algorithm (the
others still work: a broken algorithm) or for all (a broken stage); "raise" throws inside the algorithm,
"bad_output" returns a blank image of the wrong size, which validation must catch, "stdout_noise" makes
the algorithm print on fd 1 through C stdio (as native libraries do) and then work; "oom" raises
out-of-memory on every tile larger than a side, driving the back-off.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from workers.postprocess import enhance as enh
from workers.postprocess import imageio
from workers.postprocess.upscale import (
    ClassicalBackend,
    InjectedOom,
    RealEsrganBackend,
    UpscaleBackend,
    UpscaleError,
    c_printf,
    check_request,
    stdout_to_stderr,
    upscale,
)
from workers.protocol.messages import ErrorCode

RECOVERIES = ("error", "fallback_to_original_image", "alternative_enhancement_algorithm", "graceful_degradation")
_FALLBACK = {"fallback_to_original_image": "original", "alternative_enhancement_algorithm": "alternative",
             "graceful_degradation": "degraded"}
FAULT_KINDS = {"upscaling_algorithm_failure": "upscale", "quality_enhancement_crash": "enhance",
               "format_conversion_error": "convert", "out_of_memory": "oom"}
FAULT_MODES = ("raise", "bad_output", "stdout_noise")


class InjectedFailure(RuntimeError):
    """A stage failure raised on purpose (fault injection)."""


class StageFailed(Exception):
    def __init__(self, stage: str, code: str, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.stage, self.code, self.message, self.retryable = stage, code, message, retryable


# ---- faults --------------------------------------------------------------------------------------------------


@dataclass
class _Armed:
    remaining: int
    algorithm: str | None  # None: every algorithm of the stage
    mode: str  # raise | bad_output
    above_tile: int = 0  # oom: tiles with a side above this fail


@dataclass
class ActiveFault:
    """A fault that hit one request's stage: every attempt of that request at the stage sees it."""

    stage: str
    algorithm: str | None
    mode: str
    above_tile: int = 0

    def hits(self, algorithm: str) -> bool:
        if algorithm in ("original", "raw"):
            return False  # handing back what exists is no algorithm that can fail
        return self.algorithm is None or self.algorithm == algorithm


class FaultPlan:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: dict[str, _Armed] = {}

    def arm(self, kind: str, calls: int, algorithm: str | None = None, mode: str = "raise",
            above_tile: int = 0) -> str:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {sorted(FAULT_KINDS)}")
        if calls < 0 or above_tile < 0:
            raise ValueError(f"calls and above_tile must be >= 0, got {calls} and {above_tile}")
        if mode not in FAULT_MODES:
            raise ValueError(f"mode must be one of {list(FAULT_MODES)}, got {mode!r}")
        stage = FAULT_KINDS[kind]
        with self._lock:
            if calls == 0:
                self._armed.pop(stage, None)
            else:
                self._armed[stage] = _Armed(calls, algorithm, mode, above_tile)
        return stage

    def take(self, stage: str) -> ActiveFault | None:
        """The fault for this request's ``stage``, consuming one of its calls; None when unarmed."""
        with self._lock:
            armed = self._armed.get(stage)
            if armed is None:
                return None
            armed.remaining -= 1
            if armed.remaining <= 0:
                del self._armed[stage]
            return ActiveFault(stage, armed.algorithm, armed.mode, armed.above_tile)

    def armed(self) -> dict[str, int]:
        with self._lock:
            return {stage: a.remaining for stage, a in self._armed.items()}


# ---- requests and reports -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UpscaleSpec:
    factor: int
    quality: str = "standard"
    backend: str = "auto"  # auto | realesrgan | classical
    tile: int | None = None


@dataclass(frozen=True)
class EnhanceSpec:
    level: str = "standard"  # ai | standard | basic
    quality: str = "standard"  # ai only: standard (x2 compact model) | highest (x4plus)


@dataclass(frozen=True)
class ConvertSpec:
    format: str  # png | jpeg | webp
    quality: int = 95


@dataclass(frozen=True)
class Job:
    upscale: UpscaleSpec | None = None
    enhance: EnhanceSpec | None = None
    convert: ConvertSpec | None = None
    on_failure: str = "error"


@dataclass
class StageReport:
    stage: str
    requested: str
    served_by: str = ""
    status: str = "ok"  # ok | recovered | skipped | failed
    error: str = ""
    fallback: str = ""  # "" | original | alternative | degraded
    attempts: int = 0
    seconds: float = 0.0
    tiles: int = 0
    tile_px: int = 0
    oom_events: int = 0
    steps: list[str] = field(default_factory=list)


@dataclass
class Delivered:
    pixels: np.ndarray
    file: bytes | None  # the encoded file when a convert stage served one
    format: str  # raw | png | jpeg | webp
    stages: list[StageReport]
    checks: list[str]  # the validation that passed on the delivered output
    backend: str  # who did the main work
    fallback: str
    limitation: str


@dataclass
class _Attempt:
    label: str
    algorithm: str  # what a fault targets
    fallback: str  # "" for the requested path
    run: Callable[[np.ndarray], tuple[np.ndarray, StageReport | None, bytes | None]]
    factor: int = 1  # output size over input size


def validate(pixels: np.ndarray, want_hw: tuple[int, int], source: np.ndarray | None = None) -> list[str]:
    """The checks an output passes before delivery; ValueError naming the first that fails."""
    if not isinstance(pixels, np.ndarray) or pixels.size == 0:
        raise ValueError("output is empty")
    if pixels.dtype != np.uint8:
        if np.issubdtype(pixels.dtype, np.floating) and not np.isfinite(pixels).all():
            raise ValueError("output contains NaN or infinity")
        raise ValueError(f"output dtype is {pixels.dtype}, not uint8")
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"output shape {pixels.shape} is not (height, width, 3)")
    if pixels.shape[:2] != want_hw:
        raise ValueError(f"output is {pixels.shape[1]}x{pixels.shape[0]}, expected {want_hw[1]}x{want_hw[0]}")
    if source is not None and int(pixels.max()) == int(pixels.min()) and int(source.max()) != int(source.min()):
        raise ValueError("output is blank (one value everywhere) but its input was not")
    return ["uint8", f"shape {want_hw[1]}x{want_hw[0]}x3", "not empty", "not blank"]


def validate_file(data: bytes, fmt: str, pixels: np.ndarray) -> list[str]:
    """An encoded output decodes as the format and size it declares (and losslessly for PNG)."""
    import io

    from PIL import Image

    decoded = imageio.decode(data, what="converted output")  # a truncated or corrupt file fails here
    with Image.open(io.BytesIO(data)) as img:
        declared = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}.get(img.format or "", img.format)
    if declared != fmt:
        raise ValueError(f"file decodes as {declared}, not the declared {fmt}")
    if decoded.shape != pixels.shape:
        raise ValueError(f"file decodes to {decoded.shape}, the image is {pixels.shape}")
    if fmt == "png" and not np.array_equal(decoded, pixels):
        raise ValueError("PNG output does not decode to the same pixels")
    return [f"decodes as {fmt} {pixels.shape[1]}x{pixels.shape[0]}"] + (["lossless"] if fmt == "png" else [])


# ---- the processor ----------------------------------------------------------------------------------------------


class Postprocessor:
    """The backends, the fault plan and the stage logic; thread-safe (each backend locks itself)."""

    def __init__(self, *, tile: int = 256, min_tile: int = 32, overlap: int = 16) -> None:
        self.backends: dict[str, UpscaleBackend] = {"realesrgan": RealEsrganBackend(), "classical": ClassicalBackend()}
        self.faults = FaultPlan()
        self.tile, self.min_tile, self.overlap = tile, min_tile, overlap

    def backend(self, name: str) -> UpscaleBackend:
        if name not in self.backends:
            raise ValueError(f"unknown upscaling backend {name!r}; known: auto, {', '.join(self.backends)}")
        return self.backends[name]

    def resolve(self, name: str) -> tuple[str, str]:
        """``auto`` -> realesrgan when it loads, else classical; returns (backend, why it is not the first)."""
        if name != "auto":
            self.backend(name)
            return name, ""
        status = self.backends["realesrgan"].status()
        return ("realesrgan", "") if status.available else ("classical", f"realesrgan unavailable: {status.reason}")

    # ---- one request ---------------------------------------------------------------------------------------
    def run(self, pixels: np.ndarray, job: Job, *, check: Callable[[], None] | None = None,
            passthrough: tuple[type[BaseException], ...] = ()) -> Delivered:
        if job.on_failure not in RECOVERIES:
            raise ValueError(f"on_failure must be one of {list(RECOVERIES)}, got {job.on_failure!r}")
        if job.upscale is None and job.enhance is None and job.convert is None:
            raise ValueError("nothing to do: give at least one of upscale, enhance, convert")
        if job.upscale is not None:
            check_request(job.upscale.factor, job.upscale.quality)
            self.resolve(job.upscale.backend)  # an unknown backend is bad input, named before any work
        if job.enhance is not None and job.enhance.level not in enh.LEVELS:
            raise ValueError(f"level must be one of {list(enh.LEVELS)}, got {job.enhance.level!r}")
        if job.convert is not None and job.convert.format not in imageio.FORMATS:
            raise imageio.ImageError(ErrorCode.UNSUPPORTED_FORMAT, f"format {job.convert.format!r} is not "
                                                                    f"supported ({', '.join(imageio.FORMATS)})")
        oom = self.faults.take("oom") if job.upscale is not None or (job.enhance and job.enhance.level == "ai") \
            else None
        original, current, file_bytes, fmt = pixels, pixels, None, "raw"
        reports: list[StageReport] = []
        limitation: list[str] = []
        stages = [("upscale", job.upscale), ("enhance", job.enhance), ("convert", job.convert)]
        for i, (stage, spec) in enumerate(stages):
            if spec is None:
                continue
            if check is not None:
                check()
            attempts, requested = self._attempts(stage, spec, job.on_failure, current, check, oom)
            report, out, data = self._run_stage(stage, requested, attempts, current, job.on_failure,
                                                self.faults.take(stage), passthrough)
            reports.append(report)
            if report.status == "recovered":
                limitation.append(f"{stage}: {report.error}; served by {report.served_by} ({report.fallback})")
            if report.fallback == "original" and job.on_failure == "fallback_to_original_image":
                current, file_bytes, fmt = original, None, "raw"
                for later, later_spec in stages[i + 1:]:
                    if later_spec is not None:
                        reports.append(StageReport(later, _describe(later, later_spec), status="skipped",
                                                   error="not run: an earlier stage failed"))
                break
            current = out
            if stage == "convert" and data is not None:
                file_bytes, fmt = data, report.served_by
        checks = validate(current, current.shape[:2], None)
        if file_bytes is not None:
            checks += validate_file(file_bytes, fmt, current)
        main = next((r.served_by for r in reports if r.stage in ("upscale", "enhance") and r.status != "skipped"),
                    reports[0].served_by)
        fallback = next((r.fallback for r in reports if r.fallback), "")
        return Delivered(current, file_bytes, fmt, reports, checks, main, fallback, "; ".join(limitation))

    def _run_stage(self, stage: str, requested: str, attempts: list[_Attempt], pixels: np.ndarray, policy: str,
                   fault: ActiveFault | None, passthrough: tuple[type[BaseException], ...]
                   ) -> tuple[StageReport, np.ndarray, bytes | None]:
        report = StageReport(stage, requested)
        t0 = time.perf_counter()
        errors: list[tuple[str, str, bool]] = []  # (code, message, retryable)
        for attempt in attempts:
            report.attempts += 1
            try:
                out, sub, data = self._try(attempt, stage, pixels, fault)
            except passthrough:
                raise
            except Exception as exc:  # any failure of an algorithm is that attempt's failure: recover or report
                code = getattr(exc, "code", ErrorCode.POSTPROCESS_FAILED)
                report.oom_events += getattr(exc, "oom_events", 0)
                retryable = code == ErrorCode.OUT_OF_MEMORY or not isinstance(exc, UpscaleError)
                errors.append((code, f"{attempt.label}: {type(exc).__name__}: {getattr(exc, 'message', exc)}",
                               retryable))
                continue
            finally:
                report.seconds = time.perf_counter() - t0
            if sub is not None:
                report.tiles, report.tile_px = sub.tiles, sub.tile_px
                report.oom_events += sub.oom_events
                report.steps = sub.steps
            report.served_by, report.fallback = attempt.label, attempt.fallback
            if errors:
                report.status, report.error = "recovered", " / ".join(m for _, m, _ in errors)
            return report, out, data
        code, _, retryable = errors[0] if errors else (ErrorCode.POSTPROCESS_FAILED, "", False)
        detail = " / ".join(m for _, m, _ in errors) or "no path to serve it"
        suffix = "" if policy == "error" else f" (every {policy} path failed too)"
        raise StageFailed(stage, code, f"{stage} failed: {detail}{suffix}", retryable)

    @staticmethod
    def _try(attempt: _Attempt, stage: str, pixels: np.ndarray, fault: ActiveFault | None
             ) -> tuple[np.ndarray, StageReport | None, bytes | None]:
        """One attempt, its output validated; raises on failure (injected ones included)."""
        hit = fault is not None and fault.hits(attempt.algorithm)
        if hit and fault is not None and fault.mode == "raise":
            raise InjectedFailure(f"injected {stage} failure in {attempt.algorithm}")
        if hit and fault is not None and fault.mode == "stdout_noise":
            with stdout_to_stderr():
                c_printf(f"0.00%\n{stage} progress printed on fd 1 by {attempt.algorithm}\n")
            out, sub, data = attempt.run(pixels)
            return out, sub, data
        out, sub, data = attempt.run(pixels)
        if hit and data is not None:
            data = data[: len(data) // 2]  # bad_output: a truncated file
        elif hit:
            out = np.zeros((max(1, out.shape[0] // 2), out.shape[1], 3), np.uint8)  # bad_output: blank, wrong size
        h, w = pixels.shape[:2]
        validate(out, (h * attempt.factor, w * attempt.factor), pixels)
        if data is not None:
            validate_file(data, attempt.algorithm, out)
        return out, sub, data

    # ---- what each stage may try, in order ---------------------------------------------------------------
    def _attempts(self, stage: str, spec: object, policy: str, pixels: np.ndarray, check: Callable[[], None] | None,
                  oom: ActiveFault | None) -> tuple[list[_Attempt], str]:
        original = _Attempt("original", "original", "original", lambda p: (p, None, None))
        fb = _FALLBACK.get(policy, "")
        if stage == "upscale":
            assert isinstance(spec, UpscaleSpec)
            chosen, why = self.resolve(spec.backend)
            path = [(chosen, spec.quality)]
            if policy == "alternative_enhancement_algorithm":
                path.append(("classical" if chosen == "realesrgan" else "realesrgan", spec.quality))
            elif policy == "graceful_degradation":
                if spec.quality == "highest":
                    path.append((chosen, "standard"))
                if chosen == "realesrgan":
                    path.append(("classical", "standard"))
            attempts = [self._upscale_attempt(b, spec.factor, q, spec.tile, check, oom, "" if n == 0 else fb)
                        for n, (b, q) in enumerate(path)]
            if why:
                attempts[0].label += f" ({why})"
            requested = f"{spec.backend} x{spec.factor} {spec.quality}"
        elif stage == "enhance":
            assert isinstance(spec, EnhanceSpec)
            levels = [(spec.level, spec.quality)]
            if policy == "alternative_enhancement_algorithm":
                levels.append(({"ai": "standard", "standard": "basic", "basic": "standard"}[spec.level], "standard"))
            elif policy == "graceful_degradation":
                ladder = [("ai", "highest"), ("ai", "standard"), ("standard", "standard"), ("basic", "standard")]
                start = ladder.index((spec.level, spec.quality if spec.level == "ai" else "standard"))
                levels += ladder[start + 1:]
            attempts = [self._enhance_attempt(lv, q, check, oom, "" if n == 0 else fb)
                        for n, (lv, q) in enumerate(levels)]
            requested = f"{spec.level}" + (f" {spec.quality}" if spec.level == "ai" else "")
        else:
            assert isinstance(spec, ConvertSpec)
            formats = [spec.format]
            if policy == "alternative_enhancement_algorithm":
                formats.append("png" if spec.format != "png" else "webp")
            elif policy == "graceful_degradation" and spec.format != "png":
                formats.append("png")
            attempts = [self._convert_attempt(f, spec.quality, "" if n == 0 else fb) for n, f in enumerate(formats)]
            if policy == "graceful_degradation":
                attempts.append(_Attempt("raw", "raw", fb, lambda p: (p, None, None)))
            requested = spec.format
        if policy in ("fallback_to_original_image", "graceful_degradation") and stage != "convert":
            attempts.append(original)
        elif policy == "fallback_to_original_image":
            attempts.append(_Attempt("original", "original", "original", lambda p: (p, None, None)))
        return attempts, requested

    def _tiling(self, tile: int | None, check: Callable[[], None] | None, oom: ActiveFault | None) -> dict:
        def before(t: np.ndarray) -> None:
            if oom is not None and max(t.shape[:2]) > oom.above_tile:
                raise InjectedOom(f"injected out-of-memory on a {t.shape[1]}x{t.shape[0]} tile "
                                  f"(fits {oom.above_tile} px at most)")

        return {"tile": tile or self.tile, "min_tile": min(self.min_tile, tile or self.tile), "overlap": self.overlap,
                "check": check, "before_tile": before}

    def _upscale_attempt(self, name: str, factor: int, quality: str, tile: int | None,
                         check: Callable[[], None] | None, oom: ActiveFault | None, fallback: str) -> _Attempt:
        def run(p: np.ndarray) -> tuple[np.ndarray, StageReport | None, bytes | None]:
            res = upscale(p, factor, quality, self.backend(name), **self._tiling(tile, check, oom))
            return res.pixels, StageReport("upscale", "", tiles=res.tiles, tile_px=res.tile_px,
                                           oom_events=res.oom_events), None

        return _Attempt(f"{name} x{factor} {quality}", name, fallback, run, factor)

    def _enhance_attempt(self, level: str, quality: str, check: Callable[[], None] | None, oom: ActiveFault | None,
                         fallback: str) -> _Attempt:
        def run(p: np.ndarray) -> tuple[np.ndarray, StageReport | None, bytes | None]:
            if level == "ai":
                name, why = self.resolve("auto")
                if why:
                    raise UpscaleError(ErrorCode.POSTPROCESS_FAILED, f"ai enhancement needs Real-ESRGAN: {why}")
                e = enh.enhance_ai(p, self.backend(name), quality, **self._tiling(None, check, oom))
            else:
                e = enh.enhance_standard(p) if level == "standard" else enh.enhance_basic(p)
            return e.pixels, StageReport("enhance", "", tiles=e.tiles, oom_events=e.oom_events, steps=e.steps), None

        label = f"{level} {quality}" if level == "ai" else level
        return _Attempt(label, level, fallback, run)

    def _convert_attempt(self, fmt: str, quality: int, fallback: str) -> _Attempt:
        def run(p: np.ndarray) -> tuple[np.ndarray, StageReport | None, bytes | None]:
            return p, None, imageio.encode(p, fmt, quality=quality)

        return _Attempt(fmt, fmt, fallback, run)


def _describe(stage: str, spec: object) -> str:
    if isinstance(spec, UpscaleSpec):
        return f"{spec.backend} x{spec.factor} {spec.quality}"
    if isinstance(spec, EnhanceSpec):
        return spec.level + (f" {spec.quality}" if spec.level == "ai" else "")
    if isinstance(spec, ConvertSpec):
        return spec.format
    return stage
