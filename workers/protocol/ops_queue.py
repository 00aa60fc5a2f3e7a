"""The bounded priority job queue, workflows and batches (issue 6).

Jobs (``job.run``: one operation; ``workflow.run``: a chain of operations whose image output
feeds the next step; the items of a ``batch.run``) wait in one bounded queue inside the worker,
ordered by the request frame's priority (0 first, arrival order within a priority), and run on
``concurrency`` threads. Admission control answers a job that finds the queue full with
QUEUE_FULL and a ``retry_after_s`` estimated from the backlog and the measured service times:
nothing admitted is dropped, nothing is truncated. Queued and running jobs are cancellable with
``cancel``; a job whose deadline passes while queued is answered DEADLINE_EXCEEDED then.
"""

from __future__ import annotations

from typing import Any, Literal, Union

import msgspec

from workers.protocol.images import ImageRef
from workers.protocol.opspec import OperationSpec

MAX_CAPACITY = 5000  # the spec's upper bound on queue capacity (2.4: 100 to 5,000)
MAX_CONCURRENCY = 16
MAX_BATCH_ITEMS = 10000
MAX_WORKFLOW_STEPS = 16
ImagesOut = Literal["shm", "digest"]


class QueueConfigureParams(msgspec.Struct, forbid_unknown_fields=True):
    capacity: int = 1000  # jobs that may wait (running ones excluded); 1..5000
    concurrency: int = 1  # jobs running at once
    max_concurrency: Union[int, None] = None  # > concurrency: raise concurrency by one while the backlog is deep
    scale_up_depth: Union[int, None] = None  # the backlog that raises it (default capacity // 4)
    scale_down_idle_s: float = 2.0  # an added thread retires after this long without work
    max_batches: int = 16  # batches admitted at once
    batch_window: Union[int, None] = None  # items of one batch queued at once (capacity it reserves); min(2, capacity)


class QueueStatsParams(msgspec.Struct, forbid_unknown_fields=True):
    reset_high_water: bool = False  # start a new high-water mark after reading this one


class QueueStats(msgspec.Struct):
    capacity: int
    concurrency: int  # now (autoscaling may have raised it)
    base_concurrency: int
    max_concurrency: int
    depth: int  # jobs waiting
    reserved: int  # capacity held by admitted batches (their windows)
    running: int
    high_water: int  # most capacity held at once (waiting jobs + batch reservations; since configure or reset)
    admitted: int
    rejected: int  # answered QUEUE_FULL
    completed: int  # ran and answered ok
    failed: int  # ran and answered an error (cancelled and expired not included)
    cancelled: int  # queued or running jobs cancelled by the host
    expired: int  # deadline passed while queued
    batches_active: int
    batch_items_done: int
    service_time_s: float  # mean run time of the last 50 jobs (0 before any)
    service_samples: int
    retry_after_s: float  # what a rejection would say now
    scale_events: int
    depth_by_priority: list[int]  # waiting jobs per priority 0..9


class QueueTraceParams(msgspec.Struct, forbid_unknown_fields=True):
    after: int = -1  # entries with an index above this one
    limit: int = 5000


class TraceEntry(msgspec.Struct, array_like=True):
    """One job's life in the queue, on the worker's monotonic clock (seconds since configure)."""

    index: int
    seq: int  # admission order
    key: str  # request id, or "<batch request id>/<item index>"
    op: str
    priority: int
    enqueued_s: float
    started_s: Union[float, None]  # None: never ran (cancelled or expired while queued)
    ended_s: float
    slot: int  # -1 when it never ran
    outcome: str  # ok | error | cancelled | expired | shutdown


class QueueTraceResult(msgspec.Struct):
    entries: list[TraceEntry]
    last: int  # index of the newest entry (-1: none yet)
    dropped: int  # entries that fell out of the bounded trace before anyone read them


class JobParams(msgspec.Struct, forbid_unknown_fields=True):
    op: str  # an operation with an in-process implementation (inference.run, echo, ...)
    params: dict[str, Any] = {}


class JobInfo(msgspec.Struct):
    seq: int  # admission order
    depth_at_admission: int  # jobs waiting when it was admitted (any priority)
    running_at_admission: int  # jobs in service when it was admitted
    queue_s: float
    run_s: float
    enqueued_s: float  # worker clock, seconds since the queue was configured
    started_s: float
    slot: int


class JobResult(msgspec.Struct):
    op: str
    result: Any
    job: JobInfo


class WorkflowStep(msgspec.Struct, forbid_unknown_fields=True):
    op: str
    params: dict[str, Any] = {}
    # Which parameter receives the previous step's image; default: the first parameter typed as an
    # image input (ImageInput or ImageRef). A parameter the step already sets is left alone.
    image_param: Union[str, None] = None


class WorkflowParams(msgspec.Struct, forbid_unknown_fields=True):
    steps: list[WorkflowStep]
    output: ImagesOut = "shm"  # the last image: a segment to take, or only its digests


class StepInfo(msgspec.Struct):
    op: str
    seconds: float  # the step's call, measured around it
    reported_s: Union[float, None]  # what the step itself reports (its result's ``seconds``), if any
    image_in: bool  # it received the previous step's image
    result: Any  # the step's result (an image it produced appears as its ref)


class WorkflowResult(msgspec.Struct):
    steps: list[StepInfo]
    total_s: float  # first step's start to the last step's end, handoffs included
    steps_s: float  # sum of the steps' own times
    overhead_s: float  # total_s - steps_s: coordination (parameter checks, image handoff, clean-up)
    image: Union[ImageRef, None]  # the last image's ref (output "shm"), else None
    sha256: list[str]  # digests of the last image
    job: Union[JobInfo, None] = None


class BatchItem(msgspec.Struct, forbid_unknown_fields=True):
    op: Union[str, None] = None  # one operation ...
    params: dict[str, Any] = {}
    steps: Union[list[WorkflowStep], None] = None  # ... or a workflow
    key: str = ""  # the host's own id for the item, echoed


class BatchParams(msgspec.Struct, forbid_unknown_fields=True):
    items: list[BatchItem]
    seed_base: Union[int, None] = None  # items without a seed get seed_base + index
    images: ImagesOut = "digest"  # items' images: digests only (segments released), or kept for the host
    window: Union[int, None] = None  # items queued at once (default: the queue's batch_window)
    include_results: bool = False  # each item's full result in the answer
    indices: Union[list[int], None] = None  # each item's index in the whole batch (resumed: a subset); default 0..N-1


class BatchItemResult(msgspec.Struct):
    index: int  # in the host's whole batch (``indices``, else the position)
    key: str
    op: str  # the operation, or "workflow"
    status: str  # ok | error | cancelled | not_run
    code: str = ""
    message: str = ""
    seed: Union[int, None] = None
    model: Union[str, None] = None
    params_sha256: str = ""  # over the item's params as run (seed included), canonical JSON
    sha256: list[str] = []  # output image digests
    queue_s: float = 0.0
    run_s: float = 0.0
    result: Any = None


class BatchResult(msgspec.Struct):
    total: int
    ok: int
    failed: int
    cancelled: int
    not_run: int
    complete: bool  # every item ran (ok or error)
    stopped: str  # "" | deadline | cancelled | shutdown
    items: list[BatchItemResult]  # in index order, every item
    pending: list[int]  # indices to resubmit (cancelled or not run)
    prepare_s: float  # validating the items, assigning seeds, checking input images
    seconds: float  # admission to answer
    aggregate_sha256: str  # over (index, status, sha256) of every item, in order


SPECS: tuple[OperationSpec, ...] = (
    OperationSpec("queue.configure", QueueConfigureParams, QueueStats, idempotent=True, control=True,
                  description="Set the job queue's capacity (1..5000), concurrency and autoscaling; refused while "
                              "more jobs wait than the new capacity allows."),
    OperationSpec("queue.stats", QueueStatsParams, QueueStats, idempotent=True, control=True,
                  description="Depth, high-water mark, admitted/rejected/completed counts, service time, the "
                              "retry-after a rejection would carry now."),
    OperationSpec("queue.trace", QueueTraceParams, QueueTraceResult, idempotent=True, control=True,
                  description="Each finished job's enqueue, start and end times, priority and slot (bounded)."),
    OperationSpec("job.run", JobParams, JobResult, idempotent=True,
                  description="Run one operation as a job of the bounded priority queue; QUEUE_FULL with "
                              "retry_after_s when the queue is full."),
    OperationSpec("workflow.run", WorkflowParams, WorkflowResult, idempotent=True,
                  description="Run a chain of operations as one job; each step's image goes to the next in "
                              "the worker; per-step times and the coordination overhead."),
    OperationSpec("batch.run", BatchParams, BatchResult, idempotent=True,
                  description="Run N items (operations or workflows) through the queue at the request's priority; "
                              "a progress event per item; at the deadline or on cancel, answers with the "
                              "completed items and the ones to resubmit."),
)
