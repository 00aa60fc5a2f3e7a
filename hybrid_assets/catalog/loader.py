"""Load and check the catalog: the spec's test cases as data (docs/catalog-format.md).

The catalog is every ``cases/*.yaml`` file (one per part of the spec, or more), or the file
or folder ``HYBRID_CATALOG_PATH`` names. Each case carries its parameters per profile and
its ``lines``: the expectations that judge it, from which its Great Expectations suite is
generated. Loading fails on the first malformed entry, naming the file, the entry and the
field: nothing runs half-configured.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

PROFILES = ("smoke", "standard", "spec")
ENV_PROFILE = "HYBRID_PROFILE"
ENV_CATALOG = "HYBRID_CATALOG_PATH"  # another catalog file or folder (a team's selection, a test's)
DOMAINS = ("device", "memory", "model", "processing", "inference", "postprocessing", "cross_domain")
PART_GROUPS = {1: "part1_workflows", 2: "part2_stress", 3: "part3_failures", 4: "part4_benchmarks"}
CATALOG_DIR = Path(__file__).with_name("cases")
STATISTICS = ("p50", "p90", "p95", "p99", "max", "min", "mean")
COMPARISONS = ("<=", ">=")
_ID = re.compile(r"^[a-z][a-z0-9_]*$")
_CHECK = re.compile(r"^[A-Za-z0-9_]+$")
_SECTION = re.compile(r"^[1-4]\.[1-6]$")
_SPEC_LINE = re.compile(r"^[1-4]\.[1-6]:\S+$")


class CatalogError(ValueError):
    """The catalog is unreadable or an entry is malformed."""


@dataclass(frozen=True)
class Line:
    """One expectation of a case: ``statistic(metric) comparison threshold``."""

    check: str
    metric: str
    statistic: str
    comparison: str
    threshold: float
    unit: str
    spec_lines: tuple[str, ...]
    min_samples: int = 1
    why: str = ""

    @property
    def quantile(self) -> Union[float, None]:
        return int(self.statistic[1:]) / 100 if self.statistic.startswith("p") else None


@dataclass(frozen=True)
class Case:
    id: str
    part: int
    section: str
    domain: str
    title: str
    description: str
    runner: str
    suite: str
    params: dict[str, dict[str, Any]]
    also_covers: tuple[str, ...] = field(default=())
    lines: tuple[Line, ...] = field(default=())
    spec_path: str = ""
    source: str = ""  # the file it came from

    @property
    def group(self) -> str:
        return PART_GROUPS[self.part]

    @property
    def sections(self) -> tuple[str, ...]:
        return (self.section, *self.also_covers)

    def params_for(self, profile: str) -> dict[str, Any]:
        return dict(self.params[resolve_profile(profile)])


def resolve_profile(profile: Union[str, None] = None) -> str:
    """A profile name, from the argument or ``HYBRID_PROFILE``; ``smoke`` by default."""
    name = profile or os.environ.get(ENV_PROFILE) or "smoke"
    if name not in PROFILES:
        raise CatalogError(f"unknown profile {name!r}: choose one of {', '.join(PROFILES)}")
    return name


def _line(raw: Any, where: str) -> Line:
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: a line must be a mapping")
    missing = [k for k in ("check", "metric", "statistic", "comparison", "threshold", "unit", "spec_lines")
               if k not in raw]
    if missing:
        raise CatalogError(f"{where}: missing {missing}")
    where = f"{where} ({raw['check']!r})"
    if not _CHECK.match(str(raw["check"])):
        raise CatalogError(f"{where}, field 'check': must be [A-Za-z0-9_]+")
    if not _ID.match(str(raw["metric"])):
        raise CatalogError(f"{where}, field 'metric': must be lower_snake_case, got {raw['metric']!r}")
    if raw["statistic"] not in STATISTICS:
        raise CatalogError(f"{where}, field 'statistic': one of {STATISTICS}, got {raw['statistic']!r}")
    if raw["comparison"] not in COMPARISONS:
        raise CatalogError(f"{where}, field 'comparison': '<=' or '>=', got {raw['comparison']!r}")
    if isinstance(raw["threshold"], bool) or not isinstance(raw["threshold"], (int, float)):
        raise CatalogError(f"{where}, field 'threshold': a number, got {raw['threshold']!r}")
    lines = raw["spec_lines"]
    if not isinstance(lines, list) or not lines or not all(isinstance(s, str) and _SPEC_LINE.match(s) for s in lines):
        raise CatalogError(f"{where}, field 'spec_lines': a non-empty list of '<section>:<path>' ids")
    min_samples = raw.get("min_samples", 1)
    if not isinstance(min_samples, int) or min_samples < 1:
        raise CatalogError(f"{where}, field 'min_samples': a positive integer")
    return Line(str(raw["check"]), str(raw["metric"]), raw["statistic"], raw["comparison"], float(raw["threshold"]),
                str(raw["unit"]), tuple(lines), min_samples, " ".join(str(raw.get("why", "")).split()))


def _case(entry: Any, index: int, source: str, file_part: Union[int, None]) -> Case:
    where = f"{source}: entry #{index}"
    if not isinstance(entry, dict):
        raise CatalogError(f"{where}: expected a mapping, got {type(entry).__name__}")
    where = f"{source}: entry {entry.get('id', '#' + str(index))!r}"
    required = ("id", "section", "domain", "title", "description", "runner", "params")
    missing = [k for k in required if k not in entry]
    if missing:
        raise CatalogError(f"{where}: missing {missing}")
    if not _ID.match(str(entry["id"])):
        raise CatalogError(f"{where}, field 'id': must be lower_snake_case")
    section = str(entry["section"])
    sections = [section, *map(str, entry.get("also_covers", []))]
    bad = [s for s in sections if not _SECTION.match(s)]
    if bad:
        raise CatalogError(f"{where}, field 'section': {bad} must look like '<1-4>.<1-6>'")
    part = int(entry.get("part", file_part or int(section[0])))
    if part not in PART_GROUPS or not section.startswith(f"{part}."):
        raise CatalogError(f"{where}, field 'section': {section} does not belong to part {part}")
    if entry["domain"] not in DOMAINS:
        raise CatalogError(f"{where}, field 'domain': one of {DOMAINS}, got {entry['domain']!r}")
    params = entry["params"]
    if not isinstance(params, dict) or set(params) != set(PROFILES):
        raise CatalogError(f"{where}, field 'params': must give exactly the profiles {PROFILES}")
    if not all(isinstance(p, dict) for p in params.values()):
        raise CatalogError(f"{where}, field 'params': each profile's params must be a mapping")
    raw_lines = entry.get("lines", [])
    if not isinstance(raw_lines, list):
        raise CatalogError(f"{where}, field 'lines': a list")
    lines = tuple(_line(raw, f"{where}, line #{i}") for i, raw in enumerate(raw_lines))
    checks = [ln.check for ln in lines]
    if len(set(checks)) != len(checks):
        raise CatalogError(f"{where}, field 'lines': duplicate check names")
    if not lines and "suite" not in entry:
        raise CatalogError(f"{where}: needs 'lines' (or a hand-written 'suite')")
    return Case(
        id=entry["id"], part=part, section=section, domain=entry["domain"], title=str(entry["title"]),
        description=" ".join(str(entry["description"]).split()), runner=str(entry["runner"]),
        suite=str(entry.get("suite") or f"part{part}.{entry['id']}"),
        params={k: dict(v) for k, v in params.items()}, also_covers=tuple(sections[1:]), lines=lines,
        spec_path=str(entry.get("spec_path", "")), source=source,
    )


# libyaml's safe loader when PyYAML was built with it: the same documents, about 8x faster
# (the whole catalog loads on every Dagster code-location load and every CLI command).
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load_file(path: Path) -> list[Case]:
    try:
        raw = yaml.load(path.read_text(), Loader=_SAFE_LOADER)
    except (OSError, yaml.YAMLError) as exc:
        raise CatalogError(f"cannot read catalog {path}: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("version") != 1 or not isinstance(raw.get("cases"), list):
        raise CatalogError(f"{path}: expected 'version: 1' and a 'cases' list")
    file_part = raw.get("part")
    if file_part is not None and file_part not in PART_GROUPS:
        raise CatalogError(f"{path}: part must be 1..4, got {file_part!r}")
    return [_case(e, i, path.name, file_part) for i, e in enumerate(raw["cases"])]


def catalog_files(path: Union[Path, None] = None) -> list[Path]:
    path = path or Path(os.environ.get(ENV_CATALOG) or CATALOG_DIR)
    if path.is_dir():
        files = sorted(path.glob("*.yaml"))
        if not files:
            raise CatalogError(f"no *.yaml catalog file in {path}")
        return files
    return [path]


def load_catalog(path: Union[Path, None] = None) -> list[Case]:
    cases = [case for f in catalog_files(path) for case in _load_file(f)]
    seen: dict[str, str] = {}
    for c in cases:
        if c.id in seen:
            raise CatalogError(f"duplicate case id {c.id!r} in {seen[c.id]} and {c.source}")
        seen[c.id] = c.source
    return cases
