"""Command-line tools around the store: baselines, regressions, side-by-side builds, exports.

    python -m hybrid_assets baseline pin BUILD [--testbed ID] [--profile P] [--note TEXT]
    python -m hybrid_assets baseline unpin|show [--testbed ID] [--profile P]
    python -m hybrid_assets regressions [--run RUN_ID] [--baseline BUILD]   # (re)compute and print
    python -m hybrid_assets compare BUILD_A BUILD_B [--testbed ID] [--profile P] [--statistic p90]
    python -m hybrid_assets export [--run RUN_ID] --out DIR                # Parquet, one file per table
    python -m hybrid_assets datadocs [--run RUN_ID] [--out DIR]            # Great Expectations Data Docs
    python -m hybrid_assets ingest --parquet DIR                           # Parquet layout -> DuckDB file
    python -m hybrid_assets migrate                                        # bring an older file to this schema

Each takes ``--store PATH`` (default $HYBRID_DUCKDB_PATH or var/hybrid.duckdb). The testbed
defaults to this machine's; the profile to $HYBRID_PROFILE or smoke. Exit status 2 names bad
input (an unknown build or run); nothing is changed then.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Union

from hybrid_assets.catalog import PROFILES, resolve_profile
from hybrid_assets.report import reports_root
from hybrid_assets.store import MetricsStore, UnknownBuildError, default_store_path

COMMANDS = ("baseline", "regressions", "compare", "export", "datadocs", "ingest", "migrate")


def add_commands(sub: argparse._SubParsersAction) -> None:
    base = sub.add_parser("baseline", help="pin, unpin or show the baseline build of a testbed and profile")
    base.add_argument("action", choices=("pin", "unpin", "show"))
    base.add_argument("build", nargs="?", help="the build to pin")
    base.add_argument("--note", default="")
    reg = sub.add_parser("regressions", help="compare a run with its baseline build and print the findings")
    reg.add_argument("--run", help="run id (default: the latest)")
    reg.add_argument("--baseline", help="compare with this build instead of the pinned or previous one")
    cmp_ = sub.add_parser("compare", help="two builds side by side: a statistic of every metric")
    cmp_.add_argument("build_a")
    cmp_.add_argument("build_b")
    cmp_.add_argument("--statistic", default="p90")
    exp = sub.add_parser("export", help="write a run's rows as Parquet, one file per table")
    exp.add_argument("--run", help="run id (default: the latest)")
    exp.add_argument("--out", required=True, metavar="DIR")
    docs = sub.add_parser("datadocs", help="build Great Expectations Data Docs of a run")
    docs.add_argument("--run", help="run id (default: the latest)")
    docs.add_argument("--out", metavar="DIR", help="default var/reports/<run id>/datadocs")
    ing = sub.add_parser("ingest", help="fold a Parquet-layout store into the DuckDB file")
    ing.add_argument("--parquet", required=True, metavar="DIR")
    mig = sub.add_parser("migrate", help="bring an older store file to this code's schema (adds, never drops)")
    for p in (base, reg, cmp_, exp, docs, ing, mig):
        p.add_argument("--store", help="DuckDB file (default $HYBRID_DUCKDB_PATH or var/hybrid.duckdb)")
    for p in (base, cmp_):
        p.add_argument("--testbed", help="testbed id (default: this machine's)")
        p.add_argument("--profile", choices=PROFILES, help="default $HYBRID_PROFILE or smoke")


def run_command(args: argparse.Namespace) -> int:
    store = MetricsStore(Path(args.store) if args.store else default_store_path())
    if args.command == "ingest":
        return _ingest(store, Path(args.parquet))
    if not store.path.exists():
        print(f"error: no store at {store.path}", file=sys.stderr)
        return 2
    if args.command == "migrate":
        store.initialize()
        print(f"{store.path}: schema v{int(store.query('SELECT max(version) AS v FROM schema_info').v[0])}")
        return 0
    try:
        return _COMMANDS[args.command](store, args)
    except (UnknownBuildError, LookupError) as exc:  # unknown build, run or case: named, nothing changed
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _testbed_and_profile(args: argparse.Namespace) -> tuple[str, str]:
    from hybrid_assets.testbed import fingerprint

    return args.testbed or fingerprint().testbed_id, resolve_profile(args.profile)


def _baseline(store: MetricsStore, args: argparse.Namespace) -> int:
    testbed, profile = _testbed_and_profile(args)
    if args.action == "pin":
        if not args.build:
            print("error: baseline pin needs the build id to pin", file=sys.stderr)
            return 2
        store.pin_baseline(testbed, profile, args.build, args.note)
        print(f"baseline of testbed {testbed}, profile {profile}: {args.build} (pinned)")
    elif args.action == "unpin":
        was = store.unpin_baseline(testbed, profile)
        print(f"baseline of testbed {testbed}, profile {profile}: " + ("unpinned" if was else "none was pinned"))
    else:
        pinned = store.pinned_baseline(testbed, profile)
        print(f"baseline of testbed {testbed}, profile {profile}: "
              + (f"{pinned} (pinned)" if pinned else "not pinned: the last earlier build that passed, else the "
                                                     "previous build"))
    return 0


def _latest(store: MetricsStore, run_id: Union[str, None]) -> str:
    latest = run_id or store.latest_run_id()
    if latest is None:
        raise LookupError(f"no runs in {store.path}")
    return latest


def _regressions(store: MetricsStore, args: argparse.Namespace) -> int:
    from hybrid_assets.regress.detect import detect_run

    run_id = _latest(store, args.run)
    findings = detect_run(store, run_id, baseline_build=args.baseline)
    tally: dict[str, int] = {}
    for f in findings:
        tally[f.verdict] = tally.get(f.verdict, 0) + 1
        if f.verdict in ("REGRESSED", "DRIFTED", "IMPROVED"):
            print(f"{f.verdict:9} {f.case_id}  {f.detail}")
    print(f"run {run_id}: " + (", ".join(f"{k} {n}" for k, n in sorted(tally.items())) or "no judged metric"))
    return 1 if tally.get("REGRESSED") or tally.get("DRIFTED") else 0


def _compare(store: MetricsStore, args: argparse.Namespace) -> int:
    from hybrid_assets.regress.queries import check_known_build

    testbed, profile = _testbed_and_profile(args)
    for build in (args.build_a, args.build_b):
        check_known_build(store, build)
    rows = store.query(
        "WITH latest AS (SELECT build_id, case_id, metric, value, sample_count, "
        "  row_number() OVER (PARTITION BY build_id, case_id, metric ORDER BY r.last_write_at DESC) AS n "
        "  FROM v_metrics m JOIN runs r USING (run_id, build_id, testbed_id, profile) "
        "  WHERE m.testbed_id = ? AND m.profile = ? AND m.statistic = ? AND m.build_id IN (?, ?)) "
        "SELECT a.case_id, a.metric, a.value AS a, b.value AS b, b.value / nullif(a.value, 0) AS ratio "
        "FROM latest a JOIN latest b USING (case_id, metric) "
        "WHERE a.build_id = ? AND b.build_id = ? AND a.n = 1 AND b.n = 1 ORDER BY ratio DESC NULLS LAST",
        [testbed, profile, args.statistic, args.build_a, args.build_b, args.build_a, args.build_b])
    if rows.empty:
        print(f"no metric measured for both builds on testbed {testbed}, profile {profile}")
        return 1
    print(f"{args.statistic} on testbed {testbed}, profile {profile}: {args.build_a} -> {args.build_b}")
    for r in rows.itertuples():
        ratio = "-" if r.ratio != r.ratio else f"x{r.ratio:.3g}"
        print(f"  {r.case_id:45} {r.metric:32} {r.a:12.5g} {r.b:12.5g}  {ratio}")
    return 0


def _export(store: MetricsStore, args: argparse.Namespace) -> int:
    from hybrid_assets.analysis.export import export_run_parquet

    run_id = _latest(store, args.run)
    written = export_run_parquet(store, run_id, Path(args.out))
    print(f"run {run_id}: " + ", ".join(str(p) for p in written.values()))
    return 0


def _datadocs(store: MetricsStore, args: argparse.Namespace) -> int:
    from hybrid_assets.analysis.datadocs import build_data_docs_timed

    run_id = _latest(store, args.run)
    out = Path(args.out) if args.out else reports_root() / run_id / "datadocs"
    index, t = build_data_docs_timed(store, run_id, out)
    print(f"Data Docs of run {run_id}: {index} ({t.cases} cases in {t.setup_s + t.validate_s + t.site_s:.1f} s)")
    return 0


def _ingest(store: MetricsStore, root: Path) -> int:
    from hybrid_assets.store import BuildConflictError
    from hybrid_assets.store.parquet import ingest_parquet

    try:
        counts = ingest_parquet(root, store)
    except (FileNotFoundError, BuildConflictError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"ingested into {store.path}: " + ", ".join(f"{t} {n}" for t, n in counts.items()))
    return 0


_COMMANDS = {"baseline": _baseline, "regressions": _regressions, "compare": _compare, "export": _export,
             "datadocs": _datadocs}
