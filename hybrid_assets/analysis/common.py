"""What the analysis modules share: a short read-only connection to the store, and the
errors that name what was asked for and what exists instead."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Union

from hybrid_assets.store import MetricsStore
from hybrid_assets.store.parquet import ParquetCaseStore, open_parquet_store

AnyStore = Union[MetricsStore, ParquetCaseStore]  # a DuckDB file, or the per-case Parquet folder of many machines


class UnknownRunError(LookupError):
    """A run id names no run in the store."""


class UnknownCaseError(LookupError):
    """A case id names no case of the given run."""


class NoHistoryError(LookupError):
    """Nothing was measured for what a plot asks for: no picture rather than an empty one."""


@contextmanager
def read_only(store: AnyStore) -> Iterator[Any]:
    """One read-only DuckDB connection, held for the block only: an open connection, even a
    read-only one, blocks the pipeline's writes (docs/analysts.md). A Parquet folder is opened
    as DuckDB views over its files (nothing to lock)."""
    if not store.path.exists():
        raise FileNotFoundError(f"no store at {store.path}: nothing has been written there yet")
    if isinstance(store, ParquetCaseStore):
        con = open_parquet_store(store.root)
        try:
            yield con
        finally:
            con.close()
        return
    with store._local, store._connect(read_only=True) as con:  # the store's own lock and lock retry
        store._ensure_readable(con)
        yield con


def latest_run_ids(con: Any, limit: int = 5) -> list[str]:
    rows = con.execute("SELECT run_id FROM runs ORDER BY last_write_at DESC, run_id LIMIT ?", [limit]).fetchall()
    return [r[0] for r in rows]


def require_run(con: Any, store: AnyStore, run_id: str) -> None:
    """Raise ``UnknownRunError`` naming the run and the latest run ids if ``run_id`` is unknown."""
    if con.execute("SELECT count(*) FROM runs WHERE run_id = ?", [run_id]).fetchone()[0]:
        return
    latest = latest_run_ids(con)
    raise UnknownRunError(f"no run {run_id!r} in {store.path} (latest runs: {', '.join(latest) or 'none'})")


def require_case(con: Any, store: AnyStore, run_id: str, case_id: str) -> None:
    require_run(con, store, run_id)
    if con.execute("SELECT count(*) FROM case_results WHERE run_id = ? AND case_id = ?",
                   [run_id, case_id]).fetchone()[0]:
        return
    cases = [r[0] for r in con.execute(
        "SELECT case_id FROM case_results WHERE run_id = ? ORDER BY case_id LIMIT 8", [run_id]).fetchall()]
    raise UnknownCaseError(f"run {run_id!r} in {store.path} has no case {case_id!r} "
                           f"(its cases include: {', '.join(cases) or 'none'})")
