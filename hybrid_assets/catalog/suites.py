"""Generate each case's Great Expectations suite from its catalog lines.

    python -m hybrid_assets.catalog.suites --write   # expectations/part<N>.<id>.json
    python -m hybrid_assets.catalog.suites --check   # exit 1 if any suite is stale or orphaned

The suites are GX 1.x JSON (what ``ExpectationSuite.to_json_dict`` writes), so GX loads them
as they are; the thresholds stay data, authored once in the catalog. A suite's expectations
carry in ``meta`` the Dagster check name, the metric, the spec section, the spec's own words
(read from the spec by the cited line ids) and those ids.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Union

from hybrid_assets.catalog.loader import Case, Line, load_catalog
from hybrid_assets.catalog.spec_lines import SpecLine, load_spec_lines

EXPECTATIONS_DIR = Path(__file__).resolve().parents[2] / "expectations"
GENERATED_MARK = "generated from hybrid_assets/catalog/cases by `make suites`"


def _kwargs(line: Line) -> tuple[str, dict[str, Any]]:
    condition = {"column": {"name": "metric"}, "operator": "==", "parameter": line.metric, "type": "comparison"}
    kwargs: dict[str, Any] = {"column": "value", "row_condition": condition}
    bound = [None, line.threshold] if line.comparison == "<=" else [line.threshold, None]
    if line.quantile is not None:
        kwargs["quantile_ranges"] = {"quantiles": [line.quantile], "value_ranges": [bound]}
        return "expect_column_quantile_values_to_be_between", kwargs
    kind = {"max": "expect_column_max_to_be_between", "min": "expect_column_min_to_be_between",
            "mean": "expect_column_mean_to_be_between"}[line.statistic]
    kwargs["min_value" if line.comparison == ">=" else "max_value"] = line.threshold
    return kind, kwargs


def suite_document(case: Case, spec: dict[str, SpecLine]) -> dict[str, Any]:
    expectations = []
    for line in case.lines:
        missing = [i for i in line.spec_lines if i not in spec]
        if missing:
            raise ValueError(f"case {case.id!r}, line {line.check!r}: unknown spec lines {missing}")
        cited = [spec[i] for i in line.spec_lines]
        kind, kwargs = _kwargs(line)
        meta: dict[str, Any] = {
            "check": line.check, "metric": line.metric, "statistic": line.statistic, "unit": line.unit,
            "spec_section": cited[0].section,
            "spec_text": "; ".join(f"{s.section} {s.key}: {s.text}" for s in cited),
            "spec_lines": list(line.spec_lines),
        }
        if line.statistic in ("max", "min", "mean"):
            meta["min_samples"] = line.min_samples
        if line.why:
            meta["why"] = line.why
        expectations.append({"type": kind, "kwargs": kwargs, "meta": meta, "severity": "critical"})
    return {"name": case.suite, "expectations": expectations,
            "meta": {"case": case.id, "runner": case.runner, "generated": GENERATED_MARK}, "notes": None}


def render_all(cases: Union[list[Case], None] = None) -> dict[str, str]:
    """File name -> content for every case that has lines."""
    spec = {f"{s.section}:{s.path}": s for s in load_spec_lines() if s.is_threshold}
    out = {}
    for case in cases if cases is not None else load_catalog():
        if case.lines:
            out[f"{case.suite}.json"] = json.dumps(suite_document(case, spec), indent=2) + "\n"
    return out


def main(argv: Union[list[str], None] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--write", action="store_true")
    g.add_argument("--check", action="store_true")
    args = p.parse_args(argv)
    wanted = render_all()
    generated_now = {f.name for f in EXPECTATIONS_DIR.glob("*.json") if GENERATED_MARK in f.read_text()}
    orphans = sorted(generated_now - set(wanted))
    if args.write:
        EXPECTATIONS_DIR.mkdir(exist_ok=True)
        for name, text in wanted.items():
            path = EXPECTATIONS_DIR / name
            if not path.exists() or path.read_text() != text:
                path.write_text(text)
        for name in orphans:  # a case removed from the catalog takes its suite with it
            (EXPECTATIONS_DIR / name).unlink()
        print(f"{len(wanted)} suites in {EXPECTATIONS_DIR} ({len(orphans)} orphans removed)")
        return 0
    stale = [n for n, t in wanted.items() if not (EXPECTATIONS_DIR / n).exists()
             or (EXPECTATIONS_DIR / n).read_text() != t]
    if stale or orphans:
        print(f"stale suites {stale[:10]}{'...' if len(stale) > 10 else ''}, orphans {orphans}: "
              "run `make suites`", file=sys.stderr)
        return 1
    print(f"{len(wanted)} suites up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
