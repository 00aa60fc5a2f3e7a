"""Sessions without a worker process: the store's validation and rollback against every corruption, the
host's journal, ids, crash arming."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest

from workers.host.session_journal import SessionJournal
from workers.protocol.messages import ErrorCode
from workers.protocol.ops_sessions import JOB_PREFIX, SessionCrashParams, canonical, checksum, job_output
from workers.runtime import session_faults
from workers.runtime.context import OperationError
from workers.runtime.sessions import Session, SessionStore

KINDS = ("partial_loss", "inconsistent", "complete")
CAUSES = ("concurrent_access", "serialization_error", "storage_failure")


def _state() -> dict[str, Any]:
    return {"config": {"user": "u", "steps": 20}, "counter": 3, "notes": ["a", "b"], "profile": {"tier": "x"},
            JOB_PREFIX + "render": {"items": 2, "done": 2, "outputs": [job_output("render", i) for i in range(2)]}}


def _session(checkpoint_every: int = 1) -> Session:
    s = Session(SessionStore.new_id(), None, None, checkpoint_every)
    s.commit(_state())
    s.commit({**s.state, "counter": 4})
    return s


def test_checksum_is_canonical_and_refuses_non_json() -> None:
    a = {"b": 1, "a": [1.5, "é", {"z": None, "y": True}]}
    b = {"a": [1.5, "é", {"y": True, "z": None}], "b": 1}
    assert canonical(a) == canonical(b) and checksum(a) == checksum(b)
    assert checksum(a) != checksum({**a, "b": 2})
    with pytest.raises(ValueError):
        canonical({"x": float("nan")})
    with pytest.raises(TypeError):
        canonical({"x": object()})


def test_a_clean_session_validates_and_commit_refuses_bad_state() -> None:
    s = _session()
    assert s.validate() is None and s.version == 2 and s.snapshot is not None and s.snapshot.version == 2
    with pytest.raises(ValueError, match="not plain JSON"):
        s.commit({"x": {1, 2}})  # type: ignore[dict-item]
    assert s.version == 2 and s.validate() is None  # nothing changed


@pytest.mark.parametrize(("cause", "kind"), list(itertools.product(CAUSES, KINDS)))
def test_every_corruption_is_detected_as_its_kind_and_rolled_back(cause: str, kind: str) -> None:
    s = _session()
    good = copy.deepcopy(s.state)
    detail = session_faults.corrupt(s, kind, cause)
    assert detail
    found = s.validate()
    assert found is not None, f"{cause}/{kind} went undetected: {detail}"
    assert found.kind == kind, f"{cause}/{kind} read as {found.kind}: {found.detail}"
    assert s.rollback() is not None
    assert s.state == good and s.validate() is None and s.version == 2


def test_store_refuses_a_corrupt_session_and_reports_the_rollback() -> None:
    events: list[dict[str, Any]] = []
    store = SessionStore(events.append, "w-test", sweep_interval_s=0)
    s = _session()
    store.add(s)
    session_faults.corrupt(s, "partial_loss", "storage_failure")
    with pytest.raises(OperationError) as info:
        store.checked(s)
    assert info.value.code == ErrorCode.SESSION_CORRUPT and info.value.retryable
    assert s.id in info.value.message and "partial_loss" in info.value.message
    assert events[-1]["kind"] == "corrupt" and events[-1]["rolled_back"] and events[-1]["session"] == s.id
    store.checked(s)  # rolled back: valid again


def test_without_a_good_snapshot_the_session_stays_refused() -> None:
    events: list[dict[str, Any]] = []
    store = SessionStore(events.append, "w-test", sweep_interval_s=0)
    s = _session()
    store.add(s)
    session_faults.corrupt(s, "complete", "storage_failure", snapshot_too=True)
    with pytest.raises(OperationError) as info:
        store.checked(s)
    assert not info.value.retryable and "session.restore" in info.value.message
    assert s.corrupt is not None and not events[-1]["rolled_back"]
    s.install(_state(), 7, ["op-1"])  # what a restore from the host's journal does
    assert s.corrupt is None and s.validate() is None and s.version == 7 and "op-1" in s.applied


def test_rollback_to_an_older_checkpoint_says_how_many_versions_it_undid() -> None:
    s = _session(checkpoint_every=3)  # snapshot at version 1 only
    for i in range(3):
        s.commit({**s.state, "counter": 10 + i})  # version 5, snapshot taken at version 4
    s.commit({**s.state, "counter": 99})  # version 6
    session_faults.corrupt(s, "inconsistent", "serialization_error")
    assert s.validate() is not None
    assert s.rollback() == 2 and s.version == 4 and s.state["counter"] == 11


def test_sweep_finds_corruption_nobody_asked_about() -> None:
    events: list[dict[str, Any]] = []
    store = SessionStore(events.append, "w-test", sweep_interval_s=0)
    a, b = _session(), _session()
    store.add(a)
    store.add(b)
    session_faults.corrupt(b, "inconsistent", "storage_failure")
    assert store.sweep() == 1
    assert [e["session"] for e in events if e["kind"] == "corrupt"] == [b.id]
    assert events[-1]["detected_by"] == "sweep"


def test_unknown_session_is_named() -> None:
    store = SessionStore(lambda _e: None, "w-test", sweep_interval_s=0)
    with pytest.raises(OperationError) as info:
        store.find("s-doesnotexist")
    assert info.value.code == ErrorCode.SESSION_NOT_FOUND and "s-doesnotexist" in info.value.message


def test_ids_are_unguessable_and_unique() -> None:
    ids = {SessionStore.new_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(len(i) == 34 and i.startswith("s-") and int(i[2:], 16) >= 0 for i in ids)


def test_session_resources_are_released_on_close(tmp_path: Any) -> None:
    s = Session(SessionStore.new_id(), None, None, 1)
    s.reserve(1 << 20, 3, tmp_path)
    s.commit({"a": 1})
    assert s.resources().workspace_bytes == 1 << 20 and s.resources().scratch_files == 3
    assert len(list(tmp_path.rglob("*"))) == 4
    held = s.release()
    assert held.workspace_bytes == 1 << 20 and held.scratch_files == 3 and held.state_bytes > 0
    assert list(tmp_path.iterdir()) == [] and s.resources().workspace_bytes == 0
    with pytest.raises(ValueError, match="scratch_files"):
        s.reserve(0, 65, tmp_path)


def _event(sid: str, version: int, state: dict[str, Any], changed: dict[str, Any], op_id: str = "") -> dict[str, Any]:
    return {"session": sid, "version": version, "checksum": checksum(state), "set": changed, "delete": [],
            "op_id": op_id, "t_mono": 0.0}


def test_journal_applies_deltas_in_order_and_refuses_gaps_and_mismatches() -> None:
    j = SessionJournal()
    seen: list[int] = []
    j.subscribe(lambda sid, v, wt, ht: seen.append(v))
    j.record(0, {"id": "s-1", "version": 1, "checksum": checksum({"a": 1}), "state": {"a": 1}, "key": "k"},
             {"model": None})
    assert j.apply(_event("s-1", 2, {"a": 2}, {"a": 2}, "op-x"))
    assert not j.apply(_event("s-1", 2, {"a": 2}, {"a": 2}))  # already known
    assert not j.apply(_event("s-1", 4, {"a": 4}, {"a": 4}))  # gap
    assert j.get("s-1").stale.startswith("missed") and j.gaps == 1
    bad = _event("s-1", 3, {"a": 3}, {"a": 3})
    bad["checksum"] = checksum({"a": "other"})
    assert not j.apply(bad) and j.mismatches == 1
    entry = j.get("s-1")
    assert entry.state == {"a": 2} and entry.version == 2 and "op-x" in entry.applied
    assert seen == [1, 2]
    assert not j.apply(_event("s-unknown", 2, {"a": 1}, {"a": 1}))  # not ours


def test_crash_arm_fires_once_for_its_session_and_step() -> None:
    fired: list[dict[str, Any]] = []
    arm = session_faults.CrashArm(fired.append)
    arm.arm(SessionCrashParams(phase="processing", mode="raise", after_items=2, session="s-a"))
    arm.fire("processing", "elsewhere", "s-b", progressed=5)  # another session
    arm.fire("processing", "too early", "s-a", progressed=1)
    arm.fire("cleanup", "other phase", "s-a")
    assert fired == []
    with pytest.raises(session_faults.InjectedStepError, match="item 2"):
        arm.fire("processing", "job j, item 2", "s-a", progressed=2)
    assert fired[0]["where"] == "job j, item 2" and fired[0]["mode"] == "raise"
    arm.fire("processing", "again", "s-a", progressed=9)  # one-shot
    assert len(fired) == 1
