"""Parquet export of one run: every table's rows of that run, one file per table, written by
DuckDB itself (``COPY ... TO ... (FORMAT parquet)``; no pyarrow needed).

Files (in ``out_dir``): ``runs``, ``builds`` and ``testbeds`` (the rows the run references),
``case_results``, ``samples``, ``metrics``, ``expectation_results``, ``regressions`` (the run's
findings), ``superseded`` (the earlier results this run replaced) and ``baselines`` (the pin of
the run's testbed and profile, if any), each ``<table>.parquet``. A table with no rows for the
run still gets a file, with its columns, so a reader's query does not depend on what happened.

This is the export of a run from a DuckDB file. The layout that many machines write at once
(one Parquet file per table and case) is ``hybrid_assets.store.parquet``.

The store is opened read-only for the export only. Files are written into a temporary folder
beside ``out_dir`` and moved in when all are written: an error leaves nothing half-written.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Union

from hybrid_assets.analysis.common import AnyStore, read_only, require_run

# Each table's rows of one run ($run = the run id parameter). Order: the run's context first.
_RUN_ROWS = {
    "runs": "SELECT * FROM runs WHERE run_id = $run",
    "builds": "SELECT * FROM builds WHERE build_id IN (SELECT build_id FROM runs WHERE run_id = $run)",
    "testbeds": "SELECT * FROM testbeds WHERE testbed_id IN (SELECT testbed_id FROM runs WHERE run_id = $run)",
    "baselines": "SELECT b.* FROM baselines b JOIN runs r USING (testbed_id, profile) WHERE r.run_id = $run",
    "case_results": "SELECT * FROM case_results WHERE run_id = $run",
    "samples": "SELECT * FROM samples WHERE run_id = $run ORDER BY case_id, seq",
    "metrics": "SELECT * FROM metrics WHERE run_id = $run",
    "expectation_results": "SELECT * FROM expectation_results WHERE run_id = $run",
    "regressions": "SELECT * FROM regressions WHERE run_id = $run",
    "superseded": "SELECT * FROM superseded WHERE new_run_id = $run",
}
TABLES = tuple(_RUN_ROWS)


def export_run_parquet(store: AnyStore, run_id: str, out_dir: Union[str, Path]) -> dict[str, Path]:
    """Write every table's rows of ``run_id`` as ``out_dir/<table>.parquet``; return the paths
    by table name. Raises ``UnknownRunError`` (naming the latest runs) before writing anything;
    files of the same names already in ``out_dir`` are replaced."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    try:
        with read_only(store) as con:
            require_run(con, store, run_id)
            for table, sql in _RUN_ROWS.items():
                target = staging / f"{table}.parquet"
                con.execute(f"COPY ({sql}) TO '{_sql_path(target)}' (FORMAT parquet, COMPRESSION zstd)",
                            {"run": run_id})
        out.mkdir(parents=True, exist_ok=True)
        written = {}
        for table in _RUN_ROWS:
            final = out / f"{table}.parquet"
            (staging / f"{table}.parquet").replace(final)  # same file system: a rename
            written[table] = final
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")
