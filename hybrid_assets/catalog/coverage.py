"""Generate ``docs/coverage.md``: every threshold line of the spec beside what encodes it.

    python -m hybrid_assets.catalog.coverage --write   # regenerate
    python -m hybrid_assets.catalog.coverage --check   # exit 1 if the file is stale

The spec's lines come from ``spec_lines`` (the vendored spec). An expectation says which lines it
encodes in ``meta.spec_lines``, a list of line ids (``"<section>:<path>"``); the cases come from
the catalog and their suites from ``expectations/``. A cited id that is not a threshold line of
the spec, or that lies outside the case's sections, is an error: a typo must not read as coverage.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from hybrid_assets.catalog.loader import Case, load_catalog
from hybrid_assets.catalog.spec_lines import DESCRIPTIVE, MONITORING, OVERRIDES, PARAMETER, SpecLine, load_spec_lines
from hybrid_assets.gx_suites import ExpectationSpec, load_suite
from hybrid_assets.runners import runner_spec
from workers.generated import generated_file_main

REPO = Path(__file__).resolve().parents[2]
COVERAGE_PATH = REPO / "docs" / "coverage.md"
# The repository's suites, not $HYBRID_EXPECTATIONS_DIR: the document describes the repository.
EXPECTATIONS_DIR = REPO / "expectations"
# The spec's "Key Deliverables": cases promised per part.
PROMISED_CASES = {1: 42, 2: 36, 3: 48, 4: 54}
PART_TITLES = {1: "Workflows", 2: "Stress", 3: "Failures", 4: "Benchmarks"}


class CoverageError(ValueError):
    """A suite cites a spec line that does not exist or that its case does not cover."""


@dataclass(frozen=True)
class Encoding:
    """One expectation that encodes a spec line."""

    case: str
    suite: str
    check: str
    claim: str
    implemented: bool  # the case's runner exists; else its verdict is ERROR "not implemented"


@dataclass(frozen=True)
class Coverage:
    lines: tuple[SpecLine, ...]  # every leaf of the spec, thresholds or not
    cases: tuple[Case, ...]
    encodings: dict[str, tuple[Encoding, ...]]  # threshold line id -> what encodes it
    uncited: tuple[Encoding, ...]  # expectations without meta.spec_lines

    @property
    def thresholds(self) -> list[SpecLine]:
        return [line for line in self.lines if line.is_threshold]

    def encoded(self, lines: Iterable[SpecLine]) -> list[SpecLine]:
        return [line for line in lines if line.id in self.encodings]

    def measured(self, lines: Iterable[SpecLine]) -> list[SpecLine]:
        """Lines that a case with an implemented runner judges: the only ones covered for real."""
        return [line for line in lines if any(e.implemented for e in self.encodings.get(line.id, ()))]


def claim(e: ExpectationSpec) -> str:
    """``metric statistic comparison threshold unit``, read from the expectation's kwargs.

    Written here rather than taken from the judge: importing the judge pulls in scipy, and
    ``--check`` runs in every ``make test``.
    """
    kw, meta = e.kwargs, e.meta
    if e.type == "expect_column_quantile_values_to_be_between":
        q = float(kw["quantile_ranges"]["quantiles"][0])
        low, high = kw["quantile_ranges"]["value_ranges"][0]
        stat = meta.get("statistic") or f"p{round(q * 100):d}"
    else:
        stat = meta.get("statistic") or e.type.removeprefix("expect_column_").split("_", 1)[0]
        low, high = kw.get("min_value"), kw.get("max_value")
    bounds = [f">= {float(low):g}"] if low is not None else []
    bounds += [f"<= {float(high):g}"] if high is not None else []
    text = f"{e.metric} {stat} {' and '.join(bounds)} {meta.get('unit', '')}".strip()
    # Percentile claims need the early-stopping count (preamble); the others state their own.
    return f"{text}, at least {meta['min_samples']} samples" if "min_samples" in meta else text


def build_coverage(spec_path: Union[Path, None] = None, catalog_path: Union[Path, None] = None,
                   expectations_dir: Union[Path, None] = None) -> Coverage:
    lines = load_spec_lines(spec_path)
    by_id = {line.id: line for line in lines if line.is_threshold}
    cases = load_catalog(catalog_path)
    found: dict[str, list[Encoding]] = {}
    uncited: list[Encoding] = []
    for case in cases:
        suite = load_suite(case.suite, expectations_dir or EXPECTATIONS_DIR)
        sections = {case.section, *case.also_covers}
        try:
            implemented = runner_spec(case.runner).fn is not None
        except KeyError:
            implemented = False
        for e in suite.expectations:
            enc = Encoding(case.id, suite.name, e.check, claim(e), implemented)
            cited = e.meta.get("spec_lines") or []
            if not isinstance(cited, list) or not all(isinstance(c, str) for c in cited):
                raise CoverageError(f"suite {suite.name}, check {e.check}: meta.spec_lines must be a list of ids")
            if not cited:
                uncited.append(enc)
            for line_id in cited:
                where = f"suite {suite.name}, check {e.check}: meta.spec_lines cites {line_id!r}"
                if line_id not in by_id:
                    raise CoverageError(f"{where}, which is not a threshold line of the spec")
                if by_id[line_id].section not in sections:
                    raise CoverageError(f"{where}, outside case {case.id}'s sections {sorted(sections)}")
                found.setdefault(line_id, []).append(enc)
    return Coverage(tuple(lines), tuple(cases), {k: tuple(v) for k, v in found.items()}, tuple(uncited))


PREAMBLE = """\
# Spec coverage

<!-- Generated by `python -m hybrid_assets.catalog.coverage --write` (`make coverage`). Do not edit:
     `make test` fails when this file is stale. -->

Which threshold lines of the spec (`spec/000_cbbc6f41f8099de3.txt`, a verbatim copy of
`../shared/spec/000_cbbc6f41f8099de3.txt`) the catalog encodes **today**, and which it does not.
It is generated from the spec, `hybrid_assets/catalog/cases/*.yaml` and `expectations/*.json`; after
adding a case or an expectation, run `make coverage` (or
`.venv/bin/python -m hybrid_assets.catalog.coverage --write`).

## How to read it

- **A threshold line** is a leaf of one of the spec's JSON blocks that states a pass/fail
  criterion: an `expected_result`, an item of `validation_criteria`, a value under
  `success_criteria`, `performance_targets`, `performance_benchmarks`, `performance_standards`, any
  `*_validation`, and so on. Workload parameters (`test_parameters`, `*_simulation`, `*_mix`, ...),
  names and descriptions are not. The rule, and the few lines where it is overridden, are in
  `hybrid_assets/catalog/spec_lines.py`. A line's id is `<section>:<path in its JSON block>`.
- **Quantitative** lines state a number to hold a measurement against (`under_5_seconds`,
  `99.99_percent_...`, `zero_...`); **qualitative** lines do not
  (`seamless_device_integration_without_service_interruption`) and need an operational definition
  before they can be encoded.
- **Encoded** means an expectation of a catalog case lists the line's id in its `meta.spec_lines`;
  the table shows the claim it checks (metric, statistic, bound). Encoded is not passing: the
  verdict of a run says whether the line held. A PASS of a run means only that the encoded lines
  held; every line marked **MISSING** is unchecked.

## Conventions of the encoded lines

- **Latency lines.** Where the spec states no percentile, a latency line is judged at **p90**
  (MLPerf's single-stream convention). Round trips, cheap to sample, are judged at **p99**.
- **Evidence.** Percentile lines use MLPerf LoadGen's early-stopping rule at 99 % confidence: with
  no sample over the threshold, a p90 claim needs 44 samples, p99 459; each exceedance raises the
  number. Other lines need the expectation's `min_samples`. Too little evidence is INVALID, never
  PASS (see [analysts.md](analysts.md#verdicts)).
- **SKIPPED.** A line that cannot be measured on the testbed (GPU lines on a CPU machine) is
  SKIPPED with the reason. It is never a PASS: its Dagster check gets no result.
- **Profiles** (`smoke`, `standard`, `spec`) change the work (sample counts, durations), never
  the thresholds.

Interpretations in `cold_start_device_discovery` (1.1 and 4.1):

- "Communication establishment" / "connection time" is measured from spawning a worker process to
  receiving its handshake, so it includes process start-up.
- "Discovery time" is measured by the host, from sending `discover_devices` to receiving the
  answer, on a freshly started worker.
- "Assessment time per device" is the worker's own report (`assessment_ms` per device); the host
  does not measure it.
- "Capability accuracy within 5 %" is judged on total memory only; the compute capability must
  match exactly (a separate line) and the other capability fields must be present (completeness).
- "100 % device detection" means every cold start reports exactly as many devices as the host
  finds on its own (the CPU, and GPUs through NVML).
- 4.1 `resource_usage: under_100mb_ram_during_discovery` is judged by its own case,
  `cold_start_discovery_ram_usage`, on the same runner's `discovery_rss_delta_mb` (the bundled
  worker imports torch during discovery and fails it, by about 214 MiB).

**Encoded is not measured.** Most cases name a *planned* runner (`hybrid_assets/runners/planned/`):
their lines are encoded, with the metric, statistic and bound a future runner must meet, but
nothing measures them yet, and a run records them as ERROR "not implemented". The *Measured*
column counts the lines that a case with a written runner judges; only those are covered.
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _pct(part: int, whole: int) -> str:
    return f"{part} ({100 * part / whole:.0f} %)" if whole else "0"


def _totals(cov: Coverage) -> list[str]:
    thresholds = cov.thresholds
    out = ["## Totals", "",
           "| Part | Threshold lines | Quantitative | Qualitative | Encoded | Missing | Measured | Cases promised "
           "| Cases in catalog | Cases with a runner |", "|---|---|---|---|---|---|---|---|---|---|"]
    for part in (*PROMISED_CASES, None):
        lines = [t for t in thresholds if part is None or t.part == part]
        quant = sum(t.quantitative for t in lines)
        encoded = len(cov.encoded(lines))
        cases = [c for c in cov.cases if part is None or c.part == part]
        promised = sum(PROMISED_CASES.values()) if part is None else PROMISED_CASES[part]
        name = "**Total**" if part is None else f"{part}: {PART_TITLES[part]}"
        measured = len(cov.measured(lines))
        runnable = sum(1 for c in cases if _implemented(c))
        out.append(f"| {name} | {len(lines)} | {quant} | {len(lines) - quant} | {_pct(encoded, len(lines))} | "
                   f"{len(lines) - encoded} | {_pct(measured, len(lines))} | {promised} | {len(cases)} | "
                   f"{runnable} |")
    kinds = {k: sum(line.kind == k for line in cov.lines) for k in (PARAMETER, MONITORING, DESCRIPTIVE)}
    out += ["", f"The spec's {len(cov.lines)} JSON leaves also hold {kinds[PARAMETER]} workload parameters, "
                f"{kinds[MONITORING]} monitoring instructions without a bound (2.2 `performance_monitoring`) and "
                f"{kinds[DESCRIPTIVE]} names and descriptions; none of them is counted above.", ""]
    out += ["| Section | Title | Threshold lines | Quantitative | Qualitative | Encoded | Missing | Cases |",
            "|---|---|---|---|---|---|---|---|"]
    for section, title in dict.fromkeys((line.section, line.title) for line in cov.lines):
        lines = [t for t in thresholds if t.section == section]
        quant = sum(t.quantitative for t in lines)
        encoded = len(cov.encoded(lines))
        cases = ", ".join(f"`{c.id}`" for c in cov.cases if section in (c.section, *c.also_covers)) or "none"
        out.append(f"| {section} | {_cell(title)} | {len(lines)} | {quant} | {len(lines) - quant} | {encoded} | "
                   f"{len(lines) - encoded} | {cases} |")
    return [*out, ""]


def _implemented(case: Case) -> bool:
    try:
        return runner_spec(case.runner).fn is not None
    except KeyError:
        return False


def _cases(cov: Coverage) -> list[str]:
    out = ["## Cases in the catalog", "",
           "| Case | Part | Sections | Domain | Runner | Suite | Work per profile |", "|---|---|---|---|---|---|---|"]
    for c in cov.cases:
        work = "; ".join(f"{p}: " + ", ".join(f"{k}={v}" for k, v in params.items()) for p, params in c.params.items())
        out.append(f"| `{c.id}` | {c.part} | {', '.join((c.section, *c.also_covers))} | {c.domain} | "
                   f"`{c.runner}` | `{c.suite}` | {_cell(work)} |")
    out.append("")
    if cov.uncited:
        out += ["Expectations that cite no spec line (`meta.spec_lines` is missing): "
                + ", ".join(f"`{e.suite}` `{e.check}`" for e in cov.uncited) + ".", ""]
    return out


def _sections(cov: Coverage) -> list[str]:
    out = ["## Threshold lines by section", "",
           "Id: the line's path inside its section's JSON block; Q: quantitative, q: qualitative.", ""]
    for section, title in dict.fromkeys((line.section, line.title) for line in cov.lines):
        lines = [t for t in cov.thresholds if t.section == section]
        out += [f"### {section} {title}", ""]
        if not lines:
            out += ["No threshold lines.", ""]
            continue
        out += ["| Id | Scenario | Spec text | Q | Encoded by | Case |", "|---|---|---|---|---|---|"]
        for t in lines:
            encs = cov.encodings.get(t.id, ())
            by = "<br>".join(f"`{e.suite}` `{e.check}`: {_cell(e.claim)}{'' if e.implemented else ' (planned)'}"
                             for e in encs) or "**MISSING**"
            case = ", ".join(dict.fromkeys(f"`{e.case}`" for e in encs)) or "-"
            out.append(f"| `{t.path}` | {_cell(t.scenario or '')} | `{_cell(t.text)}` | "
                       f"{'Q' if t.quantitative else 'q'} | {by} | {case} |")
        out.append("")
    return out


def _overrides() -> list[str]:
    out = ["## Classification overrides", "", "Where the rule in `spec_lines.py` decides wrongly:", "",
           "| Section | Key | Kind | Why |", "|---|---|---|---|"]
    out += [f"| {s} | `{k}` | {kind} | {_cell(why)} |" for (s, k), (kind, why) in OVERRIDES.items()]
    return [*out, ""]


def render(cov: Union[Coverage, None] = None) -> str:
    cov = cov or build_coverage()
    return "\n".join([PREAMBLE, *_totals(cov), *_cases(cov), *_sections(cov), *_overrides()]).rstrip() + "\n"


def main(argv: Union[list[str], None] = None) -> int:
    return generated_file_main(COVERAGE_PATH, render, "python -m hybrid_assets.catalog.coverage --write",
                               __doc__ or "", argv)


if __name__ == "__main__":
    sys.exit(main())
