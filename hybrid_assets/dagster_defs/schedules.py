"""The nightly standard-profile run of the newest build.

The spec profile (hours of work) is not scheduled: it runs on demand, as the
``hybrid_validation_spec`` job on a chosen build partition (UI: the job's Launchpad, or
Materialize with a partition), or `python -m hybrid_assets run --profile spec`.
"""

from dagster import (
    DefaultScheduleStatus,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

from hybrid_assets.dagster_defs.partitions import BUILDS_PARTITION
from hybrid_assets.dagster_defs.sensors import BUILD_TAG

NIGHTLY_PROFILE = "standard"


def make_nightly_schedule(job_name: str, cron: str = "0 2 * * *") -> ScheduleDefinition:
    @schedule(job_name=job_name, cron_schedule=cron, execution_timezone="UTC",
              default_status=DefaultScheduleStatus.RUNNING,
              description="Every night at 02:00 UTC: the standard profile on the newest build partition.")
    def nightly_standard(context: ScheduleEvaluationContext) -> RunRequest | SkipReason:
        builds = context.instance.get_dynamic_partitions(BUILDS_PARTITION)
        if not builds:
            return SkipReason("no build partition yet: the new-build sensor adds one per manifest "
                              "(or run `python -m hybrid_assets run` once)")
        newest = builds[-1]  # partitions are listed in the order they were added
        night = context.scheduled_execution_time.strftime("%Y-%m-%d") if context.scheduled_execution_time else "now"
        return RunRequest(
            run_key=f"nightly-{night}-{newest}-{NIGHTLY_PROFILE}",
            partition_key=newest,
            run_config={"resources": {"profile": {"config": {"name": NIGHTLY_PROFILE}}}},
            tags={BUILD_TAG: newest, "hybrid/profile": NIGHTLY_PROFILE, "hybrid/launched_by": "nightly"},
        )

    return nightly_standard
