"""The metrics store: one DuckDB file, written one case per transaction.

DuckDB allows one writing process per file, and a reader (an analyst's shell) blocks
writers too. So a write connection is held only for the transaction that stores one case;
a locked file is retried with bounded back-off; and a case that still cannot be written is
staged as a JSON file beside the database and merged by the next write that gets through,
so nothing measured is lost.

A run carries a run key (by default build/testbed/profile). Writing a case under a run key
replaces what an earlier run with the same key stored for that case (recorded in
``superseded``), so re-running a build does not duplicate its results. A build id is bound to
its manifest's content: a second manifest with the same id and other content is refused.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Union

import duckdb
import pandas as pd

from hybrid_assets.builds import default_run_key
from hybrid_assets.store.schema import MIGRATIONS, SCHEMA_VERSION, TABLES, VIEWS

log = logging.getLogger(__name__)

ENV_DUCKDB_PATH = "HYBRID_DUCKDB_PATH"
DEFAULT_DUCKDB_PATH = "var/hybrid.duckdb"


def default_store_path() -> Path:
    return Path(os.environ.get(ENV_DUCKDB_PATH) or DEFAULT_DUCKDB_PATH)


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc)
    return "lock" in text.lower() and ("Conflicting" in text or "Could not set lock" in text)


class BuildConflictError(ValueError):
    """A build id is already registered with different manifest content."""


class UnknownBuildError(LookupError):
    """A build id (e.g. a baseline to pin) names no build in the store."""


@dataclass(frozen=True)
class WriteReceipt:
    status: str  # "written" or "staged"
    attempts: int
    seconds: float
    staged_path: Union[str, None] = None
    merged_staged: int = 0


class MetricsStore:
    def __init__(self, path: Union[str, Path], lock_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.lock_timeout_s = lock_timeout_s
        self.staging_dir = self.path.with_name(self.path.name + ".staging")
        self._local = threading.Lock()  # one writer per process at a time

    # ---- connections ------------------------------------------------------------------
    @contextmanager
    def _connect(self, read_only: bool = False, timeout_s: Union[float, None] = None) -> Iterator[Any]:
        deadline = time.monotonic() + (self.lock_timeout_s if timeout_s is None else timeout_s)
        delay = 0.02
        while True:
            try:
                con = duckdb.connect(str(self.path), read_only=read_only)
                break
            except (duckdb.IOException, duckdb.ConnectionException) as exc:
                if not _is_lock_error(exc) or time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
        try:
            yield con
        finally:
            con.close()

    def initialize(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._local, self._connect() as con:
            self._ensure_schema(con)

    @staticmethod
    def _ensure_schema(con: Any) -> None:
        con.execute(TABLES)
        row = con.execute("SELECT max(version) FROM schema_info").fetchone()
        if row[0] is None:
            con.execute("INSERT INTO schema_info VALUES (?)", [SCHEMA_VERSION])
        elif row[0] > SCHEMA_VERSION:
            raise RuntimeError(f"store schema v{row[0]} is newer than this code (v{SCHEMA_VERSION})")
        elif row[0] < SCHEMA_VERSION:
            con.execute(MIGRATIONS)
            con.execute("UPDATE schema_info SET version = ?", [SCHEMA_VERSION])
        con.execute(VIEWS)

    # ---- writing ----------------------------------------------------------------------
    def write_case(self, payload: dict[str, Any]) -> WriteReceipt:
        """Store one case's results in one transaction (replacing an earlier write of the
        same run and case); staged to disk if the file stays locked."""
        t0 = time.monotonic()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        attempts = 0
        with self._local:
            try:
                with self._connect() as con:
                    attempts = 1
                    self._ensure_schema(con)
                    merged = self._merge_staged(con)  # older cases first: a later write wins
                    self.insert_case(con, payload)
                return WriteReceipt("written", attempts, time.monotonic() - t0, merged_staged=merged)
            except (duckdb.IOException, duckdb.ConnectionException) as exc:
                if not _is_lock_error(exc):
                    raise
                staged = self._stage(payload)
                log.error("store %s stayed locked for %.0f s; staged the case at %s (%s)",
                          self.path, self.lock_timeout_s, staged, exc)
                return WriteReceipt("staged", attempts, time.monotonic() - t0, str(staged))

    def _stage(self, payload: dict[str, Any]) -> Path:
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        target = self.staging_dir / f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.json"
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload, default=str))
        tmp.replace(target)  # atomic: a merge never sees half a file
        return target

    def _merge_staged(self, con: Any) -> int:
        if not self.staging_dir.is_dir():
            return 0
        merged = 0
        for path in sorted(self.staging_dir.glob("*.json")):
            try:
                payload = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                log.error("staged file %s is unreadable, left in place: %s", path, exc)
                continue
            try:
                self.insert_case(con, payload)
            except BuildConflictError as exc:  # never retried forever, never overwriting the registered build
                rejected = path.with_suffix(".rejected")
                path.replace(rejected)
                log.error("staged file %s conflicts with a registered build, set aside as %s: %s", path, rejected, exc)
                continue
            path.unlink()
            merged += 1
        return merged

    @contextmanager
    def write_connection(self) -> Iterator[Any]:
        """A write connection on an up-to-date schema, held for one unit of work."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._local, self._connect() as con:
            self._ensure_schema(con)
            yield con

    def merge_staged(self) -> int:
        with self.write_connection() as con:
            return self._merge_staged(con)

    @staticmethod
    def insert_case(con: Any, p: dict[str, Any]) -> None:
        run, build, testbed, case = p["run"], p["build"], p["testbed"], p["case"]
        run_id, case_id = run["run_id"], case["case_id"]
        now = utc_now()
        con.execute("BEGIN TRANSACTION")
        try:
            check_build_content(con, build["build_id"], build["content_sha256"])
            con.execute(
                "INSERT INTO builds VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [build["build_id"], build["version"], build.get("worker_cmd"), json.dumps(build["manifest"]),
                 build["content_sha256"], now])
            con.execute(
                "INSERT INTO testbeds VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [testbed["testbed_id"], testbed["hostname"], testbed["cpu"], testbed["cpu_cores"],
                 testbed["memory_bytes"], testbed["gpus"], json.dumps(testbed["fingerprint"]), now])
            run_key = run.get("run_key") or default_run_key(build["build_id"], testbed["testbed_id"], run["profile"])
            con.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (run_id) DO UPDATE SET last_write_at = excluded.last_write_at",
                [run_id, build["build_id"], testbed["testbed_id"], run["profile"], run.get("dagster_run_id"),
                 run["worker_cmd"], run["started_at"], now, run_key])
            supersede_case(con, run_key, run_id, case_id, now)
            for table in CASE_TABLES:
                con.execute(f"DELETE FROM {table} WHERE run_id = ? AND case_id = ?", [run_id, case_id])
            con.execute(
                "INSERT INTO case_results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [run_id, case_id, case["part"], case["section"], case["also_covers"], case["domain"],
                 case["title"], case["verdict"], case["reason"], case.get("error"), case["started_at"],
                 case["duration_s"], json.dumps(case.get("notes", {}), default=str), now])
            _insert_frame(con, "samples", run_id, case_id, p["samples"],
                          ["seq", "metric", "value", "unit", "t_s", "labels"])
            _insert_frame(con, "metrics", run_id, case_id, p["metrics"],
                          ["metric", "statistic", "value", "unit", "sample_count"])
            _insert_frame(con, "expectation_results", run_id, case_id, p["expectations"],
                          ["check_name", "expectation_type", "spec_section", "spec_text", "metric", "statistic",
                           "comparison", "threshold", "observed", "unit", "sample_count", "verdict", "detail"])
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise

    # ---- builds, baselines, regression findings -----------------------------------------
    def check_build(self, build_id: str, content_sha256: str) -> None:
        """Raise ``BuildConflictError`` if ``build_id`` is registered with other content."""
        if not self.path.exists():
            return
        # A write connection: a run is about to write anyway, and an older file is migrated here
        # rather than refused.
        with self.write_connection() as con:
            check_build_content(con, build_id, content_sha256)

    def pin_baseline(self, testbed_id: str, profile: str, build_id: str, note: str = "") -> None:
        """Make ``build_id`` the baseline of every comparison on this testbed and profile."""
        with self.write_connection() as con:
            known = con.execute("SELECT count(*) FROM builds WHERE build_id = ?", [build_id]).fetchone()[0]
            if not known:
                near = [r[0] for r in con.execute("SELECT build_id FROM builds ORDER BY registered_at DESC LIMIT 5")
                        .fetchall()]
                raise UnknownBuildError(f"cannot pin baseline {build_id!r}: no such build in {self.path} "
                                        f"(latest builds: {near or 'none'}); nothing was changed")
            con.execute("INSERT OR REPLACE INTO baselines VALUES (?, ?, ?, ?, ?)",
                        [testbed_id, profile, build_id, utc_now(), note])

    def unpin_baseline(self, testbed_id: str, profile: str) -> bool:
        with self.write_connection() as con:
            n = con.execute("SELECT count(*) FROM baselines WHERE testbed_id = ? AND profile = ?",
                            [testbed_id, profile]).fetchone()[0]
            con.execute("DELETE FROM baselines WHERE testbed_id = ? AND profile = ?", [testbed_id, profile])
            return bool(n)

    def pinned_baseline(self, testbed_id: str, profile: str) -> Union[str, None]:
        if not self.path.exists():
            return None
        with self._local, self._connect(read_only=True) as con:
            self._ensure_readable(con)
            row = con.execute("SELECT build_id FROM baselines WHERE testbed_id = ? AND profile = ?",
                              [testbed_id, profile]).fetchone()
            return row[0] if row else None

    def write_regressions(self, run_id: str, case_id: str, rows: list[dict[str, Any]]) -> None:
        """Replace the regression findings of one run and case (one transaction)."""
        now = utc_now()
        frame = pd.DataFrame.from_records(
            [{**{c: r.get(c) for c in _REGRESSION_COLUMNS}, "run_id": run_id, "case_id": case_id,
              "detected_at": r.get("detected_at") or now} for r in rows],
            columns=["run_id", "case_id", *_REGRESSION_COLUMNS, "detected_at"])
        with self.write_connection() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                con.execute("DELETE FROM regressions WHERE run_id = ? AND case_id = ?", [run_id, case_id])
                if len(frame):
                    insert_frame(con, "regressions", frame)
                con.execute("COMMIT")
            except Exception:
                con.execute("ROLLBACK")
                raise

    @staticmethod
    def _ensure_readable(con: Any) -> None:
        version = con.execute("SELECT max(version) FROM schema_info").fetchone()[0]
        if version is not None and version < SCHEMA_VERSION:
            raise RuntimeError(f"store schema v{version} is older than this code (v{SCHEMA_VERSION}); "
                               "any write (a run, or `python -m hybrid_assets migrate`) upgrades it")

    # ---- reading ----------------------------------------------------------------------
    def latest_run_id(self) -> Union[str, None]:
        """The run written to last, or None when the store holds none."""
        latest = self.query("SELECT run_id FROM v_runs ORDER BY last_write_at DESC LIMIT 1")
        return None if latest.empty else str(latest.iloc[0, 0])

    def query(self, sql: str, params: Union[list[Any], None] = None) -> pd.DataFrame:
        with self._local, self._connect(read_only=True) as con:
            return con.execute(sql, params or []).df()


CASE_TABLES = ("case_results", "samples", "metrics", "expectation_results", "regressions")
_REGRESSION_COLUMNS = (
    "metric", "testbed_id", "profile", "build_id", "baseline_build_id", "baseline_source", "direction",
    "statistic", "baseline_value", "current_value", "change_ratio", "ci_low", "ci_high", "p_value",
    "baseline_samples", "current_samples", "step_build_id", "step_ratio", "history_builds", "verdict", "detail")


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def check_build_content(con: Any, build_id: str, content_sha256: str) -> None:
    rows = con.execute("SELECT content_sha256, registered_at FROM builds WHERE build_id = ?", [build_id]).fetchall()
    row = rows[0] if rows else None
    if row is not None and row[0] != content_sha256:
        raise BuildConflictError(
            f"build id {build_id!r} is already registered (since {row[1]:%Y-%m-%d %H:%M:%S} UTC) with other "
            f"content (manifest sha256 {row[0][:12]}..., this one {content_sha256[:12]}...); a build id names "
            "one build: give the new build a new id. Nothing was written.")


def supersede_case(con: Any, run_key: str, run_id: str, case_id: str, now: dt.datetime) -> None:
    """Remove what earlier runs with the same key stored for this case, and say so."""
    older = con.execute(
        "SELECT c.run_id, c.verdict FROM case_results c JOIN runs r USING (run_id) "
        "WHERE r.run_key = ? AND r.run_id <> ? AND c.case_id = ?", [run_key, run_id, case_id]).fetchall()
    for old, old_verdict in older:
        for table in CASE_TABLES:
            con.execute(f"DELETE FROM {table} WHERE run_id = ? AND case_id = ?", [old, case_id])
        # The old verdict is kept: a case whose verdict changes on a re-run of the same build is flaky.
        con.execute("INSERT INTO superseded VALUES (?, ?, ?, ?, ?, ?)",
                    [run_key, case_id, old, run_id, old_verdict, now])
        # A run left with no case is gone entirely (its key lives on in the newer run).
        con.execute("DELETE FROM runs WHERE run_id = ? AND NOT EXISTS "
                    "(SELECT 1 FROM case_results WHERE run_id = ?)", [old, old])


def _insert_frame(con: Any, table: str, run_id: str, case_id: str, rows: list[dict[str, Any]],
                  columns: list[str]) -> None:
    if not rows:
        return
    frame = pd.DataFrame.from_records(rows, columns=columns)
    if "labels" in frame.columns:
        # Most samples carry no labels: one shared "{}" instead of a json.dumps each (75 % of ingest time).
        frame["labels"] = [json.dumps(v, default=str) if v else "{}" for v in frame["labels"]]
    frame.insert(0, "case_id", case_id)
    frame.insert(0, "run_id", run_id)
    insert_frame(con, table, frame)


def insert_frame(con: Any, table: str, frame: pd.DataFrame, on_conflict: str = "") -> None:
    """``INSERT INTO table SELECT * FROM frame`` (columns in the table's order), ``on_conflict``
    appended as written."""
    con.register("_incoming", frame)
    try:
        con.execute(f"INSERT INTO {table} SELECT * FROM _incoming {on_conflict}".rstrip())
    finally:
        con.unregister("_incoming")


def case_payload(run: Any, case: Any, outcome: Any) -> dict[str, Any]:
    """The JSON-able record of one case, as written (or staged)."""
    return {
        "run": {"run_id": run.run_id, "run_key": run.run_key, "profile": run.profile,
                "dagster_run_id": run.dagster_run_id,
                "worker_cmd": " ".join(run.worker_cmd), "started_at": run.started_at.isoformat()},
        "build": {"build_id": run.build.build_id, "version": run.build.version,
                  "worker_cmd": " ".join(run.build.worker_cmd) if run.build.worker_cmd else None,
                  "manifest": run.build.manifest, "content_sha256": run.build.content_sha256},
        "testbed": asdict(run.testbed),
        "case": {"case_id": case.id, "part": case.part, "section": case.section,
                 "also_covers": ",".join(case.also_covers), "domain": case.domain, "title": case.title,
                 "verdict": str(outcome.verdict), "reason": outcome.reason, "error": outcome.error,
                 "started_at": outcome.started_at.isoformat(), "duration_s": outcome.duration_s,
                 "notes": outcome.notes},
        "samples": [{"seq": s.seq, "metric": s.metric, "value": s.value, "unit": s.unit, "t_s": s.t_s,
                     "labels": s.labels} for s in outcome.samples],
        "metrics": [asdict(m) for m in outcome.summaries],
        "expectations": [{**asdict(e), "verdict": str(e.verdict)} for e in outcome.expectations],
    }
