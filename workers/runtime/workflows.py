"""Operations called in-process, and workflows: chains of them whose images stay in the worker.

``OpTable`` finds an operation's in-process implementation by name when a job is admitted:
first the ``direct_handlers(server)`` a domain module exposes (inference.run, postprocessing,
safety), then the plain work handlers (echo, fault.sleep, ...). Every handler has the work
handler's shape, ``fn(ctx, params_struct) -> result``. An operation without one (unknown, routed
only, control, or another queue operation) is named in an INVALID_PARAMS answer; nothing runs.

A workflow hands each step's output image to the next as a shared-memory reference read in
place (``ImageInput.ref``), never through the host, and releases the intermediate segments.
Each step is timed around its call, so coordination overhead = total - the steps' own time.
"""

from __future__ import annotations

import functools
import hashlib
import threading
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import TYPE_CHECKING, Any, Union

import msgspec

from workers.protocol import codec
from workers.protocol.images import ImageInput, ImageRef
from workers.protocol.operations import OPERATIONS_BY_NAME
from workers.protocol.ops_queue import MAX_WORKFLOW_STEPS, StepInfo, WorkflowResult, WorkflowStep
from workers.protocol.opspec import OperationSpec
from workers.runtime.context import Cancelled, DeadlineExceeded, OperationError, RequestContext

if TYPE_CHECKING:
    from workers.runtime.server import WorkerServer

Handler = Callable[[RequestContext, Any], Any]
QUEUE_OPS = frozenset({"job.run", "workflow.run", "batch.run"})  # no nesting: a job never waits on its own queue
_PLACEHOLDER = ImageRef(shm="workflow-placeholder", shape=[1, 1, 1, 3])


@dataclass(frozen=True)
class Resolved:
    spec: OperationSpec
    fn: Handler
    image_field: Union[str, None]  # where a previous step's image goes
    image_kind: str  # "input" (ImageInput) | "inputs" (a list of them) | "ref" (ImageRef) | ""


class OpTable:
    def __init__(self, server: WorkerServer) -> None:
        self.server = server
        self._lock = threading.Lock()
        self._direct: Union[dict[str, Handler], None] = None

    def _handlers(self) -> dict[str, Handler]:
        # Built on first use, after every domain module registered: a domain that gains a direct
        # handler later in development is picked up without touching this module.
        with self._lock:
            if self._direct is None:
                from workers.runtime import server as server_module

                table: dict[str, Handler] = self.server.work_table()
                for module in server_module.DOMAIN_MODULES:
                    direct = getattr(module, "direct_handlers", None)
                    if direct is not None:
                        table.update(direct(self.server))
                self._direct = table
            return self._direct

    def resolve(self, op: str, image_param: Union[str, None] = None, *, where: str = "") -> Resolved:
        prefix = f"{where}: " if where else ""
        spec = OPERATIONS_BY_NAME.get(op)
        if spec is None:
            raise ValueError(f"{prefix}unknown operation {op!r}")
        if op in QUEUE_OPS:
            raise ValueError(f"{prefix}{op!r} cannot run inside a job (queue operations do not nest)")
        if spec.fault and not self.server.config.allow_fault_injection:
            raise ValueError(f"{prefix}{op!r} needs a worker started with --allow-fault-injection")
        fn = self._handlers().get(op)
        if fn is None or spec.control:
            raise ValueError(f"{prefix}operation {op!r} has no in-process implementation a job can call "
                             "(control or routed only)")
        field, kind = _image_field(spec.params, image_param, prefix)
        return Resolved(spec, fn, field, kind)


@functools.lru_cache(maxsize=256)
def param_types(params_type: type) -> dict[str, Any]:
    """Field name -> type of an operation's params (msgspec.structs.fields costs ~50 us a call: cached)."""
    return {f.name: f.type for f in msgspec.structs.fields(params_type)}


def _image_field(params_type: type, wanted: Union[str, None], prefix: str) -> tuple[Union[str, None], str]:
    fields = param_types(params_type)
    if wanted is not None:
        if wanted not in fields:
            raise ValueError(f"{prefix}image_param {wanted!r} is not a parameter ({sorted(fields)})")
        kind = _kind(fields[wanted])
        if not kind:
            raise ValueError(f"{prefix}image_param {wanted!r} does not take an image")
        return wanted, kind
    # Implicitly only an ImageInput or a list of them (postprocessing, safety): an ImageRef parameter
    # such as inference's init_image changes what the step does, so the workflow must name it.
    for name, tp in fields.items():
        kind = _kind(tp)
        if kind in ("input", "inputs"):
            return name, kind
    return None, ""


def _kind(tp: Any) -> str:
    """input: an ImageInput; inputs: a list of them (safety.validate); ref: an ImageRef; "": no image."""
    if typing.get_origin(tp) is list and typing.get_args(tp) and _kind(typing.get_args(tp)[0]) == "input":
        return "inputs"
    args = typing.get_args(tp) or (tp,)
    if ImageInput in args:
        return "input"
    if ImageRef in args:
        return "ref"
    return ""


def convert(spec: OperationSpec, params: dict[str, Any], where: str) -> Any:
    try:
        return codec.convert_params(params, spec.params)
    except msgspec.ValidationError as exc:
        raise ValueError(f"{where}: invalid params for {spec.name!r}: {exc}") from None


def with_image(resolved: Resolved, params: dict[str, Any], ref: ImageRef) -> dict[str, Any]:
    """``params`` with the previous image in the step's image parameter (unless it sets one)."""
    if resolved.image_field is None or params.get(resolved.image_field) is not None:
        return params
    value: Any = codec.to_builtins(ref)
    if resolved.image_kind == "input":
        value = {"ref": value}
    elif resolved.image_kind == "inputs":
        value = [{"ref": value}]
    return {**params, resolved.image_field: value}


def find_image(result: Any) -> Union[ImageRef, None]:
    """The image a step produced: the first top-level result field holding an ImageRef."""
    if isinstance(result, msgspec.Struct):
        values = [getattr(result, f) for f in result.__struct_fields__]
    elif isinstance(result, dict):
        values = list(result.values())
    else:
        return None
    for value in values:
        if isinstance(value, ImageRef):
            return value
        if isinstance(value, dict) and "shm" in value and "shape" in value:
            try:
                return msgspec.convert(value, ImageRef)
            except msgspec.ValidationError:
                continue
    return None


def release(server: WorkerServer, ref: ImageRef) -> None:
    """Unlink an image segment the workflow consumed (nobody else will take it)."""
    from workers.runtime import ops_models

    ops_models.runtime(server).images.forget(ref.shm)  # inference's ledger; others tolerate a missing segment
    try:
        seg = shared_memory.SharedMemory(name=ref.shm)
    except FileNotFoundError:
        return
    seg.close()
    seg.unlink()  # also drops the tracker registration the attach made (Python 3.11)


def params_digest(params: Any) -> str:
    return hashlib.sha256(msgspec.json.encode(params, order="sorted")).hexdigest()


@dataclass
class PreparedWorkflow:
    steps: list[tuple[WorkflowStep, Resolved]]


def prepare(table: OpTable, steps: list[WorkflowStep], where: str = "workflow") -> PreparedWorkflow:
    """Resolve every step and check its params before anything runs (a bad step 3 costs no step 1)."""
    if not 1 <= len(steps) <= MAX_WORKFLOW_STEPS:
        raise ValueError(f"{where}: a workflow needs 1..{MAX_WORKFLOW_STEPS} steps, got {len(steps)}")
    out = []
    for i, step in enumerate(steps):
        at = f"{where} step {i} ({step.op})"
        resolved = table.resolve(step.op, step.image_param, where=at)
        params = with_image(resolved, step.params, _PLACEHOLDER) if i else step.params
        convert(resolved.spec, params, at)
        out.append((step, resolved))
    return PreparedWorkflow(out)


def run(server: WorkerServer, ctx: RequestContext, wf: PreparedWorkflow, output: str) -> WorkflowResult:
    """Run the steps in order on this thread; the last image is kept (``shm``) or released."""
    infos: list[StepInfo] = []
    held: list[ImageRef] = []  # segments the workflow produced and has not released or handed out
    current: Union[ImageRef, None] = None
    t_start = time.perf_counter()
    steps_s = 0.0
    try:
        for i, (step, resolved) in enumerate(wf.steps):
            ctx.check()
            at = f"workflow step {i} ({step.op})"
            params = with_image(resolved, step.params, current) if current is not None and i else step.params
            typed = convert(resolved.spec, params, at)
            t0 = time.perf_counter()
            try:
                result = resolved.fn(ctx, typed)
            except (Cancelled, DeadlineExceeded):
                raise
            except OperationError as exc:
                raise OperationError(exc.code, f"{at}: {exc.message}", exc.retryable, exc.retry_after_s) from exc
            except (ValueError, KeyError) as exc:
                code = getattr(exc, "code", None)  # an ImageError names its own code
                message = f"{at}: {exc.args[0] if exc.args else exc}"
                if isinstance(code, str):
                    raise OperationError(code, message) from exc
                raise ValueError(message) from exc
            seconds = time.perf_counter() - t0
            steps_s += seconds
            image = find_image(result)
            took = current is not None and params is not step.params
            if image is not None:  # a new image replaces the previous one, which is released now
                for ref in held:
                    release(server, ref)
                held, current = [image], image
            built = codec.to_builtins(result)
            reported = built.get("seconds") if isinstance(built, dict) else None
            infos.append(StepInfo(step.op, seconds, reported if isinstance(reported, (int, float)) else None,
                                  took, built))
        ctx.check()
        final = current
        if output == "digest" and held:
            for ref in held:
                release(server, ref)
            held = []
            final_ref = None
        else:
            final_ref = held[0] if held else None
            held = []  # handed to the host, who takes it
    finally:
        for ref in held:
            release(server, ref)
    total = time.perf_counter() - t_start
    return WorkflowResult(infos, total, steps_s, max(0.0, total - steps_s), final_ref,
                          list(final.sha256) if final is not None else [])
