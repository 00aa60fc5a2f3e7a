"""1.5 communication failures between host and worker: a broken stdin/stdout pipe with requests in
flight, and corrupted protocol messages in either direction.

Pipe break: a supervised pool of one worker (workers/host/pool.py) with a request backlog queued
behind a running one; the host severs both pipes (``WorkerClient.break_pipe``). The pool notices
the loss, restarts the worker and retries the idempotent requests there. Each request carries its
own payload, so an answer that belongs to another request is caught. The in-flight requests are
protocol work items (echo behind a sleep), not inferences: the replacement worker starts empty,
and what is tested here is the link, not model reloading (1.5's cascade case covers models).

JSON corruption: damaged frames written onto the worker's stdin (``write_raw``) and onto its
stdout (``fault.corrupt_output``). "Acted on" is read from counters, not guessed: the worker's
``handled`` and ``protocol_errors`` (status) for the inbound direction, the host client's
``protocol_errors`` and its pending requests for the outbound one. Resynchronisation is the
framing's own (newline-delimited frames: a bad line is answered and dropped, the next line parses).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from hybrid_assets.runners import RunnerContext
from hybrid_assets.runners.model_corruption import with_fault_flag
from workers.host.client import WorkerClient
from workers.host.errors import WorkerError
from workers.host.pool import PoolConfig, PoolEvent, WorkerPool

LINK_METRICS = frozenset({
    "pipe_break_detection_s", "pipe_reestablishment_s", "request_lost_count",
    "corrupted_message_accepted_detected", "protocol_fallback_ok",
})
BACKLOG_SLEEP_S = 0.5  # the request running when the pipe breaks; the others queue behind it
ANSWER_TIMEOUT_S = 60.0

# Damage on the way in (host -> worker): each is one line the worker must refuse, never execute.
# Ids 990000+ are never used by the host, so an answer to one would be the worker acting on it.
INBOUND_DAMAGE: tuple[bytes, ...] = (
    b'{"type":"request","id":990001,"op":"echo","params":{"payload":"tru\n',  # truncated mid-string
    b'\xff\xfe\x00{"type":"request","id":990002,"op":"echo"}\n',  # bytes that are not UTF-8 JSON
    b'{"type":"request","id":990003,"op":"echo","params":"not-an-object"}\n',  # wrong type
    b'{"id":990004,"op":"echo","params":{}}\n',  # the message tag is missing
    b'{"type":"request","id":990005,"op":"echo","params":{"payload":"x"},}\n',  # trailing comma
    b'{"type":"request","id":990006,"op":"echo","params":{"payload":"x"}}{"type":"req\n',  # torn write
    b'[1,2,3]\n',  # JSON, but not a message
)
# Damage on the way out (worker -> host): each chunk ends its line, so it damages nobody else's frame.
OUTBOUND_DAMAGE: tuple[str, ...] = (
    '{"type":"response","id":\n',
    '\u0000garbage\n',
    '{"type":"response","id":"x","ok":"yes"}\n',
    '{"type":"event","event":7}\n',
    '{"type":"response","id":1,"ok":true,"result":{}}{"type":"resp\n',
    '{"type":"response"\n',
)


def communication_failure_recovery(ctx: RunnerContext) -> None:
    p = ctx.params
    failure = str(p.get("failure_type", "stdin_stdout_pipe_break"))
    failures = int(p.get("failures", 5))
    if failure == "stdin_stdout_pipe_break":
        _pipe_breaks(ctx, failures, int(p.get("in_flight_requests", 10)))
    elif failure == "json_serialization_corruption":
        _json_corruption(ctx, failures, int(p.get("corrupted_messages_per_failure", 5)))
    else:
        raise ValueError(f"unknown failure_type {failure!r}: stdin_stdout_pipe_break or json_serialization_corruption")


# ---- pipe break -------------------------------------------------------------------------------
def _pipe_breaks(ctx: RunnerContext, failures: int, in_flight: int) -> None:
    rec = ctx.recorder
    events: list[PoolEvent] = []
    # Restart limits generous enough for the case's own breaks: a capped restart would be a FAIL
    # of the case's making, not the runtime's.
    config = PoolConfig(size=1, max_restarts=failures + 2, restart_window_s=600.0, backoff_initial_s=0.05,
                        retries_for_idempotent=2)
    with WorkerPool(with_fault_flag(ctx).worker_argv, config, name=f"{ctx.case_id}-pool") as pool:
        pool.subscribe(events.append)
        if not pool.wait_ready(120):
            raise RuntimeError(f"worker did not start: {pool.describe()}")
        for k in range(failures):
            pool.request("ping", {}, timeout=30)  # ready and idle
            client = pool.clients[0]
            answers: dict[int, list[Any]] = {i: [] for i in range(in_flight)}
            lock = threading.Lock()

            def send(i: int, k: int = k, answers: dict[int, list[Any]] = answers, lock: threading.Lock = lock) -> None:
                try:
                    out: Any = pool.request("echo", {"payload": f"break{k}-req{i}"}, timeout=ANSWER_TIMEOUT_S)
                except WorkerError as exc:
                    out = exc
                with lock:
                    answers[i].append(out)

            client.submit("fault.sleep", {"seconds": BACKLOG_SLEEP_S, "steps": 2})
            threads = [threading.Thread(target=send, args=(i,), daemon=True) for i in range(in_flight)]
            for t in threads:
                t.start()
            _wait_in_flight(client, in_flight + 1, timeout=10.0)
            seen = len(events)
            t_break = time.monotonic()
            client.break_pipe()
            for t in threads:
                t.join(ANSWER_TIMEOUT_S + 10)
            lost = [e for e in events[seen:] if e.kind == "lost"]
            ready = [e for e in events[seen:] if e.kind == "ready"]
            if lost:
                rec.record("pipe_break_detection_s", lost[0].at - t_break, "s", failure=k)
            else:
                ctx.log.error("break %d: the pool never reported the worker lost", k)
            # Re-established: the first request answered over the new link (a fresh probe, so the
            # figure does not depend on the backlog's own duration).
            try:
                pool.request("ping", {"payload": f"after-break{k}"}, timeout=30)
                rec.record("pipe_reestablishment_s", time.monotonic() - t_break, "s", failure=k)
            except WorkerError as exc:
                ctx.log.error("break %d: no answer over a re-established link: %s", k, exc)
            bad = 0
            for i, outs in answers.items():
                want = {"payload": f"break{k}-req{i}"}
                if len(outs) != 1 or outs[0] != want:
                    bad += 1
                    ctx.log.warning("break %d request %d: answers %r", k, i, outs)
            rec.record("request_lost_count", bad, "count", failure=k, in_flight=in_flight)
            rec.note(f"break_{k}", {"restarted_ready_after_s": round(ready[0].at - t_break, 3) if ready else None,
                                    "requests": in_flight, "not_answered_exactly_once": bad})


def _wait_in_flight(client: WorkerClient, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while client.in_flight < n and time.monotonic() < deadline:
        time.sleep(0.005)


# ---- JSON corruption --------------------------------------------------------------------------
def _json_corruption(ctx: RunnerContext, failures: int, per_failure: int) -> None:
    rec = ctx.recorder
    argv = with_fault_flag(ctx).worker_argv
    with WorkerClient(argv, name=f"{ctx.case_id}-worker").start() as client:
        for k in range(failures):
            inbound = [INBOUND_DAMAGE[(k * per_failure + j) % len(INBOUND_DAMAGE)] for j in range(per_failure)]
            outbound = [OUTBOUND_DAMAGE[(k * per_failure + j) % len(OUTBOUND_DAMAGE)] for j in range(per_failure)]
            # Inbound: the worker must refuse each damaged line, and run nothing from it.
            before = client.request("status", timeout=30)
            for line in inbound:
                client.write_raw(line)
            probe = client.request("echo", {"payload": f"resync-in-{k}"}, timeout=30)
            after = settled_status(client, before["handled"] + 1)
            refused = after["protocol_errors"] - before["protocol_errors"]
            # handled counts the work requests it answered: the echo probe (status is a control op).
            executed = after["handled"] - before["handled"] - 1
            for j in range(per_failure):
                # A line counts as acted on unless the worker refused it: refusals are counted per
                # line, so when fewer lines were refused than sent, the shortfall is charged to the
                # last lines (the counters cannot say which).
                acted = int(j >= refused) or int(j < executed)
                rec.record("corrupted_message_accepted_detected", acted, "count", direction="host_to_worker",
                           failure=k)
            # Outbound: the host must drop each damaged line, and resolve no request from it.
            errors_before = client.protocol_errors
            pending = client.submit("echo", {"payload": f"pending-{k}"})  # must get its own answer
            client.request("fault.corrupt_output", {"chunks": outbound}, timeout=30)
            pending.wait(30)
            dropped = client.protocol_errors - errors_before
            own = pending.done and _result_or_none(pending) == {"payload": f"pending-{k}"}
            for j in range(per_failure):
                acted = int(j >= dropped) or int(not own)
                rec.record("corrupted_message_accepted_detected", acted, "count", direction="worker_to_host",
                           failure=k)
            # Fallback and resync: the next request after the episode succeeds with its own answer.
            try:
                ok = client.request("echo", {"payload": f"resync-{k}"}, timeout=30) == {"payload": f"resync-{k}"}
            except WorkerError as exc:
                ctx.log.error("episode %d: no resync: %s", k, exc)
                ok = False
            ok = ok and probe == {"payload": f"resync-in-{k}"} and client.alive
            rec.record("protocol_fallback_ok", int(ok), "ratio", failure=k)
            rec.note(f"episode_{k}", {"inbound_sent": len(inbound), "inbound_refused": refused,
                                      "inbound_executed": executed, "outbound_sent": len(outbound),
                                      "outbound_dropped": dropped})


def settled_status(client: WorkerClient, handled_at_least: int, timeout: float = 5.0) -> dict[str, Any]:
    """The worker's status once its ``handled`` counter has caught up with the answers already read
    (it counts a request after answering it, so a status right after an answer can be one behind)."""
    deadline = time.monotonic() + timeout
    while True:
        status = client.request("status", timeout=30)
        if status["handled"] >= handled_at_least or time.monotonic() > deadline:
            return status
        time.sleep(0.005)


def _result_or_none(pending: Any) -> Any:
    try:
        return pending.result()
    except WorkerError:
        return None


RUNNERS = {
    "cross_domain.communication_failure_recovery": (LINK_METRICS, communication_failure_recovery),
}
