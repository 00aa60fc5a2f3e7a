"""Build the Definitions from the catalog."""


from dagster import (
    AssetSelection,
    Definitions,
    define_asset_job,
    in_process_executor,
    multiprocess_executor,
)

from hybrid_assets.catalog import load_catalog
from hybrid_assets.catalog.checks import validate_catalog
from hybrid_assets.dagster_defs.factory import build_case_asset
from hybrid_assets.dagster_defs.partitions import testbed_pool
from hybrid_assets.dagster_defs.resources import (
    BuildResource,
    MetricsStoreResource,
    ProfileResource,
    WorkerPoolResource,
)
from hybrid_assets.dagster_defs.schedules import make_nightly_schedule
from hybrid_assets.dagster_defs.sensors import make_new_build_sensor
from hybrid_assets.gx_suites import load_suite

JOB_NAME = "hybrid_validation"
SPEC_JOB_NAME = "hybrid_validation_spec"
MULTIPROCESS_JOB_NAME = "hybrid_validation_multiprocess"


def build_definitions() -> Definitions:
    cases = load_catalog()
    validate_catalog(cases)  # a half-configured catalog never loads
    pool = testbed_pool()
    assets = [build_case_asset(case, load_suite(case.suite), pool) for case in cases]
    # Jobs are partitioned by build through their assets (Dagster infers it from the selection).
    # In-process: the worker pool starts once per run and is shared by every case, and
    # no two cases measure on the testbed at the same time.
    job = define_asset_job(JOB_NAME, selection=AssetSelection.all(), executor_def=in_process_executor,
                           description="Every case of the catalog on one build, on one testbed, one case at a time.")
    spec_job = define_asset_job(
        SPEC_JOB_NAME, selection=AssetSelection.all(), executor_def=in_process_executor,
        config={"resources": {"profile": {"config": {"name": "spec"}}}},
        description="On demand: the spec profile (the spec's own durations and sample counts; hours) on one build.")
    # Each step in its own process with its own workers. Parallel only as far as the testbed
    # pool allows (limit 1: one case at a time per testbed, across every run).
    multiprocess_job = define_asset_job(
        MULTIPROCESS_JOB_NAME, selection=AssetSelection.all(), executor_def=multiprocess_executor,
        description=f"Every case, one process per step, limited by the testbed's concurrency pool ({pool}).")
    return Definitions(
        assets=assets,
        jobs=[job, spec_job, multiprocess_job],
        sensors=[make_new_build_sensor(JOB_NAME)],
        schedules=[make_nightly_schedule(JOB_NAME)],
        resources={
            "worker_pool": WorkerPoolResource(),
            "metrics_store": MetricsStoreResource(),
            "profile": ProfileResource(),
            "build": BuildResource(),
        },
    )
