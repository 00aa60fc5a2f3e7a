"""Markdown, HTML and JUnit XML renderings of a ``RunReport``."""

from __future__ import annotations

import html
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from hybrid_assets.report.model import RunReport


def _num(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _lines(report: RunReport, case_id: str) -> list[dict[str, Any]]:
    e = report.expectations
    return e[e.case_id == case_id].to_dict("records")


def to_markdown(report: RunReport) -> str:
    r = report.run
    out = [f"# Validation run {r['run_id']}", "",
           f"Build `{r['build_id']}` ({r['build_version']}), testbed `{r['testbed_id']}`, profile `{r['profile']}`, "
           f"worker `{r['worker_cmd']}`.", "",
           f"**Production readiness: {'READY' if report.production_ready else 'NOT READY'}**", "",
           "| Success criterion | Required | Met | Evidence |", "|---|---|---|---|"]
    for c in report.criteria:
        out.append(f"| {c.name} (part {c.part}) | {c.required} | {'yes' if c.met else 'no'} | {c.evidence} |")
    out += ["", *_regressions_markdown(report), "## Cases", ""]
    for v in report.verdicts.to_dict("records"):
        out += [f"### {v['verdict']} `{v['case_id']}` (spec {v['spec_section']}, {v['domain']}, "
                f"{_num(v['duration_s'])} s)", "", v["reason"] or "", "",
                "| Verdict | Spec | Expectation | Observed | Threshold | Samples | Detail |",
                "|---|---|---|---|---|---|---|"]
        for e in _lines(report, v["case_id"]):
            out.append(f"| {e['verdict']} | {e['spec_section']}: {e['spec_text']} | `{e['expectation']}` | "
                       f"{_num(e['observed'])} {e['unit']} | {e['comparison']} {_num(e['threshold'])} | "
                       f"{e['sample_count']} | {e['detail']} |")
        out.append("")
        for png in report.trends.get(v["case_id"], []):
            out += [f"![trend of {v['case_id']}]({png})", ""]
    return "\n".join(out)


def _regressions_markdown(report: RunReport) -> list[str]:
    r = report.regressions
    if not len(r):
        return ["## Against the baseline build", "", "No comparison was made (no earlier build on this testbed "
                "and profile, or none stored).", ""]
    counts = r.verdict.value_counts().to_dict()
    out = ["## Against the baseline build", "",
           "Per metric a spec line judges, on this testbed and profile: " +
           ", ".join(f"{k} {counts[k]}" for k in ("REGRESSED", "DRIFTED", "IMPROVED", "UNCHANGED", "INVALID")
                     if k in counts) + ".", ""]
    shown = r[r.verdict.isin(["REGRESSED", "DRIFTED", "IMPROVED"])]
    if len(shown):
        out += ["| Verdict | Case | Metric | Baseline build | Ratio | CI | p | Detail |",
                "|---|---|---|---|---|---|---|---|"]
        for f in shown.to_dict("records"):
            ci = f"{_num(f['ci_low'])}-{_num(f['ci_high'])}"
            out.append(f"| {f['verdict']} | `{f['case_id']}` | {f['metric']} ({f['statistic']}) | "
                       f"{f['baseline_build_id'] or '-'} | {_num(f['change_ratio'])} | {ci} | {_num(f['p_value'])} | "
                       f"{f['detail']} |")
        out.append("")
    return out


def to_html(report: RunReport) -> str:
    esc = html.escape
    r = report.run
    rows = "".join(
        f"<tr class='{esc(c.name)}'><td>{esc(c.name)}</td><td>{esc(c.required)}</td>"
        f"<td>{'yes' if c.met else 'no'}</td><td>{esc(c.evidence)}</td></tr>" for c in report.criteria)
    cases = []
    for v in report.verdicts.to_dict("records"):
        lines = "".join(
            f"<tr class='{esc(e['verdict'])}'><td>{esc(e['verdict'])}</td><td>{esc(e['spec_section'])}: "
            f"{esc(e['spec_text'])}</td><td><code>{esc(e['expectation'])}</code></td>"
            f"<td>{esc(_num(e['observed']))} {esc(e['unit'])}</td><td>{esc(e['comparison'])} "
            f"{esc(_num(e['threshold']))}</td><td>{e['sample_count']}</td><td>{esc(e['detail'])}</td></tr>"
            for e in _lines(report, v["case_id"]))
        images = "".join(f"<p><img alt='trend' src='{esc(png)}'></p>" for png in report.trends.get(v["case_id"], []))
        cases.append(f"<h3 class='{esc(v['verdict'])}'>{esc(v['verdict'])} {esc(v['case_id'])} "
                     f"(spec {esc(v['spec_section'])})</h3><p>{esc(v['reason'] or '')}</p>"
                     f"<table><tr><th>Verdict</th><th>Spec line</th><th>Expectation</th><th>Observed</th>"
                     f"<th>Threshold</th><th>Samples</th><th>Detail</th></tr>{lines}</table>{images}")
    flagged = "".join(
        f"<tr class='{esc(f['verdict'])}'><td>{esc(f['verdict'])}</td><td>{esc(f['case_id'])}</td>"
        f"<td>{esc(f['metric'])} ({esc(f['statistic'])})</td><td>{esc(str(f['baseline_build_id'] or '-'))}</td>"
        f"<td>{esc(_num(f['change_ratio']))}</td><td>{esc(f['detail'])}</td></tr>"
        for f in report.regressions.to_dict("records") if f["verdict"] in ("REGRESSED", "DRIFTED", "IMPROVED"))
    baseline = (f"<h2>Against the baseline build</h2><table><tr><th>Verdict</th><th>Case</th><th>Metric</th>"
                f"<th>Baseline</th><th>Ratio</th><th>Detail</th></tr>{flagged}</table>" if flagged else "")
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1em}"
             "td,th{border:1px solid #ccc;padding:4px 8px;font-size:90%}.PASS{color:#070}.FAIL,.ERROR{color:#b00}"
             ".INVALID,.DRIFTED{color:#a60}.REGRESSED{color:#b00}.IMPROVED{color:#070}.SKIPPED{color:#666}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Run {esc(r['run_id'])}</title>"
            f"<style>{style}</style></head><body><h1>Validation run {esc(r['run_id'])}</h1>"
            f"<p>Build <code>{esc(str(r['build_id']))}</code>, testbed <code>{esc(str(r['testbed_id']))}</code>, "
            f"profile <code>{esc(str(r['profile']))}</code></p>"
            f"<h2>Production readiness: {'READY' if report.production_ready else 'NOT READY'}</h2>"
            f"<table><tr><th>Criterion</th><th>Required</th><th>Met</th><th>Evidence</th></tr>{rows}</table>"
            f"{baseline}<h2>Cases</h2>{''.join(cases)}</body></html>")


def to_junit(report: RunReport) -> str:
    """A testsuite per part, a testcase per spec line: FAIL a failure, ERROR an error, INVALID
    a failure of type INVALID (the claim could not be made), SKIPPED skipped."""
    root = ET.Element("testsuites", name=f"hybrid-validation {report.run['run_id']}")
    for part, group in report.verdicts.groupby("part"):
        suite = ET.SubElement(root, "testsuite", name=f"part{part}")
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        for v in group.to_dict("records"):
            lines = _lines(report, v["case_id"]) or [None]
            for e in lines:
                name = e["expectation"] if e else "case"
                tc = ET.SubElement(suite, "testcase", classname=f"part{part}.{v['case_id']}", name=name,
                                   time=f"{v['duration_s']:.3f}")
                verdict, detail = (e["verdict"], e["detail"]) if e else (v["verdict"], v["reason"])
                counts["tests"] += 1
                if verdict in ("FAIL", "INVALID"):
                    ET.SubElement(tc, "failure", type=verdict, message=detail or verdict)
                    counts["failures"] += 1
                elif verdict == "ERROR":
                    ET.SubElement(tc, "error", type="ERROR", message=detail or "error")
                    counts["errors"] += 1
                elif verdict == "SKIPPED":
                    ET.SubElement(tc, "skipped", message=detail or "skipped")
                    counts["skipped"] += 1
        for k, n in counts.items():
            suite.set(k, str(n))
    return ET.tostring(root, encoding="unicode", xml_declaration=True)


def write_reports(report: RunReport, directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": directory / "report.md", "html": directory / "report.html", "junit": directory / "junit.xml"}
    paths["markdown"].write_text(to_markdown(report))
    paths["html"].write_text(to_html(report))
    paths["junit"].write_text(to_junit(report))
    return paths
