"""Entry point for Dagster (workspace.yaml loads ``hybrid_assets.definitions``)."""

from dagster import JobDefinition

from hybrid_assets.dagster_defs.definitions import MULTIPROCESS_JOB_NAME, build_definitions

defs = build_definitions()


def multiprocess_job() -> JobDefinition:
    """The multiprocess job, for ``dagster.reconstructable`` (each step re-imports this module)."""

    return defs.resolve_job_def(MULTIPROCESS_JOB_NAME)
