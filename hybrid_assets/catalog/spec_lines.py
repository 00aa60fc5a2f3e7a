"""Every line of the spec's JSON blocks, and which of them are thresholds.

The spec (vendored verbatim as ``spec/000_cbbc6f41f8099de3.txt`` so a fresh clone can read it;
``HYBRID_SPEC_PATH`` points elsewhere) states its test cases as 24 fenced ```json blocks, one
under each ``### X.Y Title`` heading. Each block is read as JSON after ``// ...`` comments are
stripped (the spec annotates some lists: ``[1, 5, 10], // requests per second``) and walked to
its leaves. A leaf is a scalar, or a list of scalars taken whole (``[10, 50, 100]`` is one
workload parameter), except that each item of a ``validation_criteria`` list is a leaf of its
own: each item is a separate criterion.

Each leaf is a ``SpecLine`` with a stable id ``"<section>:<path>"``, e.g.
``2.1:stress_scenarios/0/performance_benchmarks/discovery_latency/stress_target``.

Classification (``kind``), decided in this order:

1. ``OVERRIDES``: a few (section, key) pairs where the rule below decides wrongly (each with
   its reason).
2. ``descriptive``: the leaf's own key names or narrates the test (``workflow_name``,
   ``scenario``, ``stage``, ``step``, ``action``, ``description``, ...).
3. Otherwise the keys of the leaf's path, innermost first (the leaf's own key included), are
   matched against ``CONTAINER_RULES``; the first match decides. Innermost first because the
   spec nests criteria inside workload descriptions (``failure_simulations/0/
   recovery_validation/detection_time`` is a criterion). The rules say:

   - ``threshold`` (a pass/fail criterion): ``expected_result``, ``expected_response``,
     ``expected_action``, ``expected_system_response(s)``, ``success_criteria``,
     ``validation_criteria``, ``performance_targets``, ``performance_benchmarks``,
     ``performance_standards``, any ``*_validation`` (``recovery_validation``,
     ``end_to_end_validation``, ``timeout_handling_validation``, ...), ``quality_assurance``
     and ``recovery_procedures`` (the behaviour the system must show after the failure);
   - ``monitoring``: ``performance_monitoring`` (what to record, with no pass/fail bound);
   - ``parameter`` (the workload, not a criterion): ``test_parameters``, ``test_methodology``,
     ``load_generation``, ``complexity_factors``, any ``*_simulation(s)`` and any ``*_mix``.

4. A leaf no rule decides is an error (``SpecError``): a new spec must be classified on purpose.

A threshold line is ``quantitative`` when its text states a number a measurement can be held
against: a digit (``under_5_seconds``, ``99.99_percent``, ``3x_...``) or the words ``zero`` or
a leading ``no`` (``no_system_crashes_during_stress`` is a count that must be 0), but not
``zero_copy`` (a technique, not a count). Otherwise it is qualitative
(``seamless_device_integration_without_service_interruption``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

ENV_SPEC_PATH = "HYBRID_SPEC_PATH"
SPEC_PATH = Path(__file__).resolve().parents[2] / "spec" / "000_cbbc6f41f8099de3.txt"

THRESHOLD = "threshold"
PARAMETER = "parameter"
DESCRIPTIVE = "descriptive"
MONITORING = "monitoring"

# Keys whose value names the enclosing test; the nearest one is a line's ``scenario``.
NAME_KEYS = ("scenario", "workflow_name", "stress_test_name", "failure_test_name", "benchmark_category")
DESCRIPTIVE_KEYS = frozenset({*NAME_KEYS, "test_objective", "description", "stage", "step", "action"})
# Lists whose items are separate criteria, not one value.
EXPLODED_LISTS = frozenset({"validation_criteria"})

CONTAINER_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), kind) for pattern, kind in (
        (r"expected_(result|response|action|system_responses?)", THRESHOLD),
        (r"success_criteria|validation_criteria", THRESHOLD),
        (r"performance_(targets|benchmarks|standards)", THRESHOLD),
        (r".+_validation", THRESHOLD),
        (r"quality_assurance|recovery_procedures", THRESHOLD),
        (r"performance_monitoring", MONITORING),
        (r"test_parameters|test_methodology|load_generation|complexity_factors", PARAMETER),
        (r".+_simulations?|.+_mix", PARAMETER),
    )
)

# (section, key) -> (kind, why). Only where the rule above cannot decide.
OVERRIDES: dict[tuple[str, str], tuple[str, str]] = {
    ("1.4", "pressure_threshold"): (
        PARAMETER, "the memory level at which the sibling expected_response is judged: the workload "
                   "point of that criterion, not a criterion itself"),
    ("2.6", "validation_accuracy_requirement"): (
        THRESHOLD, "a pass/fail criterion (over_99_percent_accuracy_maintained) written inside "
                   "test_parameters"),
}

_SECTION_HEADING = re.compile(r"^###\s+(\d+\.\d+)\s+(.*?)\s*$")
_ANY_HEADING = re.compile(r"^#{1,3}\s")
# "zero_copy" names a technique, not a count: zero_copy_data_transfer_success stays qualitative.
_NUMBER_WORD = re.compile(r"\d|(^|_)zero(?!_copy)(_|$)|^no_")


class SpecError(ValueError):
    """The spec cannot be read, or a block cannot be parsed or classified."""


@dataclass(frozen=True)
class SpecBlock:
    section: str
    title: str
    index: int  # 1-based position of the block in the file
    line: int  # 1-based line of its opening fence
    data: Any


@dataclass(frozen=True)
class SpecLine:
    section: str
    path: str
    key: str
    text: str
    scenario: Union[str, None]
    kind: str = ""
    quantitative: bool = False
    title: str = ""

    @property
    def id(self) -> str:
        return f"{self.section}:{self.path}"

    @property
    def part(self) -> int:
        return int(self.section.split(".")[0])

    @property
    def is_threshold(self) -> bool:
        return self.kind == THRESHOLD


def spec_path() -> Path:
    configured = os.environ.get(ENV_SPEC_PATH)
    return Path(configured) if configured else SPEC_PATH


def strip_comments(line: str) -> str:
    """``line`` without a ``// ...`` comment; a ``//`` inside a JSON string stays."""
    in_string = escaped = False
    for i, ch in enumerate(line):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif line.startswith("//", i):
            return line[:i].rstrip()
    return line


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last of two equal keys: a spec line would vanish without a word.
    keys = [k for k, _ in pairs]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise ValueError(f"duplicate keys {dupes}")
    return dict(pairs)


def parse_blocks(text: str, source: str = "spec") -> list[SpecBlock]:
    """The ```json blocks of the spec, each with the ``### X.Y`` section it sits under."""
    blocks: list[SpecBlock] = []
    section: Union[tuple[str, str], None] = None
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        heading = _SECTION_HEADING.match(stripped)
        if heading:
            section = (heading.group(1), heading.group(2))
        elif _ANY_HEADING.match(stripped):
            section = None  # "## Part 2", "### Phase 1: ...": no longer inside a numbered section
        elif stripped == "```json":
            start = i + 1
            end = start
            while end < len(lines) and lines[end].strip() != "```":
                end += 1
            index = len(blocks) + 1
            if section is None:
                raise SpecError(f"{source}: json block #{index} (line {i + 1}) is not under a '### X.Y' heading")
            where = f"{source}: section {section[0]} ({section[1]}), json block #{index} (line {i + 1})"
            if end == len(lines):
                raise SpecError(f"{where}: no closing ``` fence")
            body = "\n".join(strip_comments(line) for line in lines[start:end])
            try:
                data = json.loads(body, object_pairs_hook=_no_duplicate_keys)
            except json.JSONDecodeError as exc:
                raise SpecError(f"{where}: invalid JSON at spec line {start + exc.lineno}: {exc.msg}") from exc
            except ValueError as exc:  # from _no_duplicate_keys
                raise SpecError(f"{where}: {exc}") from exc
            blocks.append(SpecBlock(section[0], section[1], index, i + 1, data))
            i = end
        i += 1
    return blocks


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _render(value: Any) -> str:
    # As the spec writes it: strings bare, numbers and scalar lists in JSON notation.
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _leaves(node: Any, path: tuple[Union[str, int], ...], scenario: Union[str, None],
            ) -> Iterator[tuple[tuple[Union[str, int], ...], Any, Union[str, None]]]:
    if isinstance(node, dict):
        named = next((node[k] for k in NAME_KEYS if isinstance(node.get(k), str)), None)
        scenario = named or scenario
        for key, value in node.items():
            yield from _leaves(value, (*path, key), scenario)
    elif isinstance(node, list) and not (
            all(_is_scalar(v) for v in node) and not (path and path[-1] in EXPLODED_LISTS)):
        for i, value in enumerate(node):
            yield from _leaves(value, (*path, i), scenario)
    else:
        yield path, node, scenario


def classify(section: str, path: tuple[Union[str, int], ...]) -> Union[str, None]:
    """The kind of the leaf at ``path`` (see the module docstring); ``None`` if no rule decides."""
    keys = [p for p in path if isinstance(p, str)]
    if not keys:
        return None
    override = OVERRIDES.get((section, keys[-1]))
    if override:
        return override[0]
    if keys[-1] in DESCRIPTIVE_KEYS:
        return DESCRIPTIVE
    for key in reversed(keys):
        for pattern, kind in CONTAINER_RULES:
            if pattern.fullmatch(key):
                return kind
    return None


def is_quantitative(text: str) -> bool:
    return bool(_NUMBER_WORD.search(text.lower()))


def extract_lines(blocks: Iterable[SpecBlock], source: str = "spec") -> list[SpecLine]:
    """Every leaf of every block, classified; a leaf no rule classifies raises ``SpecError``."""
    out: list[SpecLine] = []
    for block in blocks:
        for path, value, scenario in _leaves(block.data, (), None):
            key = next((p for p in reversed(path) if isinstance(p, str)), "")
            where = "/".join(map(str, path))
            kind = classify(block.section, path)
            if kind is None:
                raise SpecError(f"{source}: section {block.section}, json block #{block.index}: cannot classify "
                                f"{where!r}; add a rule or an override in {__name__}")
            text = _render(value)
            out.append(SpecLine(
                section=block.section, path=where, key=key, text=text, scenario=scenario, kind=kind,
                quantitative=kind == THRESHOLD and is_quantitative(text), title=block.title,
            ))
    return out


def load_spec_lines(path: Union[Path, None] = None) -> list[SpecLine]:
    """Every line of the spec (default: the vendored copy, or ``$HYBRID_SPEC_PATH``)."""
    path = path or spec_path()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"cannot read spec {path}: {exc}") from exc
    return extract_lines(parse_blocks(text, str(path)), str(path))


def threshold_lines(lines: Union[Iterable[SpecLine], None] = None) -> list[SpecLine]:
    """The threshold lines among ``lines`` (default: every line of the default spec)."""
    return [line for line in (load_spec_lines() if lines is None else lines) if line.is_threshold]


def main(argv: Union[list[str], None] = None) -> int:
    """``python -m hybrid_assets.catalog.spec_lines [--section 2.1] [--all]``: print line ids."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m hybrid_assets.catalog.spec_lines", description=main.__doc__)
    p.add_argument("--section", action="append", default=[], help="only these sections (repeatable)")
    p.add_argument("--all", action="store_true", help="every leaf, not only threshold lines")
    args = p.parse_args(argv)
    for line in load_spec_lines():
        if (args.all or line.is_threshold) and (not args.section or line.section in args.section):
            q = "" if not line.is_threshold else (" [quantitative]" if line.quantitative else " [qualitative]")
            print(f"{line.section}:{line.path}  {line.kind}{q}  = {line.text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
