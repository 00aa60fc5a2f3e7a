"""The catalog and its suites agree with each other, with the runners and with GX."""

from __future__ import annotations

from pathlib import Path

import pytest

from hybrid_assets.catalog import PROFILES, CatalogError, load_catalog, resolve_profile
from hybrid_assets.gx_suites import SuiteError, load_suite, verify_with_gx
from hybrid_assets.runners import runner_names


def test_every_case_has_a_runner_a_gx_valid_suite_and_all_profiles() -> None:
    cases = load_catalog()
    assert cases, "the catalog is empty"
    for case in cases:
        assert case.runner in runner_names()
        suite = load_suite(case.suite)
        verify_with_gx(suite)
        assert set(case.params) == set(PROFILES)
        sections = {case.section, *case.also_covers}
        for e in suite.expectations:
            assert e.meta["spec_section"] in sections, f"{e.check} cites {e.meta['spec_section']}"
            assert e.meta["spec_text"].strip()


def test_profiles_scale_the_work_not_the_thresholds() -> None:
    case = next(c for c in load_catalog() if c.id == "cold_start_device_discovery")
    smoke, spec = case.params_for("smoke"), case.params_for("spec")
    assert spec["cold_starts"] > smoke["cold_starts"] >= 44  # 44 settle a p90 claim
    assert spec["round_trips"] > smoke["round_trips"] >= 459  # 459 settle a p99 claim


def test_unknown_profile_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CatalogError, match="unknown profile 'fast'"):
        resolve_profile("fast")
    monkeypatch.setenv("HYBRID_PROFILE", "standard")
    assert resolve_profile(None) == "standard"


@pytest.mark.parametrize(("text", "problem"), [
    ("version: 1\ncases: [{id: x}]", "missing"),
    ("version: 2\ncases: []", "version: 1"),
    ("version: 1\ncases: [{id: Bad-Id, part: 1, section: '1.1', domain: device, title: t, description: d,"
     " runner: r, suite: s, params: {smoke: {}, standard: {}, spec: {}}}]", "lower_snake_case"),
    ("version: 1\ncases: [{id: a, part: 1, section: '2.1', domain: device, title: t, description: d,"
     " runner: r, suite: s, params: {smoke: {}, standard: {}, spec: {}}}]", "does not belong to part 1"),
    ("version: 1\ncases: [{id: a, part: 1, section: '1.1', domain: gpu, title: t, description: d,"
     " runner: r, suite: s, params: {smoke: {}, standard: {}, spec: {}}}]", "domain"),
    ("version: 1\ncases: [{id: a, part: 1, section: '1.1', domain: device, title: t, description: d,"
     " runner: r, suite: s, params: {smoke: {}}}]", "profiles"),
    ("{{{", "cannot read catalog"),
])
def test_bad_catalog_entries_are_named(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "cases.yaml"
    path.write_text(text)
    with pytest.raises(CatalogError, match=problem):
        load_catalog(path)


def test_bad_suites_are_named(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match="not found"):
        load_suite("nope", tmp_path)
    (tmp_path / "s.json").write_text("{not json")
    with pytest.raises(SuiteError, match="unreadable"):
        load_suite("s", tmp_path)
    (tmp_path / "t.json").write_text('{"name": "t", "expectations": [{"type": "expect_column_max_to_be_between",'
                                     ' "kwargs": {"column": "value", "max_value": 1}, "meta": {"check": "c"}}]}')
    with pytest.raises(SuiteError, match="meta lacks"):
        load_suite("t", tmp_path)


def test_catalog_cross_checks_name_entry_and_field(monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from hybrid_assets import runners
    from hybrid_assets.catalog.checks import validate_catalog

    case = load_catalog()[0]
    validate_catalog([case])  # the real catalog is consistent
    with pytest.raises(CatalogError, match=r"entry 'cold_start_device_discovery', field 'runner': .*no runner"):
        validate_catalog([dataclasses.replace(case, runner="device.typo")])
    with pytest.raises(CatalogError, match=r"field 'suite'.*not found"):
        validate_catalog([dataclasses.replace(case, suite="no.such.suite")])
    narrow = runners.RunnerSpec(case.runner, frozenset({"round_trip_s", "comm_error"}), None)
    monkeypatch.setattr(runners, "_registry", lambda: {narrow.name: narrow})
    with pytest.raises(CatalogError, match=r"judges \['capability_assessment_s'.*does not produce"):
        validate_catalog([case])


def _entry(**line_overrides: object) -> str:
    line = {"check": "c", "metric": "m_s", "statistic": "p90", "comparison": "<=", "threshold": 1.0, "unit": "s",
            "spec_lines": ["1.1:workflow_stages/0/test_scenarios/0/success_criteria/discovery_time"]}
    line.update(line_overrides)
    import yaml

    return yaml.safe_dump({"version": 1, "part": 1, "cases": [{
        "id": "a", "section": "1.1", "domain": "device", "title": "t", "description": "d", "runner": "device.x",
        "params": {"smoke": {}, "standard": {}, "spec": {}}, "lines": [line]}]})


@pytest.mark.parametrize(("overrides", "problem"), [
    ({"statistic": "p42"}, "field 'statistic'"),
    ({"comparison": "<"}, "field 'comparison'"),
    ({"threshold": "fast"}, "field 'threshold'"),
    ({"spec_lines": []}, "field 'spec_lines'"),
    ({"spec_lines": ["discovery_time"]}, "field 'spec_lines'"),
    ({"metric": "Bad Metric"}, "field 'metric'"),
    ({"check": "no spaces allowed"}, "field 'check'"),
    ({"min_samples": 0}, "field 'min_samples'"),
])
def test_bad_lines_are_named_with_entry_and_field(tmp_path: Path, overrides: dict, problem: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(_entry(**overrides))
    with pytest.raises(CatalogError, match=problem) as info:
        load_catalog(path)
    assert "entry 'a'" in str(info.value)


def test_validate_reports_unknown_spec_line_runner_and_metric(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from hybrid_assets.catalog import validate

    path = tmp_path / "p.yaml"
    path.write_text(_entry(spec_lines=["1.1:no/such/line"]))
    assert validate.main([str(path)]) == 1
    out = capsys.readouterr().out
    assert "'1.1:no/such/line' is not a threshold line" in out
    assert "'device.x' is neither implemented nor planned" in out


def test_generated_suites_are_current_and_match_their_lines() -> None:
    import json

    from hybrid_assets.catalog import suites

    rendered = suites.render_all()
    assert rendered, "no generated suite"
    for name, text in rendered.items():
        assert (suites.EXPECTATIONS_DIR / name).read_text() == text, f"{name} is stale: run `make suites`"
    doc = json.loads(rendered["part1.cold_start_device_discovery.json"])
    rt = next(e for e in doc["expectations"] if e["meta"]["check"] == "round_trip_p99_under_10ms")
    assert rt["kwargs"]["quantile_ranges"] == {"quantiles": [0.99], "value_ranges": [[None, 0.01]]}
    assert rt["meta"]["spec_text"].startswith("4.1 latency: under_10_milliseconds_round_trip")


def test_every_threshold_line_of_the_spec_is_encoded_and_parts_meet_the_promised_counts() -> None:
    from hybrid_assets.catalog.coverage import PROMISED_CASES, build_coverage

    cov = build_coverage()
    missing = [t.id for t in cov.thresholds if t.id not in cov.encodings]
    assert not missing, f"threshold lines with no expectation: {missing[:10]}"
    for part, promised in PROMISED_CASES.items():
        count = sum(1 for c in cov.cases if c.part == part)
        assert count >= promised, f"part {part}: {count} cases, the spec promises {promised}"
    assert not cov.uncited, "every expectation must cite the spec lines it encodes"


def test_written_runners_produce_at_least_what_their_plans_promised() -> None:
    from hybrid_assets import runners
    from hybrid_assets.runners.planned import planned_runners

    for name, promised in planned_runners().items():
        spec = runners.runner_spec(name)
        if spec.fn is not None:
            assert promised <= spec.metrics, f"{name} lacks {sorted(promised - spec.metrics)}"
