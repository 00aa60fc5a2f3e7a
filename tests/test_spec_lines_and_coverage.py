"""The spec's lines are extracted and classified, suites cite real lines, docs/coverage.md is current."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hybrid_assets.catalog import coverage
from hybrid_assets.catalog.loader import load_catalog
from hybrid_assets.catalog.spec_lines import (
    DESCRIPTIVE,
    ENV_SPEC_PATH,
    MONITORING,
    OVERRIDES,
    PARAMETER,
    SPEC_PATH,
    THRESHOLD,
    SpecError,
    SpecLine,
    load_spec_lines,
    parse_blocks,
    strip_comments,
    threshold_lines,
)
from hybrid_assets.gx_suites import load_suite

SHARED_SPEC = Path(__file__).resolve().parents[2] / "shared" / "spec" / SPEC_PATH.name
COLD = "1.1:workflow_stages/0/test_scenarios/0/"


@pytest.fixture(autouse=True)
def _vendored_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_SPEC_PATH, raising=False)


@pytest.fixture(scope="module")
def lines() -> dict[str, SpecLine]:
    return {line.id: line for line in load_spec_lines(SPEC_PATH)}


def test_parser_finds_every_block_under_its_section() -> None:
    blocks = parse_blocks(SPEC_PATH.read_text(encoding="utf-8"))
    assert len(blocks) == 24
    assert [b.section for b in blocks] == [f"{p}.{s}" for p in range(1, 5) for s in range(1, 7)]
    assert blocks[0].title == "Device Discovery → Inference Execution Workflow"


def test_vendored_spec_is_the_shared_one() -> None:
    if not SHARED_SPEC.exists():
        pytest.skip("no ../shared checkout beside the repository")
    assert SPEC_PATH.read_bytes() == SHARED_SPEC.read_bytes()


def test_comments_are_stripped_outside_strings_only() -> None:
    assert strip_comments('  "a": [1, 5, 10], // requests per second') == '  "a": [1, 5, 10],'
    assert strip_comments('  "url": "http://x" // c') == '  "url": "http://x"'
    assert strip_comments(r'  "q": "say \"//\" twice"') == r'  "q": "say \"//\" twice"'


@pytest.mark.parametrize(("line_id", "kind", "quantitative", "text"), [
    (COLD + "success_criteria/discovery_time", THRESHOLD, True, "less_than_5_seconds"),
    (COLD + "test_steps/2/validation_criteria/1", THRESHOLD, True, "zero_communication_errors"),
    (COLD + "test_steps/1/validation_criteria/0", THRESHOLD, False, "memory_capacity_accuracy"),
    ("1.1:workflow_stages/0/test_scenarios/1/test_steps/1/expected_result", THRESHOLD, False,
     "seamless_device_integration_without_service_interruption"),
    ("1.2:workflow_stages/2/test_scenarios/0/test_steps/0/expected_result", THRESHOLD, False,
     "zero_copy_data_transfer_success"),
    ("1.3:workflow_stages/0/test_scenarios/0/test_parameters/batch_sizes", PARAMETER, False,
     "[10, 50, 100, 500, 1000]"),
    ("1.4:memory_pressure_scenarios/0/expected_system_responses/0/pressure_threshold", PARAMETER, False, "75_percent"),
    ("1.5:error_scenarios/0/failure_simulations/0/recovery_validation/detection_time", THRESHOLD, True,
     "under_5_seconds"),
    ("1.5:error_scenarios/0/failure_simulations/0/initial_failure", PARAMETER, False, "primary_device_failure"),
    ("2.1:stress_scenarios/0/performance_benchmarks/discovery_latency/stress_target", THRESHOLD, True,
     "under_5_seconds_even_at_100_rps"),
    ("2.1:stress_scenarios/0/test_parameters/discovery_request_frequency", PARAMETER, False,
     "[1, 5, 10, 25, 50, 100]"),
    ("2.1:stress_scenarios/1/validation_criteria/system_stability", THRESHOLD, True, "no_system_crashes_during_stress"),
    ("2.2:stress_scenarios/0/performance_monitoring/gc_performance/gc_frequency", MONITORING, False,
     "monitor_gc_cycles_per_minute"),
    ("2.6:stress_scenarios/1/test_parameters/validation_accuracy_requirement", THRESHOLD, True,
     "over_99_percent_accuracy_maintained"),
    ("3.5:timeout_scenarios/1/batch_timeout_simulation/partial_completion", PARAMETER, False,
     "validate_handling_of_partially_completed_batches"),
    ("4.1:performance_standards/device_communication_benchmarks/communication_establishment/reliability",
     THRESHOLD, True, "99.99_percent_connection_success_rate"),
    ("4.5:performance_standards/inference_throughput_benchmarks/sustained_throughput/batch_processing",
     THRESHOLD, True, "3x_throughput_improvement_with_batch_size_4"),
    ("1.1:workflow_name", DESCRIPTIVE, False, "device_to_inference_complete_pipeline"),
    (COLD + "test_steps/0/action", DESCRIPTIVE, False, "trigger_device_discovery"),
])
def test_known_lines_are_classified(lines: dict[str, SpecLine], line_id: str, kind: str, quantitative: bool,
                                    text: str) -> None:
    line = lines[line_id]
    assert (line.kind, line.quantitative, line.text) == (kind, quantitative, text)


def test_each_validation_criteria_item_is_a_line_of_its_own(lines: dict[str, SpecLine]) -> None:
    first, second = (lines[COLD + f"test_steps/0/validation_criteria/{i}"] for i in (0, 1))
    assert (first.text, second.text) == ("device_count_accuracy", "device_capability_completeness")
    assert first.is_threshold and second.is_threshold
    assert first.key == "validation_criteria" and first.scenario == "cold_start_device_discovery"
    assert not any(line.text.startswith("[") and line.key == "validation_criteria" for line in lines.values())


def test_every_section_has_thresholds_and_every_override_is_used(lines: dict[str, SpecLine]) -> None:
    thresholds = threshold_lines(lines.values())
    assert {t.section for t in thresholds} == {f"{p}.{s}" for p in range(1, 5) for s in range(1, 7)}
    assert all(t.text for t in thresholds)
    used = {(line.section, line.key) for line in lines.values()}
    assert set(OVERRIDES) <= used, "an override no longer matches any spec line"


def _spec(tmp_path: Path, block: str, heading: str = "### 2.3 Concurrent Model Loading Tests") -> Path:
    path = tmp_path / "spec.txt"
    path.write_text(f"# Spec\n\n{heading}\n\n#### Sub\n```json\n{block}\n```\n", encoding="utf-8")
    return path


def test_broken_block_names_its_section(tmp_path: Path) -> None:
    path = _spec(tmp_path, '{\n  "stress_test_name": "x",\n  "performance_targets": {"a": "under_1s",}\n}')
    with pytest.raises(SpecError, match=r"section 2\.3 \(Concurrent Model Loading Tests\), json block #1.*line 9"):
        load_spec_lines(path)


def test_block_outside_a_section_and_unclassifiable_leaves_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"not under a '### X\.Y' heading"):
        load_spec_lines(_spec(tmp_path, "{}", heading="## Part 2"))
    with pytest.raises(SpecError, match=r"section 2\.3, json block #1: cannot classify 'mystery/x'"):
        load_spec_lines(_spec(tmp_path, '{"mystery": {"x": "under_5_seconds"}}'))
    with pytest.raises(SpecError, match="duplicate keys"):
        load_spec_lines(_spec(tmp_path, '{"success_criteria": {"a": "x", "a": "y"}}'))


def test_env_points_at_another_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_SPEC_PATH, str(_spec(tmp_path, '{"success_criteria": {"t": "under_5_seconds"}}')))
    assert [(t.id, t.quantitative) for t in threshold_lines()] == [("2.3:success_criteria/t", True)]


def test_every_cited_spec_line_exists_and_lies_in_its_cases_sections(lines: dict[str, SpecLine]) -> None:
    for case in load_catalog():
        suite = load_suite(case.suite, coverage.EXPECTATIONS_DIR)
        for e in suite.expectations:
            cited = e.meta.get("spec_lines")
            assert cited, f"{suite.name} {e.check}: meta.spec_lines is empty"
            for line_id in cited:
                assert line_id in lines and lines[line_id].is_threshold, f"{e.check} cites unknown {line_id!r}"
                assert lines[line_id].section in {case.section, *case.also_covers}
                assert lines[line_id].section == line_id.split(":")[0]


def test_cold_start_suite_encodes_its_lines() -> None:
    cov = coverage.build_coverage()
    encoded = {t.id for t in cov.encoded(cov.thresholds)}
    assert COLD + "success_criteria/discovery_time" in encoded
    ram = "4.1:performance_standards/device_discovery_benchmarks/cold_start_discovery/resource_usage"
    assert {e.case for e in cov.encodings[ram]} == {"cold_start_discovery_ram_usage"}
    assert ram in {t.id for t in cov.measured(cov.thresholds)}  # its runner is written
    checks = {e.check for e in cov.encodings[COLD + "success_criteria/accuracy"]}
    assert checks == {"device_detection_100_percent"}
    assert not cov.uncited


def test_a_typo_in_spec_lines_is_an_error(tmp_path: Path) -> None:
    case = load_catalog()[0]
    raw = json.loads((coverage.EXPECTATIONS_DIR / f"{case.suite}.json").read_text())
    raw["expectations"][0]["meta"]["spec_lines"] = [COLD + "success_criteria/discovery_tme"]
    (tmp_path / f"{case.suite}.json").write_text(json.dumps(raw))
    with pytest.raises(coverage.CoverageError, match=r"discovery_tme'.*not a threshold line"):
        coverage.build_coverage(expectations_dir=tmp_path)
    raw["expectations"][0]["meta"]["spec_lines"] = ["2.1:stress_scenarios/0/performance_benchmarks/"
                                                    "discovery_latency/stress_target"]
    (tmp_path / f"{case.suite}.json").write_text(json.dumps(raw))
    with pytest.raises(coverage.CoverageError, match="outside case"):
        coverage.build_coverage(expectations_dir=tmp_path)


def test_coverage_document_is_up_to_date() -> None:
    assert coverage.COVERAGE_PATH.read_text() == coverage.render(), (
        "docs/coverage.md is stale: run `python -m hybrid_assets.catalog.coverage --write`")
    assert coverage.main(["--check"]) == 0


def test_report_counts_and_lists_missing_lines() -> None:
    text = coverage.render()
    assert "| 1: Workflows | 85 |" in text and "| **Total** | 261 |" in text
    assert text.count("### ") == 24
    # With only the cold-start case in the catalog, the rest of the spec is MISSING.
    only_cold = coverage.build_coverage(catalog_path=coverage.EXPECTATIONS_DIR.parent / "hybrid_assets" / "catalog"
                                        / "cases" / "part1.yaml")
    partial = coverage.render(only_cold)
    assert "`under_100mb_ram_during_discovery` | Q | **MISSING** |" in partial
    assert "| **Total** | 261 | 155 | 106 | 18 (7 %) | 243 |" in partial
