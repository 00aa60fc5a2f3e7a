"""One factory: the catalog (data) becomes assets with checks, and a job."""


import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    AssetSpec,
    MaterializeResult,
    MetadataValue,
    multi_asset,
)

from hybrid_assets.catalog import Case
from hybrid_assets.dagster_defs.partitions import BUILD_PARTITIONS
from hybrid_assets.dagster_defs.resources import (
    BuildResource,
    MetricsStoreResource,
    ProfileResource,
    WorkerPoolResource,
    run_info,
)
from hybrid_assets.gx_suites import Suite
from hybrid_assets.harness.baseline import CHECK_NAME as REGRESSION_CHECK
from hybrid_assets.harness.baseline import (
    RegressionEvidence,
    compare_with_baseline,
    findings_table,
    trend_plots,
)
from hybrid_assets.harness.execute import execute_case
from hybrid_assets.harness.results import CaseOutcome, ExpectationOutcome, Verdict
from hybrid_assets.report import reports_root
from hybrid_assets.store import MetricsStore

KEY_METRIC_STATS = ("p50", "p90", "p99", "max", "count")
RUN_KEY_TAG = "hybrid/run_key"  # a run tag that overrides the default run key (build/testbed/profile)
REPORTS_TAG = "hybrid/reports_dir"  # a run tag naming the run's report folder (default: reports root / run id)


def asset_key(case: Case) -> AssetKey:
    return AssetKey([case.group, case.id])


def check_result(e: ExpectationOutcome) -> AssetCheckResult:
    severity = AssetCheckSeverity.WARN if e.verdict in (Verdict.INVALID, Verdict.SKIPPED) else AssetCheckSeverity.ERROR
    return AssetCheckResult(
        check_name=e.check_name,
        passed=e.verdict is Verdict.PASS,
        severity=severity,
        metadata={
            "verdict": str(e.verdict),
            "threshold": MetadataValue.float(e.threshold) if e.threshold is not None else MetadataValue.null(),
            "observed": MetadataValue.float(e.observed) if e.observed is not None else MetadataValue.null(),
            "claim": f"{e.metric} {e.statistic} {e.comparison} {e.threshold:g} {e.unit}".strip(),
            "spec": f"{e.spec_section}: {e.spec_text}",
            "sample_count": e.sample_count,
            "detail": e.detail,
        },
    )


def regression_check_result(ev: RegressionEvidence) -> AssetCheckResult:
    """The evidence of the comparison with the baseline build (same testbed and profile)."""
    worst = ev.worst
    metadata: dict[str, Any] = {"verdict": ev.verdict, "detail": ev.reason}
    if worst is not None:
        metadata.update({
            "metric": f"{worst.metric} ({worst.statistic})",
            "baseline_build": worst.baseline_build_id or "none",
            "baseline_source": worst.baseline_source or "none",
            "change_ratio": MetadataValue.float(worst.change_ratio) if worst.change_ratio is not None
            else MetadataValue.null(),
            "confidence_interval": f"{worst.ci_low:.4g}-{worst.ci_high:.4g}" if worst.ci_low is not None
            and worst.ci_high is not None else "-",
            "p_value": MetadataValue.float(worst.p_value) if worst.p_value is not None else MetadataValue.null(),
            "samples": f"{worst.current_samples} vs {worst.baseline_samples}",
        })
    if ev.findings:
        metadata["findings"] = MetadataValue.md(findings_table(ev.findings))
    severity = AssetCheckSeverity.WARN if ev.verdict == "INVALID" else AssetCheckSeverity.ERROR
    return AssetCheckResult(check_name=REGRESSION_CHECK, passed=ev.passed, severity=severity, metadata=metadata)


def _metrics_table(outcome: CaseOutcome) -> str:
    rows = {}
    for m in outcome.summaries:
        if m.statistic in KEY_METRIC_STATS:
            rows.setdefault((m.metric, m.unit), {})[m.statistic] = m.value
    lines = ["| metric | unit | " + " | ".join(KEY_METRIC_STATS) + " |", "|---" * (2 + len(KEY_METRIC_STATS)) + "|"]
    for (metric, unit), stats in sorted(rows.items()):
        cells = [f"{stats[s]:.6g}" if s in stats else "" for s in KEY_METRIC_STATS]
        lines.append(f"| {metric} | {unit} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_case_asset(case: Case, suite: Suite, pool: str | None = None) -> AssetsDefinition:
    """An asset for one case, partitioned by build, in its testbed's concurrency pool; its checks
    are its suite's expectations."""
    key = asset_key(case)
    checks = [AssetCheckSpec(name=e.check, asset=key,
                             description=f"spec {e.meta['spec_section']}: {e.meta['spec_text']}")
              for e in suite.expectations]
    checks.append(AssetCheckSpec(
        name=REGRESSION_CHECK, asset=key,
        description="No metric a spec line judges is worse than on the baseline build (same testbed and profile): "
                    "Mann-Whitney U and a bootstrap interval of the ratio, beyond a 10 % threshold, plus step "
                    "detection over the build history. INVALID (a warning) without a baseline."))
    sections = ",".join((case.section, *case.also_covers))

    # A multi_asset of one spec, subsettable: a check whose line is SKIPPED on this testbed
    # gets no result (Dagster shows it as not executed), which a plain @asset does not allow.
    spec = AssetSpec(
        key=key,
        group_name=case.group,
        description=f"{case.title} (spec {sections}). {case.description}",
        tags={"domain": case.domain, "spec_section": case.section, "part": str(case.part)},
        kinds={"python", "duckdb"},
        metadata={"runner": case.runner, "suite": case.suite, "spec_sections": sections},
    )

    @multi_asset(name=f"{case.group}__{case.id}", specs=[spec], check_specs=checks, can_subset=True,
                 partitions_def=BUILD_PARTITIONS, pool=pool,
                 # Celery routes a step to the queue named by this tag: one queue per testbed.
                 op_tags={"dagster-celery/queue": pool} if pool else None)
    def _case_asset(
        context: AssetExecutionContext,
        worker_pool: WorkerPoolResource,
        metrics_store: MetricsStoreResource,
        profile: ProfileResource,
        build: BuildResource,
    ) -> Iterator[MaterializeResult]:
        build_info = build.info(context.partition_key if context.has_partition_key else None)
        store = metrics_store.client()
        # A build id bound to other content is refused before anything is measured or written.
        store.check_build(build_info.build_id, build_info.content_sha256)
        info = run_info(context.run.run_id, build_info, profile.resolve(), worker_pool.argv,
                        context.run.tags.get(RUN_KEY_TAG))
        executed = execute_case(case, info, worker_pool.pool, store, context.log)
        out = executed.outcome
        metadata: dict[str, Any] = {
            "verdict": str(out.verdict),
            "reason": out.reason,
            "profile": info.profile,
            "build_id": info.build.build_id,
            "run_key": info.run_key,
            "testbed_id": info.testbed.testbed_id,
            "duration_s": round(out.duration_s, 3),
            "samples": len(out.samples),
            "metrics": MetadataValue.md(_metrics_table(out)),
            "store": f"{store.path} ({executed.receipt.status})",
        }
        if out.error:
            metadata["error"] = out.error
        selected = {k.name for k in context.selected_asset_check_keys}
        results = [check_result(e) for e in out.expectations
                   if e.verdict is not Verdict.SKIPPED and e.check_name in selected]
        # Only a case that reached the DuckDB file can be compared; in the Parquet layout the
        # comparison runs after `python -m hybrid_assets ingest` (the check shows not executed).
        if isinstance(store, MetricsStore) and executed.receipt.status == "written":
            evidence = compare_with_baseline(store, info.run_id, case.id, context.log)
            if REGRESSION_CHECK in selected:
                results.append(regression_check_result(evidence))
            flagged = evidence.worst if not evidence.passed and evidence.verdict != "INVALID" else None
            reports = Path(context.run.tags.get(REPORTS_TAG) or reports_root() / info.run_id)
            pngs = trend_plots(store, info.run_id, case.id, reports / "trends", [flagged] if flagged else [],
                               context.log)
            if pngs:
                png = pngs[0]
                metadata["trend"] = MetadataValue.path(str(png.resolve()))
                metadata["trend_plot"] = MetadataValue.md(
                    f"![trend](data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()})")
        # Yielded, not returned: a returned NamedTuple reads as a tuple of outputs to a multi_asset.
        yield MaterializeResult(asset_key=key, metadata=metadata, check_results=results)

    return _case_asset
