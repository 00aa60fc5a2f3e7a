"""Resources. Each is frozen configuration; the mutable state (worker processes, the
store client) lives in objects built when a run starts. Environment variables are read
then, never at import."""


import datetime as dt
import shlex
from pathlib import Path
from typing import Optional

from dagster import ConfigurableResource, InitResourceContext
from pydantic import Field, PrivateAttr

import workers
from hybrid_assets.builds import BuildInfo, resolve_build
from hybrid_assets.catalog import resolve_profile
from hybrid_assets.run_info import RunInfo
from hybrid_assets.store import MetricsStore, default_store_path
from hybrid_assets.store.parquet import ParquetCaseStore
from hybrid_assets.testbed import fingerprint
from workers.host.command import resolve_worker_command
from workers.host.pool import PoolConfig, WorkerPool


class WorkerPoolResource(ConfigurableResource):
    """Warm workers shared by every case of a run (started once per run in-process)."""

    worker_cmd: Optional[str] = Field(
        default=None, description="Worker command line; else $HYBRID_WORKER_CMD; else the bundled worker.")
    size: int = Field(default=1, ge=1, le=64)
    missed_heartbeats: int = Field(default=3, ge=1)
    startup_timeout_s: float = Field(default=60.0, gt=0)
    max_restarts: int = Field(default=5, ge=0)

    _pool: Optional[WorkerPool] = PrivateAttr(default=None)
    _argv: list[str] = PrivateAttr(default_factory=list)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._argv = resolve_worker_command(self.worker_cmd or _partition_worker_cmd(context))
        config = PoolConfig(size=self.size, missed_heartbeats=self.missed_heartbeats,
                            startup_timeout_s=self.startup_timeout_s, max_restarts=self.max_restarts)
        self._pool = WorkerPool(self._argv, config).start()

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._pool is not None:
            self._pool.close()

    @property
    def pool(self) -> WorkerPool:
        if self._pool is None:
            raise RuntimeError("the worker pool is not started (used outside a run?)")
        return self._pool

    @property
    def argv(self) -> list[str]:
        return list(self._argv)


class MetricsStoreResource(ConfigurableResource):
    path: Optional[str] = Field(
        default=None, description="DuckDB file; else $HYBRID_DUCKDB_PATH; else var/hybrid.duckdb")
    lock_timeout_s: float = Field(default=30.0, gt=0)
    parquet_dir: Optional[str] = Field(
        default=None, description="Write each case as Parquet files under this folder instead of the DuckDB file "
                                  "(many machines or parallel steps at once; `python -m hybrid_assets ingest` "
                                  "folds them into a DuckDB file)")

    def client(self) -> MetricsStore | ParquetCaseStore:
        if self.parquet_dir:
            return ParquetCaseStore(Path(self.parquet_dir))
        return MetricsStore(Path(self.path) if self.path else default_store_path(), self.lock_timeout_s)


class ProfileResource(ConfigurableResource):
    name: Optional[str] = Field(default=None, description="smoke | standard | spec; else $HYBRID_PROFILE; else smoke")

    def resolve(self) -> str:
        return resolve_profile(self.name)


def _partition_worker_cmd(context: InitResourceContext) -> Optional[str]:
    """The worker a build partition's manifest names, for a run launched with only the build
    id (from the UI, a schedule or a backfill); None: the configured or bundled worker."""
    run = context.run
    key = run.tags.get("dagster/partition") if run is not None else None
    if not key:
        return None
    build = resolve_build(key, None, workers.__version__)
    return shlex.join(build.worker_cmd) if build.worker_cmd else None


class BuildResource(ConfigurableResource):
    """What is being tested: a build manifest (set by the new-build sensor), the manifest of the
    run's build partition, or the local build."""

    manifest_path: Optional[str] = None

    def info(self, partition_key: Optional[str] = None) -> BuildInfo:
        return resolve_build(partition_key, self.manifest_path, workers.__version__)


def run_info(run_id: str, build: BuildInfo, profile: str, worker_argv: list[str],
             run_key: Optional[str] = None) -> RunInfo:
    return RunInfo(run_id=run_id, build=build, testbed=fingerprint(), profile=profile, worker_cmd=worker_argv,
                   started_at=dt.datetime.now(dt.UTC).replace(tzinfo=None), dagster_run_id=run_id, key=run_key)
