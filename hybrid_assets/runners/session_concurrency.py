"""Spec 4.4 concurrent sessions: 50 sessions working on one shared model, and the cost of isolating them.

- concurrent_sessions: one worker behind a SessionHost, the case's model loaded once (``model``:
  tiny-random is the smoke base pipeline). ``sessions`` sessions are created with that model (each pins
  the resident model, never loads its own) and each then works back to back for ``hold_s``: a generation
  with the session's model (``session.generate``, 64x64, ``steps`` steps (1), on the worker's inference
  slot; requests time out after ``request_timeout_s``, 600: fifty generations queue for one slot) then a
  state update, again and again. Every second a sampler asks the worker for its sessions
  (``session.list``) and its device cache (``model.list``): active_sessions_count is the number of the
  runner's sessions open on the worker whose requests have all succeeded so far;
  shared_model_copies_count is the number of copies of the model's weights in use: the larger of the
  distinct in-memory model objects the open sessions used (the worker records the identity of the object
  each session pinned and generated with) and the cache entries holding the model. session_failed is
  per session, 1 when any of its requests failed; session_request_latency_s per request.
- session_isolation: the same requests run for ``sessions`` users in two ways, paired and interleaved
  (per user, the isolated and the shared request set back to back, the order alternating): isolated,
  each user in a session of its own, and shared, every user in one single session (their keys side by
  side in one state: no isolation). Per user a request set is a state write (a canary token and a
  payload), a generation with the model (``steps`` 1) and a read-back. One sample per pair (all users):
  (isolated - shared) / shared time. The same pairing without the generation (state operations
  only) is recorded as isolation_overhead_state_only_ratio, to show the bookkeeping cost alone.
  cross_session_leak: per isolated session and pair, 1 when its read-back lacks its own canary or holds
  any other session's.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from typing import Any

from hybrid_assets.runners import RunnerContext
from hybrid_assets.runners.session_support import model_prepare, session_host
from workers.host.errors import WorkerError
from workers.host.sessions import SessionHost

CONCURRENT_METRICS = frozenset({
    "active_sessions_count", "session_failed", "shared_model_copies_count", "session_request_latency_s",
})
ISOLATION_METRICS = frozenset({"isolation_overhead_ratio", "cross_session_leak",
                               "isolation_overhead_state_only_ratio"})


def concurrent_sessions(ctx: RunnerContext) -> None:
    p = ctx.params
    n, hold = int(p["sessions"]), float(p["hold_s"])
    steps = int(p.get("steps", 1))
    # 50 generations queue for one inference slot: on a shared CPU one answer can take minutes.
    timeout = float(p.get("request_timeout_s", 600.0))
    rec = ctx.recorder
    model, prepare = model_prepare(ctx, str(p.get("model", "tiny-random")))
    rec.note("concurrent_setup", {"model": model, "steps": steps, "size": 64, "request_timeout_s": timeout})
    with session_host(ctx, prepare=prepare) as host:
        ids = [host.create({"user": f"user-{i}", "requests": 0}, model=model)["id"] for i in range(n)]
        failed: dict[str, str] = {}
        stop = threading.Event()
        lock = threading.Lock()

        def work(i: int, sid: str) -> None:
            k = 0
            while not stop.is_set():
                op = "generate" if k % 2 == 0 else "update"
                t0 = time.perf_counter()
                try:
                    if op == "generate":
                        host.generate(sid, steps=steps, seed=i * 1000 + k, prompt=f"user {i}", timeout=timeout)
                    else:
                        host.update(sid, incr={"requests": 1}, timeout=timeout)
                except WorkerError as exc:
                    with lock:
                        failed.setdefault(sid, f"{op}: {exc.code}: {exc.message[:120]}")
                    return
                rec.record("session_request_latency_s", time.perf_counter() - t0, "s", op=op, session=i)
                k += 1

        threads = [threading.Thread(target=work, args=(i, sid), daemon=True) for i, sid in enumerate(ids)]
        for t in threads:
            t.start()
        t_end = time.monotonic() + hold
        while True:
            _sample(host, ids, failed, lock, model, rec)
            if time.monotonic() >= t_end:
                break
            time.sleep(max(0.0, min(1.0, t_end - time.monotonic())))
        stop.set()
        for t in threads:
            t.join(timeout + 5.0)
        for i, sid in enumerate(ids):
            why = failed.get(sid, "")
            rec.record("session_failed", 1.0 if why else 0.0, "count", session=i, error=why)
        for sid in ids:
            try:
                host.close_session(sid)
            except WorkerError as exc:
                ctx.log.warning("closing %s failed: %s", sid, exc)
        rec.note("worker_after_close", host.list(0)["totals"])


def _sample(host: SessionHost, ids: list[str], failed: dict[str, str], lock: threading.Lock, model: str,
            rec: Any) -> None:
    listing = host.list(0)
    client = host.client(0)
    cache = client.request("model.list", {}, timeout=10.0)
    open_ids = {s["id"] for s in listing["sessions"]}
    with lock:
        active = sum(1 for sid in ids if sid in open_ids and sid not in failed)
    entries = sum(1 for m in cache["resident"] if m["name"] == model)
    instances = listing["totals"]["model_instances"].get(model, 0)
    rec.record("active_sessions_count", float(active), "count", open_on_worker=len(open_ids))
    rec.record("shared_model_copies_count", float(max(entries, instances)), "count", cache_entries=entries,
               distinct_objects=instances, sessions_using=listing["totals"]["model_refs"].get(model, 0),
               rss_mib=round(cache["rss_bytes"] / (1 << 20), 1))


# ---- isolation --------------------------------------------------------------------------------------
def session_isolation(ctx: RunnerContext) -> None:
    p = ctx.params
    n, pairs = int(p["sessions"]), int(p["pairs"])
    steps = int(p.get("steps", 1))
    rec = ctx.recorder
    model, prepare = model_prepare(ctx, str(p.get("model", "tiny-random")))
    with session_host(ctx, prepare=prepare) as host:
        users = [host.create({"user": f"user-{u}"}, model=model)["id"] for u in range(n)]
        shared = host.create({"users": n}, model=model)["id"]
        warm = {u: "warm-up" for u in range(n)}
        _pair(host, users, shared, steps, warm, True, 0)  # first generations and caches, not sampled
        rec.note("isolation_setup", {"model": model, "steps": steps, "users": n, "warm_up": "one pair, not sampled"})
        for j in range(pairs):
            for generate, metric in ((True, "isolation_overhead_ratio"),
                                     (False, "isolation_overhead_state_only_ratio")):
                tokens = {u: secrets.token_hex(8) for u in range(n)}
                iso, shr, reads = _pair(host, users, shared, steps, tokens, generate, j)
                rec.record(metric, (iso - shr) / shr, "ratio", pair=j, isolated_s=round(iso, 5),
                           shared_s=round(shr, 5))
                if generate:
                    for u, state in enumerate(reads):
                        leak = _leak(u, state, tokens)
                        rec.record("cross_session_leak", 1.0 if leak else 0.0, "count", pair=j, session=u,
                                   detail=leak)
        guessed = f"s-{secrets.token_hex(16)}"
        try:
            host.client(0).request("session.get", {"id": guessed}, timeout=10.0)
            rec.note("guessed_id", f"a random id {guessed} named a session")
        except WorkerError as exc:
            rec.note("guessed_id", f"a random id is refused: {exc.code}")


def _pair(host: SessionHost, users: list[str], shared: str, steps: int, tokens: dict[int, str], generate: bool,
          j: int) -> tuple[float, float, list[dict[str, Any]]]:
    """Each user's request set isolated and shared, back to back (the order alternating per user and pair,
    so drift in the machine's speed falls on both); (isolated seconds, shared seconds, isolated read-backs)."""
    total = {"isolated": 0.0, "shared": 0.0}
    reads = []
    for u, sid in enumerate(users):
        payload = {"prompt": f"user {u}", "size": 64, "n": u}
        for mode in (("isolated", "shared") if (u + j) % 2 == 0 else ("shared", "isolated")):
            t0 = time.perf_counter()
            if mode == "isolated":
                host.update(sid, {"canary": tokens[u], "data": payload})
                if generate:
                    host.generate(sid, steps=steps, seed=u, prompt=f"user {u}")
                state = host.get(sid)["state"]
            else:
                host.update(shared, {f"canary:{u}": tokens[u], f"data:{u}": payload})
                if generate:
                    host.generate(shared, steps=steps, seed=u, prompt=f"user {u}")
                host.get(shared)
            total[mode] += time.perf_counter() - t0
            if mode == "isolated":
                reads.append(state)
    return total["isolated"], total["shared"], reads


def _leak(u: int, state: dict[str, Any], tokens: dict[int, str]) -> str:
    if state.get("canary") != tokens[u]:
        return f"own canary {state.get('canary')!r}, wrote {tokens[u]!r}"
    text = json.dumps(state)
    seen = [v for k, v in tokens.items() if k != u and v in text]
    return f"holds another session's canary: {seen[:3]}" if seen else ""


RUNNERS = {
    "processing.concurrent_sessions": (CONCURRENT_METRICS, concurrent_sessions),
    "processing.session_isolation": (ISOLATION_METRICS, session_isolation),
}
