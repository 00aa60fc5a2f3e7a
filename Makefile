# Two commands do all the set-up on a fresh clone:
#   make run    create the environment, run the validation job (smoke profile), print verdicts
#   make test   create the environment, run the tests
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export DAGSTER_HOME ?= $(CURDIR)/var/dagster
# Nothing is fetched from a model hub at run time, ever.
export HF_HUB_OFFLINE := 1

# Debian libraries the Real-ESRGAN wheel needs even on the CPU (root; Debian's registry). Without
# them the worker's upscaler reports the model backend unavailable and the classical one serves.
system-deps:
	@if ldconfig -p | grep -q 'libvulkan.so.1' && ldconfig -p | grep -q 'libomp.so.5'; then echo 'system-deps: present'; \
	else apt-get install -y -q libvulkan1 libomp5 >/dev/null || (apt-get update -q >/dev/null && apt-get install -y -q libvulkan1 libomp5 >/dev/null); fi

.PHONY: system-deps dagster-config setup models run gate test test-fast lint schema suites coverage bench bench-load bench-models bench-postprocess bench-queue bench-sessions bench-regress dev summary report clean

$(STAMP): requirements/lock.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --upgrade pip
	# torch first, pinned: an unpinned resolve pulls a multi-GB CUDA build.
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -r requirements/lock.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Concurrency pools: every case belongs to its testbed's pool (testbed-$$HYBRID_TESTBED_POOL, default
# testbed-local); limit 1 means no two cases ever measure on one testbed at once, across all runs.
# An older file gets the pool section added (once).
$(DAGSTER_HOME)/dagster.yaml:
	mkdir -p $(DAGSTER_HOME)
	printf 'telemetry:\n  enabled: false\n' > $@

dagster-config: $(DAGSTER_HOME)/dagster.yaml
	@grep -q '^concurrency:' $< || printf 'concurrency:\n  pools:\n    default_limit: 1\n' >> $<

setup: $(STAMP) dagster-config

# Tiny random-weight pipelines, a ControlNet, a LoRA and synthetic weight files, built from code
# (nothing downloaded); kept when current. HYBRID_MODEL_ROOT moves them.
MODEL_ROOT ?= $(or $(HYBRID_MODEL_ROOT),var/models)
models: setup
	$(BIN)/python -m workers.models.generate --root $(MODEL_ROOT) --profile $${HYBRID_PROFILE:-smoke}

# `make run` succeeds when the pipeline ran, whatever the verdicts (they are in the summary and
# the reports); `make gate` fails on any line that did not pass, for CI use.
run: setup models
	$(BIN)/python -m hybrid_assets run --profile $${HYBRID_PROFILE:-smoke}; rc=$$?; \
	if [ $$rc -eq 1 ]; then echo "(some checks did not pass: see the summary above and the reports)"; \
	elif [ $$rc -ne 0 ]; then exit $$rc; fi

gate: setup models
	$(BIN)/python -m hybrid_assets run --profile $${HYBRID_PROFILE:-smoke}

summary: setup
	$(BIN)/python -m hybrid_assets summary

report: setup
	$(BIN)/python -m hybrid_assets report

test: setup models
	$(BIN)/ruff check workers hybrid_assets tests
	$(BIN)/python -m workers.protocol.schema --check
	$(BIN)/python -m hybrid_assets.catalog.suites --check
	$(BIN)/python -m hybrid_assets.catalog.coverage --check
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not subprocess and not dagster"

lint: setup
	$(BIN)/ruff check workers hybrid_assets tests

schema: setup
	$(BIN)/python -m workers.protocol.schema --write

suites: setup
	$(BIN)/python -m hybrid_assets.catalog.suites --write

coverage: setup suites
	$(BIN)/python -m hybrid_assets.catalog.coverage --write

bench: setup
	$(BIN)/python -m workers.bench.ipc

bench-load: setup
	$(BIN)/python -m hybrid_assets.load.bench

bench-models: setup models
	$(BIN)/python -m workers.bench.inference --root $(MODEL_ROOT)

# Issue 6: Real-ESRGAN against the classical upscaler per size; admission through the job queue at
# 1,000 requests per second against the same op without it; session creation and cleanup times.
bench-postprocess: setup
	$(BIN)/python -m workers.bench.postprocess

bench-queue: setup models
	$(BIN)/python -m workers.bench.queue

bench-sessions: setup
	$(BIN)/python -m workers.bench.sessions

# Store ingest of 1,000,000 samples against a bare DuckDB insert; regression detection over 100
# builds; the testbed fingerprint's cost.
bench-regress: setup
	$(BIN)/python -m hybrid_assets.regress.bench

dev: setup
	$(BIN)/dagster dev -w workspace.yaml

clean:
	rm -rf var .pytest_cache .ruff_cache
