"""Typed messages of worker protocol v1.

One JSON object per line in each direction. Every message carries a ``type`` tag.

Host -> worker: ``request``.
Worker -> host: ``hello`` (once, first), ``response`` (one per request id), ``event``
(progress, heartbeat, log).

The JSON Schema in ``docs/protocol/schema.json`` is generated from these classes
(``python -m workers.protocol.schema --write``); a test fails when it is stale, so a host
in another language can rely on it.
"""

from __future__ import annotations

from typing import Any, Literal, Union

import msgspec

PROTOCOL_VERSION = 1

# Frames above this size are refused with FRAME_TOO_LARGE (the rest of the line is
# discarded, the stream stays in sync). Large payloads (images) travel through shared
# memory, never through the JSON channel.
DEFAULT_MAX_FRAME_BYTES = 1 << 20

RequestId = Union[int, str]


class ErrorCode:
    """Error codes carried in ``ErrorInfo.code``. Stable strings: hosts match on them."""

    PARSE_ERROR = "PARSE_ERROR"  # the line is not JSON
    FRAME_TOO_LARGE = "FRAME_TOO_LARGE"  # the line exceeds the frame limit
    INVALID_MESSAGE = "INVALID_MESSAGE"  # JSON, but not a valid message (missing field, wrong type)
    UNKNOWN_OPERATION = "UNKNOWN_OPERATION"
    INVALID_PARAMS = "INVALID_PARAMS"
    DUPLICATE_ID = "DUPLICATE_ID"  # an id that is still in flight
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    CANCELLED = "CANCELLED"
    SHUTTING_DOWN = "SHUTTING_DOWN"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    DEVICE_LOST = "DEVICE_LOST"  # the request's device went away (removed, disconnected, failed) under it
    DEVICE_UNAVAILABLE = "DEVICE_UNAVAILABLE"  # the device is draining or offline: send the work elsewhere
    MODEL_NOT_LOADED = "MODEL_NOT_LOADED"  # the request names a model that is not resident: load it first
    MODEL_CORRUPT = "MODEL_CORRUPT"  # weights failed verification and could not be repaired; nothing served
    CACHE_FULL = "CACHE_FULL"  # the model does not fit the device cache even after eviction
    OUT_OF_MEMORY = "OUT_OF_MEMORY"  # the device ran out of memory and every fallback did too
    NAN_OUTPUT = "NAN_OUTPUT"  # the generation produced NaN (a garbage image is never returned)
    QUEUE_FULL = "QUEUE_FULL"  # admission control refused the job: retry after ``retry_after_s``
    SESSION_NOT_FOUND = "SESSION_NOT_FOUND"  # no session with that id (never created, closed, or lost)
    SESSION_CORRUPT = "SESSION_CORRUPT"  # the session's state failed validation; nothing ran on it
    IMAGE_INVALID = "IMAGE_INVALID"  # the image cannot be decoded (corrupt, truncated, zero-sized)
    IMAGE_TOO_LARGE = "IMAGE_TOO_LARGE"  # over the worker's pixel limit; refused before decoding
    UNSUPPORTED_FORMAT = "UNSUPPORTED_FORMAT"  # an image format the worker does not read or write
    POLICY_INVALID = "POLICY_INVALID"  # a safety policy document with an unknown rule or a bad value
    POSTPROCESS_FAILED = "POSTPROCESS_FAILED"  # a postprocessing stage failed and no recovery path served it
    # Raised by the host side, never sent by a worker:
    WORKER_LOST = "WORKER_LOST"  # the worker died or hung with the request in flight
    TIMEOUT = "TIMEOUT"  # no response within the host's timeout
    WORKER_START_FAILED = "WORKER_START_FAILED"
    PROTOCOL_MISMATCH = "PROTOCOL_MISMATCH"
    NO_WORKER_AVAILABLE = "NO_WORKER_AVAILABLE"

    ALL = (
        PARSE_ERROR, FRAME_TOO_LARGE, INVALID_MESSAGE, UNKNOWN_OPERATION, INVALID_PARAMS,
        DUPLICATE_ID, DEADLINE_EXCEEDED, CANCELLED, SHUTTING_DOWN, INTERNAL_ERROR, DEVICE_LOST, DEVICE_UNAVAILABLE,
        MODEL_NOT_LOADED, MODEL_CORRUPT, CACHE_FULL, OUT_OF_MEMORY, NAN_OUTPUT,
        QUEUE_FULL, SESSION_NOT_FOUND, SESSION_CORRUPT, IMAGE_INVALID, IMAGE_TOO_LARGE, UNSUPPORTED_FORMAT,
        POLICY_INVALID, POSTPROCESS_FAILED,
        WORKER_LOST, TIMEOUT, WORKER_START_FAILED, PROTOCOL_MISMATCH, NO_WORKER_AVAILABLE,
    )


class ErrorInfo(msgspec.Struct, forbid_unknown_fields=False):
    """Why a request failed. ``retryable`` says whether the same request may succeed later."""

    code: str
    message: str
    retryable: bool = False
    # QUEUE_FULL (and any refusal that knows when capacity returns): seconds to wait before retrying.
    retry_after_s: Union[float, None] = None


class OperationInfo(msgspec.Struct):
    """An operation a worker serves, as announced in its handshake."""

    name: str
    idempotent: bool  # the host may retry it on another worker after a loss
    control: bool = False  # served on the reader thread, ahead of the work queue
    description: str = ""


class Capabilities(msgspec.Struct):
    operations: list[OperationInfo]
    max_frame_bytes: int
    heartbeat_interval_ms: float
    fault_injection: bool = False
    runtime: dict[str, str] = {}


class Hello(msgspec.Struct, tag="hello", tag_field="type"):
    """The handshake: the worker's first line on stdout."""

    protocol: int
    worker_id: str
    pid: int
    capabilities: Capabilities


class Request(msgspec.Struct, tag="request", tag_field="type"):
    """A unit of work.

    ``deadline_ms`` is a budget relative to the worker's receipt of the frame (clocks of two
    processes are not comparable; a relative budget is). ``priority``: 0 is the most urgent,
    9 the least; equal priorities run in arrival order.
    """

    id: RequestId
    op: str
    params: dict[str, Any] = {}
    deadline_ms: Union[float, None] = None
    priority: int = 5


class Response(msgspec.Struct, tag="response", tag_field="type", omit_defaults=True):
    """The one answer to a request: ``ok`` with ``result``, or not ``ok`` with ``error``.

    ``id`` is null only when the offending frame carried no readable id.
    """

    id: Union[RequestId, None]
    ok: bool
    result: Union[dict[str, Any], None] = None
    error: Union[ErrorInfo, None] = None


EventKind = Literal["progress", "heartbeat", "log", "status"]


class Event(msgspec.Struct, tag="event", tag_field="type", omit_defaults=True):
    """Something the worker reports outside a response.

    progress: ``id`` names the request; ``data`` holds ``step``, ``total`` and an optional
    ``message``. heartbeat: ``data`` holds ``seq``, ``uptime_ms``, ``busy`` and ``queued``.
    log: ``data`` holds ``level`` and ``message``. status: a change of the runtime's state the
    host must know, e.g. ``{"domain": "memory", "device": "cpu", "previous": "NORMAL",
    "level": "WARNING", "utilisation": 0.76}``.
    """

    event: EventKind
    data: dict[str, Any] = {}
    id: Union[RequestId, None] = None


HostMessage = Request
WorkerMessage = Union[Hello, Response, Event]


# ---- parameters and results of the built-in operations -------------------------------


class PingParams(msgspec.Struct, forbid_unknown_fields=True):
    payload: str = ""


class PingResult(msgspec.Struct):
    payload: str


class DiscoverParams(msgspec.Struct, forbid_unknown_fields=True):
    probe_dtypes: bool = True  # run a tiny kernel per dtype instead of trusting tables
    use_cache: bool = False  # reuse static capabilities profiled earlier; memory and state are always re-read


class DeviceInfo(msgspec.Struct, omit_defaults=True):
    """A device and what it can do. Sizes in bytes."""

    id: str  # "cpu:0", "cuda:0", ...
    kind: Literal["cpu", "cuda", "simulated"]
    name: str
    memory_total: int
    memory_free: int
    dtypes: list[str]
    source: str  # how it was found: "os", "nvml", "torch", "nvml+torch"
    assessment_ms: float  # time spent profiling this device
    compute_capability: Union[str, None] = None  # "8.0" on CUDA; CPUs have none
    cores: Union[int, None] = None
    isa: list[str] = []
    driver_version: Union[str, None] = None
    uuid: Union[str, None] = None
    backing: Union[str, None] = None  # simulated devices: the real device that runs their work
    state: str = "online"  # simulated devices: online, draining, driver_error
    cached: bool = False  # static capabilities came from an earlier profile


class DiscoverResult(msgspec.Struct):
    devices: list[DeviceInfo]
    discovery_ms: float  # measured inside the worker, monotonic clock
    torch_version: Union[str, None]
    nvml: str  # "ok" or why NVML was not used
    rss_before_bytes: int
    rss_after_bytes: int


class ShutdownParams(msgspec.Struct, forbid_unknown_fields=True):
    reason: str = ""


class CancelParams(msgspec.Struct, forbid_unknown_fields=True):
    target: RequestId


class StatusResult(msgspec.Struct):
    worker_id: str
    pid: int
    uptime_ms: float
    queued: int
    running: Union[RequestId, None]
    handled: int
    protocol_errors: int
