"""The metrics store: one DuckDB file, written one case per transaction.

DuckDB allows one writing process per file, and a reader (an analyst's shell) blocks
writers too. So a write connection is held only for the transaction that stores one case;
a locked file is retried with bounded back-off; and a case that still cannot be written is
staged as a JSON file beside the database and merged by the next write that gets through,
so nothing measured is lost.
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

from hybrid_assets.store.schema import SCHEMA_VERSION, TABLES, VIEWS

log = logging.getLogger(__name__)

ENV_DUCKDB_PATH = "HYBRID_DUCKDB_PATH"
DEFAULT_DUCKDB_PATH = "var/hybrid.duckdb"


def default_store_path() -> Path:
    return Path(os.environ.get(ENV_DUCKDB_PATH) or DEFAULT_DUCKDB_PATH)


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc)
    return "lock" in text.lower() and ("Conflicting" in text or "Could not set lock" in text)


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
                    self._write(con, payload)
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
            self._write(con, payload)
            path.unlink()
            merged += 1
        return merged

    def merge_staged(self) -> int:
        with self._local, self._connect() as con:
            self._ensure_schema(con)
            return self._merge_staged(con)

    @staticmethod
    def _write(con: Any, p: dict[str, Any]) -> None:
        run, build, testbed, case = p["run"], p["build"], p["testbed"], p["case"]
        run_id, case_id = run["run_id"], case["case_id"]
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(
                "INSERT INTO builds VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [build["build_id"], build["version"], build.get("worker_cmd"), json.dumps(build["manifest"]),
                 build["content_sha256"], now])
            con.execute(
                "INSERT INTO testbeds VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [testbed["testbed_id"], testbed["hostname"], testbed["cpu"], testbed["cpu_cores"],
                 testbed["memory_bytes"], testbed["gpus"], json.dumps(testbed["fingerprint"]), now])
            con.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (run_id) DO UPDATE SET last_write_at = excluded.last_write_at",
                [run_id, build["build_id"], testbed["testbed_id"], run["profile"], run.get("dagster_run_id"),
                 run["worker_cmd"], run["started_at"], now])
            for table in ("case_results", "samples", "metrics", "expectation_results"):
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

    # ---- reading ----------------------------------------------------------------------
    def query(self, sql: str, params: Union[list[Any], None] = None) -> pd.DataFrame:
        with self._local, self._connect(read_only=True) as con:
            return con.execute(sql, params or []).df()


def _insert_frame(con: Any, table: str, run_id: str, case_id: str, rows: list[dict[str, Any]],
                  columns: list[str]) -> None:
    if not rows:
        return
    frame = pd.DataFrame.from_records(rows, columns=columns)
    if "labels" in frame.columns:
        frame["labels"] = [json.dumps(v, default=str) for v in frame["labels"]]
    frame.insert(0, "case_id", case_id)
    frame.insert(0, "run_id", run_id)
    con.register("_incoming", frame)
    try:
        con.execute(f"INSERT INTO {table} SELECT * FROM _incoming")
    finally:
        con.unregister("_incoming")


def case_payload(run: Any, case: Any, outcome: Any) -> dict[str, Any]:
    """The JSON-able record of one case, as written (or staged)."""
    return {
        "run": {"run_id": run.run_id, "profile": run.profile, "dagster_run_id": run.dagster_run_id,
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
