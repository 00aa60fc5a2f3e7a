"""Command line: run the validation job and print the verdicts.

    python -m hybrid_assets run [--profile smoke] [--store PATH] [--worker-cmd CMD] [--strict]
    python -m hybrid_assets summary [--run RUN_ID] [--store PATH]

``run`` executes the Dagster job in-process against the instance in $DAGSTER_HOME (so
the run shows in ``dagster dev``), or an ephemeral instance when it is unset.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Union

from hybrid_assets.catalog import PROFILES
from hybrid_assets.store import MetricsStore, default_store_path


def _run(args: argparse.Namespace) -> int:
    from dagster import DagsterInstance

    from hybrid_assets.dagster_defs.definitions import JOB_NAME
    from hybrid_assets.definitions import defs

    resources: dict[str, Any] = {"profile": {"config": {"name": args.profile}}}
    if args.store:
        resources["metrics_store"] = {"config": {"path": args.store}}
    if args.worker_cmd:
        resources["worker_pool"] = {"config": {"worker_cmd": args.worker_cmd}}
    if args.manifest:
        from hybrid_assets.builds import ManifestError, parse_manifest

        try:
            build = parse_manifest(Path(args.manifest))
        except ManifestError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        resources["build"] = {"config": {"manifest_path": str(Path(args.manifest).resolve())}}
        if build.worker_cmd and not args.worker_cmd:
            resources["worker_pool"] = {"config": {"worker_cmd": shlex.join(build.worker_cmd)}}
    instance = DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else DagsterInstance.ephemeral()
    job = defs.resolve_job_def(JOB_NAME)
    # Dagster's console at INFO: the step's own log lines, not every DEBUG engine event.
    run_config = {"resources": resources, "loggers": {"console": {"config": {"log_level": "INFO"}}}}
    result = job.execute_in_process(run_config=run_config, instance=instance,
                                    raise_on_error=False, tags={"hybrid/launched_by": "cli"})
    store = MetricsStore(Path(args.store) if args.store else default_store_path())
    verdicts = _print_summary(store, result.run_id)
    if not result.success:
        print(f"\nthe Dagster run {result.run_id} failed; see its logs above", file=sys.stderr)
        return 2
    if args.strict and any(v != "PASS" for v in verdicts):
        return 1
    return 0


def _print_summary(store: MetricsStore, run_id: Union[str, None]) -> list[str]:
    if run_id is None:
        latest = store.query("SELECT run_id FROM v_runs ORDER BY last_write_at DESC LIMIT 1")
        if latest.empty:
            print(f"no runs in {store.path}")
            return []
        run_id = str(latest.iloc[0, 0])
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
    run.add_argument("--strict", action="store_true", help="exit 1 unless every case passes")
    summary = sub.add_parser("summary", help="print the verdicts of a stored run")
    summary.add_argument("--run", help="run id (default: the latest)")
    summary.add_argument("--store")
    args = parser.parse_args(argv)
    if args.command == "run":
        return _run(args)
    store = MetricsStore(Path(args.store) if args.store else default_store_path())
    if not store.path.exists():
        print(f"no store at {store.path}", file=sys.stderr)
        return 1
    _print_summary(store, args.run)
    return 0
