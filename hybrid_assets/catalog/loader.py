"""Load and check the catalog: every case names a known runner, an existing suite, and
parameters for every profile."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

PROFILES = ("smoke", "standard", "spec")
ENV_PROFILE = "HYBRID_PROFILE"
ENV_CATALOG = "HYBRID_CATALOG_PATH"  # another catalog file (a team's own selection, or a test's)
DOMAINS = ("device", "memory", "model", "processing", "inference", "postprocessing", "cross_domain")
PART_GROUPS = {1: "part1_workflows", 2: "part2_stress", 3: "part3_failures", 4: "part4_benchmarks"}
CATALOG_PATH = Path(__file__).with_name("cases.yaml")
_ID = re.compile(r"^[a-z][a-z0-9_]*$")
_SECTION = re.compile(r"^[1-4]\.[1-6]$")


class CatalogError(ValueError):
    """The catalog file is unreadable or an entry is malformed."""


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

    @property
    def group(self) -> str:
        return PART_GROUPS[self.part]

    def params_for(self, profile: str) -> dict[str, Any]:
        return dict(self.params[resolve_profile(profile)])


def resolve_profile(profile: Union[str, None] = None) -> str:
    """A profile name, from the argument or ``HYBRID_PROFILE``; ``smoke`` by default."""
    name = profile or os.environ.get(ENV_PROFILE) or "smoke"
    if name not in PROFILES:
        raise CatalogError(f"unknown profile {name!r}: choose one of {', '.join(PROFILES)}")
    return name


def _case(entry: Any, index: int) -> Case:
    where = f"catalog entry #{index}"
    if not isinstance(entry, dict):
        raise CatalogError(f"{where}: expected a mapping, got {type(entry).__name__}")
    where = f"catalog entry {entry.get('id', '#' + str(index))!r}"
    required = ("id", "part", "section", "domain", "title", "description", "runner", "suite", "params")
    missing = [k for k in required if k not in entry]
    if missing:
        raise CatalogError(f"{where}: missing {missing}")
    if not _ID.match(str(entry["id"])):
        raise CatalogError(f"{where}: id must be lower_snake_case")
    if entry["part"] not in PART_GROUPS:
        raise CatalogError(f"{where}: part must be 1..4, got {entry['part']!r}")
    sections = [str(entry["section"]), *map(str, entry.get("also_covers", []))]
    bad = [s for s in sections if not _SECTION.match(s)]
    if bad or not str(entry["section"]).startswith(f"{entry['part']}."):
        raise CatalogError(f"{where}: sections {sections} must look like '<part>.<1-6>' and match the part")
    if entry["domain"] not in DOMAINS:
        raise CatalogError(f"{where}: domain must be one of {DOMAINS}, got {entry['domain']!r}")
    params = entry["params"]
    if not isinstance(params, dict) or set(params) != set(PROFILES):
        raise CatalogError(f"{where}: params must give exactly the profiles {PROFILES}")
    if not all(isinstance(p, dict) for p in params.values()):
        raise CatalogError(f"{where}: params of each profile must be a mapping")
    return Case(
        id=entry["id"], part=int(entry["part"]), section=str(entry["section"]), domain=entry["domain"],
        title=str(entry["title"]), description=" ".join(str(entry["description"]).split()),
        runner=str(entry["runner"]), suite=str(entry["suite"]),
        params={k: dict(v) for k, v in params.items()}, also_covers=tuple(map(str, entry.get("also_covers", []))),
    )


def load_catalog(path: Union[Path, None] = None) -> list[Case]:
    path = path or Path(os.environ.get(ENV_CATALOG) or CATALOG_PATH)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CatalogError(f"cannot read catalog {path}: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("version") != 1 or not isinstance(raw.get("cases"), list):
        raise CatalogError(f"{path}: expected 'version: 1' and a 'cases' list")
    cases = [_case(e, i) for i, e in enumerate(raw["cases"])]
    ids = [c.id for c in cases]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise CatalogError(f"{path}: duplicate case ids {dupes}")
    return cases
