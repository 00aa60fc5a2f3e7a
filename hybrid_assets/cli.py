"""Command line: run the validation job, print the verdicts, write the reports.

    python -m hybrid_assets run [--profile smoke] [--case ID ...] [--section 1.1 ...] [--part 1 ...]
                                [--store PATH] [--worker-cmd CMD] [--manifest FILE] [--reports DIR]
                                [--run-key KEY] [--executor in_process|multiprocess]
    python -m hybrid_assets report [--run RUN_ID] [--store PATH] [--reports DIR]
    python -m hybrid_assets summary [--run RUN_ID] [--store PATH]
    python -m hybrid_assets baseline|regressions|compare|export|datadocs|ingest ...   (see cli_tools)

``run`` executes the Dagster job in-process against the instance in $DAGSTER_HOME (so the
run shows in ``dagster dev``), or an ephemeral instance when it is unset, and writes
report.md, report.html, junit.xml, trend plots (trends/) and the Great Expectations Data Docs
(datadocs/) to var/reports/<run id>/.

Exit status of ``run``: 0 when every check of the selected cases passed (SKIPPED lines
allowed), 1 when any line is FAIL, INVALID or ERROR, 2 when the run itself could not be
made (bad selection, bad manifest, the Dagster run failed).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Union

from hybrid_assets.catalog import PROFILES, Case, CatalogError, load_catalog
from hybrid_assets.cli_tools import COMMANDS as TOOL_COMMANDS
from hybrid_assets.cli_tools import add_commands, run_command
from hybrid_assets.dagster_defs.factory import asset_key
from hybrid_assets.report import RunReport, build_report, reports_root, write_reports
from hybrid_assets.store import MetricsStore, default_store_path


def _run(args: argparse.Namespace) -> int:
    from dagster import DagsterInstance

    import workers
    from hybrid_assets.builds import BuildInfo, ManifestError, parse_manifest
    from hybrid_assets.dagster_defs.definitions import JOB_NAME
    from hybrid_assets.dagster_defs.factory import REPORTS_TAG, RUN_KEY_TAG
    from hybrid_assets.dagster_defs.partitions import ensure_build_partition
    from hybrid_assets.definitions import defs
    from hybrid_assets.store import BuildConflictError

    resources: dict[str, Any] = {"profile": {"config": {"name": args.profile}}}
    if args.store:
        resources["metrics_store"] = {"config": {"path": args.store}}
    if args.worker_cmd:
        resources["worker_pool"] = {"config": {"worker_cmd": args.worker_cmd}}
    build = BuildInfo.local(workers.__version__)
    if args.manifest:
        try:
            build = parse_manifest(Path(args.manifest))
        except ManifestError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        resources["build"] = {"config": {"manifest_path": str(Path(args.manifest).resolve())}}
        if build.worker_cmd and not args.worker_cmd:
            resources["worker_pool"] = {"config": {"worker_cmd": shlex.join(build.worker_cmd)}}
    try:
        selected = select_cases(load_catalog(), args.case, args.section, args.part)
    except CatalogError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    store = MetricsStore(Path(args.store) if args.store else default_store_path())
    try:  # refused before anything runs: a build id names one build
        store.check_build(build.build_id, build.content_sha256)
    except BuildConflictError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    instance = DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else DagsterInstance.ephemeral()
    ensure_build_partition(instance, build.build_id)
    # Dagster's console at INFO: the step's own log lines, not every DEBUG engine event.
    run_config: dict[str, Any] = {"resources": resources, "loggers": {"console": {"config": {"log_level": "INFO"}}}}
    tags = {"hybrid/launched_by": "cli", **({RUN_KEY_TAG: args.run_key} if args.run_key else {}),
            **({REPORTS_TAG: str(Path(args.reports).resolve())} if args.reports else {})}
    selection = [asset_key(c) for c in selected]
    if args.executor == "multiprocess":
        if not os.environ.get("DAGSTER_HOME"):
            print("error: --executor multiprocess needs a persistent Dagster instance: set $DAGSTER_HOME "
                  "(make sets it to var/dagster)", file=sys.stderr)
            return 2
        from dagster import execute_job, reconstructable

        from hybrid_assets.definitions import multiprocess_job

        run_config["execution"] = {"config": {"max_concurrent": args.max_concurrent}}
        result = execute_job(reconstructable(multiprocess_job), instance, run_config=run_config,
                             tags={**tags, "dagster/partition": build.build_id}, asset_selection=selection)
    else:
        job = defs.resolve_job_def(JOB_NAME)
        result = job.execute_in_process(run_config=run_config, instance=instance, raise_on_error=False,
                                        asset_selection=selection, partition_key=build.build_id, tags=tags)
    _print_summary(store, result.run_id)
    if not result.success:
        print(f"\nthe Dagster run {result.run_id} failed; see its logs above", file=sys.stderr)
        return 2
    report = _write_reports(store, result.run_id, args.reports, not args.no_datadocs)
    return 0 if report.all_checks_passed else 1


def select_cases(cases: list[Case], ids: list[str], sections: list[str], parts: list[int]) -> list[Case]:
    """The cases matching every given filter (all cases when none is given); unknown names
    are errors, so a typo never silently selects nothing."""
    known_ids, known_sections = {c.id for c in cases}, {s for c in cases for s in (c.section, *c.also_covers)}
    unknown = [i for i in ids if i not in known_ids] + [s for s in sections if s not in known_sections]
    if unknown:
        raise CatalogError(f"no case matches {unknown}; known sections: {sorted(known_sections)}")
    chosen = [c for c in cases
              if (not ids or c.id in ids)
              and (not sections or {c.section, *c.also_covers} & set(sections))
              and (not parts or c.part in parts)]
    if not chosen:
        raise CatalogError("the selection matches no case")
    return chosen


def _write_reports(store: MetricsStore, run_id: str, directory: Union[str, None], datadocs: bool = True) -> RunReport:
    from hybrid_assets.report.trends import with_trends

    target = Path(directory) if directory else reports_root() / run_id
    report = with_trends(build_report(store, run_id, load_catalog()), store, target)
    paths = write_reports(report, target)
    print(f"\nreports: {paths['markdown']}, {paths['html']}, {paths['junit']}")
    if datadocs:
        from hybrid_assets.analysis.datadocs import build_data_docs

        print(f"Great Expectations Data Docs: {build_data_docs(store, run_id, target / 'datadocs')}")
    print(f"production readiness: {'READY' if report.production_ready else 'NOT READY'} "
          + "; ".join(f"{c.name}: {c.evidence}" for c in report.criteria))
    return report


def _print_summary(store: MetricsStore, run_id: Union[str, None]) -> list[str]:
    run_id = run_id or store.latest_run_id()
    if run_id is None:
        print(f"no runs in {store.path}")
        return []
    runs = store.query("SELECT * FROM v_runs WHERE run_id = ?", [run_id])
    if runs.empty:
        print(f"run {run_id} wrote nothing to {store.path}")
        return []
    r = runs.iloc[0]
    print(f"\nrun {run_id}  build {r.build_id} ({r.build_version})  testbed {r.testbed_id}  profile {r.profile}")
    print(f"store {store.path}  worker: {r.worker_cmd}")
    verdicts = store.query("SELECT * FROM v_verdicts WHERE run_id = ? ORDER BY part, spec_section, case_id", [run_id])
    lines = store.query("SELECT * FROM v_expectations WHERE run_id = ? ORDER BY case_id, spec_section, expectation",
                        [run_id])
    for v in verdicts.itertuples():
        print(f"\n{v.verdict:8} {v.case_id}  (spec {v.spec_section}, {v.domain}, {v.duration_s:.1f} s)")
        for e in lines[lines.case_id == v.case_id].itertuples():
            observed = "-" if e.observed != e.observed or e.observed is None else f"{e.observed:.4g}"
            print(f"  {e.verdict:8} {e.spec_section}  {e.expectation:45} observed {observed:>10} "
                  f"{e.comparison} {e.threshold:g} {e.unit}")
        if v.verdict != "PASS":
            print(f"  reason: {v.reason}")
    counts = verdicts.verdict.value_counts().to_dict()
    print("\nverdicts: " + ", ".join(f"{k} {counts[k]}" for k in ("PASS", "FAIL", "INVALID", "SKIPPED", "ERROR")
                                     if k in counts))
    found = store.query("SELECT * FROM v_regressions WHERE run_id = ? ORDER BY verdict, case_id, metric", [run_id])
    if len(found):
        tally = found.verdict.value_counts().to_dict()
        print("against the baseline build (per judged metric): " + ", ".join(
            f"{k} {tally[k]}" for k in ("REGRESSED", "DRIFTED", "IMPROVED", "UNCHANGED", "INVALID") if k in tally))
        for f in found[found.verdict.isin(["REGRESSED", "DRIFTED"])].itertuples():
            print(f"  {f.verdict:9} {f.case_id}  {f.detail}")
    return list(verdicts.verdict)


def main(argv: Union[list[str], None] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hybrid_assets", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the validation job and print the verdicts")
    run.add_argument("--profile", choices=PROFILES, default=os.environ.get("HYBRID_PROFILE", "smoke"))
    run.add_argument("--store", help="DuckDB file (default $HYBRID_DUCKDB_PATH or var/hybrid.duckdb)")
    run.add_argument("--worker-cmd", help="worker command line (default $HYBRID_WORKER_CMD or the bundled worker)")
    run.add_argument("--manifest", help="build manifest JSON naming the build under test")
    run.add_argument("--run-key", help="results key (default build/testbed/profile: a re-run of the same build "
                                       "replaces its results); give another to keep both, e.g. for flakiness studies")
    run.add_argument("--executor", choices=("in_process", "multiprocess"), default="in_process",
                     help="in_process (default: one worker pool shared by every case) or multiprocess (a process per "
                          "case, parallel as far as the testbed's concurrency pool allows)")
    run.add_argument("--max-concurrent", type=int, default=2, help="multiprocess: steps at once within the run")
    run.add_argument("--case", action="append", default=[], metavar="ID", help="select a case (repeatable)")
    run.add_argument("--section", action="append", default=[], metavar="X.Y", help="select a spec section")
    run.add_argument("--part", action="append", default=[], type=int, choices=(1, 2, 3, 4), help="select a part")
    run.add_argument("--reports", metavar="DIR", help="where to write the reports (default var/reports/<run id>)")
    run.add_argument("--no-datadocs", action="store_true", help="skip the Great Expectations Data Docs (about 4 s)")
    rep = sub.add_parser("report", help="write the reports of a stored run")
    rep.add_argument("--run", help="run id (default: the latest)")
    rep.add_argument("--store")
    rep.add_argument("--reports", metavar="DIR")
    summary = sub.add_parser("summary", help="print the verdicts of a stored run")
    summary.add_argument("--run", help="run id (default: the latest)")
    summary.add_argument("--store")
    add_commands(sub)
    args = parser.parse_args(argv)
    if args.command == "run":
        return _run(args)
    if args.command in TOOL_COMMANDS:
        return run_command(args)
    store = MetricsStore(Path(args.store) if args.store else default_store_path())
    if not store.path.exists():
        print(f"no store at {store.path}", file=sys.stderr)
        return 1
    if args.command == "report":
        run_id = args.run or store.latest_run_id()
        if run_id is None:
            print(f"no runs in {store.path}", file=sys.stderr)
            return 1
        report = _write_reports(store, run_id, args.reports)
        return 0 if report.all_checks_passed else 1
    _print_summary(store, args.run)
    return 0
