"""Cross-checks of the catalog against the runners and the suites, before anything runs:
a case names a known runner and an existing suite, and its suite judges only metrics the
runner produces. Every problem is reported at once, naming the entry and the field."""

from __future__ import annotations

from hybrid_assets.catalog.loader import Case, CatalogError
from hybrid_assets.gx_suites import SuiteError, load_suite
from hybrid_assets.runners import runner_spec


def validate_catalog(cases: list[Case]) -> None:
    problems: list[str] = []
    for case in cases:
        where = f"catalog entry {case.id!r}"
        try:
            spec = runner_spec(case.runner)
        except KeyError as exc:
            problems.append(f"{where}, field 'runner': {exc.args[0]}")
            spec = None
        try:
            suite = load_suite(case.suite)
        except SuiteError as exc:
            problems.append(f"{where}, field 'suite': {exc}")
            continue
        if spec is not None:
            unmeasured = sorted(suite.metrics - spec.metrics)
            if unmeasured:
                problems.append(f"{where}, field 'suite': {case.suite} judges {unmeasured}, which runner "
                                f"{case.runner!r} does not produce")
    if problems:
        raise CatalogError("the catalog is inconsistent:\n  " + "\n  ".join(problems))
