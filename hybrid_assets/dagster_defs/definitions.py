"""Build the Definitions from the catalog."""


from dagster import AssetSelection, Definitions, define_asset_job, in_process_executor

from hybrid_assets.catalog import load_catalog
from hybrid_assets.catalog.checks import validate_catalog
from hybrid_assets.dagster_defs.factory import build_case_asset
from hybrid_assets.dagster_defs.resources import (
    BuildResource,
    MetricsStoreResource,
    ProfileResource,
    WorkerPoolResource,
)
from hybrid_assets.dagster_defs.sensors import make_new_build_sensor
from hybrid_assets.gx_suites import load_suite

JOB_NAME = "hybrid_validation"


def build_definitions() -> Definitions:
    cases = load_catalog()
    validate_catalog(cases)  # a half-configured catalog never loads
    assets = [build_case_asset(case, load_suite(case.suite)) for case in cases]
    # In-process: the worker pool starts once per run and is shared by every case, and
    # no two cases measure on the testbed at the same time.
    job = define_asset_job(JOB_NAME, selection=AssetSelection.all(), executor_def=in_process_executor,
                           description="Every case of the catalog, on one testbed, one case at a time.")
    return Definitions(
        assets=assets,
        jobs=[job],
        sensors=[make_new_build_sensor(JOB_NAME)],
        resources={
            "worker_pool": WorkerPoolResource(),
            "metrics_store": MetricsStoreResource(),
            "profile": ProfileResource(),
            "build": BuildResource(),
        },
    )
