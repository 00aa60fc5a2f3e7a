"""DuckDB schema of the metrics store. Tables are the record; views are the analysts'
contract (documented in docs/analysts.md) and stay stable as tables evolve."""

SCHEMA_VERSION = 2
# v2: runs.run_key (a re-run of the same build, testbed and profile replaces its results),
# baselines (pinned per testbed and profile), regressions (findings against a baseline),
# superseded (what a re-run replaced).

TABLES = """
CREATE TABLE IF NOT EXISTS schema_info (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS builds (
    build_id VARCHAR PRIMARY KEY, version VARCHAR, worker_cmd VARCHAR, manifest JSON,
    content_sha256 VARCHAR, registered_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS testbeds (
    testbed_id VARCHAR PRIMARY KEY, hostname VARCHAR, cpu VARCHAR, cpu_cores INTEGER,
    memory_bytes BIGINT, gpus VARCHAR, fingerprint JSON, first_seen TIMESTAMP);
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY, build_id VARCHAR, testbed_id VARCHAR, profile VARCHAR,
    dagster_run_id VARCHAR, worker_cmd VARCHAR, started_at TIMESTAMP, last_write_at TIMESTAMP,
    run_key VARCHAR);
CREATE TABLE IF NOT EXISTS case_results (
    run_id VARCHAR, case_id VARCHAR, part INTEGER, section VARCHAR, also_covers VARCHAR,
    domain VARCHAR, title VARCHAR, verdict VARCHAR, reason VARCHAR, error VARCHAR,
    started_at TIMESTAMP, duration_s DOUBLE, notes JSON, written_at TIMESTAMP,
    PRIMARY KEY (run_id, case_id));
CREATE TABLE IF NOT EXISTS samples (
    run_id VARCHAR, case_id VARCHAR, seq INTEGER, metric VARCHAR, value DOUBLE, unit VARCHAR,
    t_s DOUBLE, labels JSON);
CREATE TABLE IF NOT EXISTS metrics (
    run_id VARCHAR, case_id VARCHAR, metric VARCHAR, statistic VARCHAR, value DOUBLE,
    unit VARCHAR, sample_count INTEGER);
CREATE TABLE IF NOT EXISTS expectation_results (
    run_id VARCHAR, case_id VARCHAR, check_name VARCHAR, expectation_type VARCHAR,
    spec_section VARCHAR, spec_text VARCHAR, metric VARCHAR, statistic VARCHAR,
    comparison VARCHAR, threshold DOUBLE, observed DOUBLE, unit VARCHAR, sample_count INTEGER,
    verdict VARCHAR, detail VARCHAR);
CREATE TABLE IF NOT EXISTS baselines (
    testbed_id VARCHAR, profile VARCHAR, build_id VARCHAR, pinned_at TIMESTAMP, note VARCHAR,
    PRIMARY KEY (testbed_id, profile));
CREATE TABLE IF NOT EXISTS superseded (
    run_key VARCHAR, case_id VARCHAR, old_run_id VARCHAR, new_run_id VARCHAR, old_verdict VARCHAR,
    superseded_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS regressions (
    run_id VARCHAR, case_id VARCHAR, metric VARCHAR, testbed_id VARCHAR, profile VARCHAR,
    build_id VARCHAR, baseline_build_id VARCHAR, baseline_source VARCHAR, direction VARCHAR,
    statistic VARCHAR, baseline_value DOUBLE, current_value DOUBLE, change_ratio DOUBLE,
    ci_low DOUBLE, ci_high DOUBLE, p_value DOUBLE, baseline_samples INTEGER,
    current_samples INTEGER, step_build_id VARCHAR, step_ratio DOUBLE, history_builds INTEGER,
    verdict VARCHAR, detail VARCHAR, detected_at TIMESTAMP);
"""

# Columns added after v1, applied to an older file on open (nothing is dropped or rewritten).
MIGRATIONS = """
ALTER TABLE runs ADD COLUMN IF NOT EXISTS run_key VARCHAR;
"""

VIEWS = """
CREATE OR REPLACE VIEW v_runs AS
SELECT r.run_id, r.build_id, b.version AS build_version, r.testbed_id, r.profile,
       r.dagster_run_id, r.worker_cmd, r.started_at, r.last_write_at, r.run_key,
       count(c.case_id) AS cases,
       count(*) FILTER (WHERE c.verdict = 'PASS') AS passed,
       count(*) FILTER (WHERE c.verdict = 'FAIL') AS failed,
       count(*) FILTER (WHERE c.verdict = 'INVALID') AS invalid,
       count(*) FILTER (WHERE c.verdict = 'SKIPPED') AS skipped,
       count(*) FILTER (WHERE c.verdict = 'ERROR') AS errors
FROM runs r LEFT JOIN builds b USING (build_id) LEFT JOIN case_results c USING (run_id)
GROUP BY ALL;

CREATE OR REPLACE VIEW v_verdicts AS
SELECT c.run_id, r.build_id, r.testbed_id, r.profile, c.case_id, c.part, c.section AS spec_section,
       c.also_covers, c.domain, c.title, c.verdict, c.reason, c.error, c.started_at, c.duration_s
FROM case_results c JOIN runs r USING (run_id);

CREATE OR REPLACE VIEW v_metrics AS
SELECT m.run_id, r.build_id, r.testbed_id, r.profile, m.case_id, m.metric, m.statistic,
       m.value, m.unit, m.sample_count
FROM metrics m JOIN runs r USING (run_id);

CREATE OR REPLACE VIEW v_expectations AS
SELECT e.run_id, r.build_id, r.testbed_id, r.profile, e.case_id, e.check_name AS expectation,
       e.spec_section, e.spec_text, e.metric, e.statistic, e.comparison, e.threshold, e.observed,
       e.unit, e.sample_count, e.verdict, e.verdict = 'PASS' AS passed, e.detail
FROM expectation_results e JOIN runs r USING (run_id);

-- Builds in the order they were first seen (build_seq 1 is the oldest): "across builds" means
-- this order.
CREATE OR REPLACE VIEW v_builds AS
SELECT build_id, version, worker_cmd, content_sha256, registered_at,
       row_number() OVER (ORDER BY registered_at, build_id) AS build_seq
FROM builds;

CREATE OR REPLACE VIEW v_samples AS
SELECT s.run_id, r.build_id, r.testbed_id, r.profile, s.case_id, s.seq, s.metric, s.value, s.unit,
       s.t_s, s.labels
FROM samples s JOIN runs r USING (run_id);

CREATE OR REPLACE VIEW v_regressions AS
SELECT g.run_id, g.build_id, b.build_seq, g.testbed_id, g.profile, g.case_id, g.metric,
       g.direction, g.statistic, g.baseline_build_id, g.baseline_source, g.baseline_value,
       g.current_value, g.change_ratio, g.ci_low, g.ci_high, g.p_value, g.baseline_samples,
       g.current_samples, g.step_build_id, g.step_ratio, g.history_builds, g.verdict, g.detail,
       g.detected_at
FROM regressions g LEFT JOIN v_builds b USING (build_id);
"""

VIEW_NAMES = ("v_runs", "v_verdicts", "v_metrics", "v_expectations", "v_builds", "v_samples", "v_regressions")
