"""The store as Parquet files, one set per case: the layout for many machines.

A DuckDB file has one writer at a time, which a farm of testbeds writing at once cannot share.
In this layout each case is written as one Parquet file per table under
``<root>/<table>/<run_id>/<case_id>.parquet``; nothing is shared between writers, so any number of
machines (or parallel steps) write at once onto a shared folder or object store. DuckDB reads the
folder as one database (``open_parquet_store``: each table is a view over its files, and the
analysts' views are the same as in the DuckDB file), and ``ingest_parquet`` folds the files into
a DuckDB file when regression detection or a long analysis wants one.

The rows are produced by the DuckDB store's own insert code, run on an in-memory database, so the
two layouts cannot drift apart.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any, Union

import duckdb

from hybrid_assets.store.schema import TABLES, VIEWS
from hybrid_assets.store.store import (
    CASE_TABLES,
    MetricsStore,
    WriteReceipt,
    check_build_content,
    insert_frame,
    supersede_case,
    utc_now,
)

log = logging.getLogger(__name__)

# Tables written per case; builds, testbeds and runs repeat in every case's files (a few rows) so
# each case's files stand alone.
PER_CASE_TABLES = ("builds", "testbeds", "runs", "case_results", "samples", "metrics", "expectation_results")
_ONE_ROW_PER = {"builds": ("build_id", "registered_at"), "testbeds": ("testbed_id", "first_seen"),
                "runs": ("run_id", "last_write_at DESC")}
_SAFE = str.maketrans({c: "_" for c in '/\\:*?"<>| '})


def _part(name: str) -> str:
    return name.translate(_SAFE)


class ParquetCaseStore:
    """Writes each case's rows as Parquet files; never locks anything shared."""

    def __init__(self, root: Union[str, Path]) -> None:
        self.root = Path(root)
        self.path = self.root  # what reports and logs name as "the store"

    def check_build(self, build_id: str, content_sha256: str) -> None:
        """Each writer sees only its own files: conflicts are caught when the files are ingested."""

    def write_case(self, payload: dict[str, Any]) -> WriteReceipt:
        t0 = time.monotonic()
        run_id, case_id = payload["run"]["run_id"], payload["case"]["case_id"]
        con = duckdb.connect(":memory:")
        try:
            con.execute(TABLES)
            MetricsStore.insert_case(con, payload)
            for table in PER_CASE_TABLES:
                target = self.root / table / _part(run_id) / f"{_part(case_id)}.parquet"
                target.parent.mkdir(parents=True, exist_ok=True)
                # Written beside, then renamed: a reader never sees half a file.
                tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
                con.execute(f"COPY (SELECT * FROM {table}) TO '{_sql_path(tmp)}' (FORMAT parquet)")
                tmp.replace(target)
        finally:
            con.close()
        return WriteReceipt("written", 1, time.monotonic() - t0)


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")


def _glob(root: Path, table: str) -> str:
    return _sql_path(root / table / "*" / "*.parquet")


def open_parquet_store(root: Union[str, Path]) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB where every table is a view over the folder's Parquet files and the
    analysts' views are defined as in the DuckDB file. The caller closes it."""
    root = Path(root)
    if not (root / "case_results").is_dir():
        raise FileNotFoundError(f"{root} holds no Parquet store (no case_results/ folder)")
    con = duckdb.connect(":memory:")
    scratch = duckdb.connect(":memory:")
    try:
        scratch.execute(TABLES)
        for (table,) in scratch.execute(
                "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main' ORDER BY 1").fetchall():
            if table in PER_CASE_TABLES:
                files = f"read_parquet('{_glob(root, table)}', union_by_name = true)"
                if table in _ONE_ROW_PER:  # repeated in every case's files: keep one row per key
                    key, order = _ONE_ROW_PER[table]
                    con.execute(f"CREATE VIEW {table} AS SELECT * FROM {files} "
                                f"QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY {order}) = 1")
                else:
                    con.execute(f"CREATE VIEW {table} AS SELECT * FROM {files}")
            else:  # not written per case (baselines, regressions, ...): empty, same columns
                ddl = scratch.execute("SELECT sql FROM duckdb_tables() WHERE table_name = ?", [table]).fetchone()[0]
                con.execute(ddl)
    finally:
        scratch.close()
    con.execute(VIEWS)
    return con


def ingest_parquet(root: Union[str, Path], store: MetricsStore) -> dict[str, int]:
    """Fold a Parquet store into a DuckDB file, one transaction. Idempotent: a case already
    there is replaced; a re-run under the same run key supersedes, as a direct write would; a
    build id bound to other content is refused (BuildConflictError) and nothing is written."""
    root = Path(root)
    src = open_parquet_store(root)
    try:
        frames = {t: src.execute(f"SELECT * FROM {t}").df() for t in PER_CASE_TABLES}
    finally:
        src.close()
    counts = {t: len(f) for t, f in frames.items()}
    with store.write_connection() as con:
        con.execute("BEGIN TRANSACTION")
        try:
            for b in frames["builds"].itertuples():
                check_build_content(con, b.build_id, b.content_sha256)
            for table in ("builds", "testbeds"):
                insert_frame(con, table, frames[table], "ON CONFLICT DO NOTHING")
            runs = frames["runs"]
            insert_frame(con, "runs", runs, "ON CONFLICT (run_id) DO UPDATE SET "
                                            "last_write_at = greatest(runs.last_write_at, excluded.last_write_at)")
            keys = dict(zip(runs.run_id, runs.run_key, strict=True))
            now = utc_now()
            for c in frames["case_results"].itertuples():
                supersede_case(con, keys[c.run_id], c.run_id, c.case_id, now)
                for table in CASE_TABLES:
                    con.execute(f"DELETE FROM {table} WHERE run_id = ? AND case_id = ?", [c.run_id, c.case_id])
            for table in ("case_results", "samples", "metrics", "expectation_results"):
                insert_frame(con, table, frames[table])
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
    log.info("ingested %s from %s into %s", counts, root, store.path)
    return counts
