# Sightline: `make up` runs everything on this machine (no Docker), `make test` runs the suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SIGHTLINE := $(BIN)/sightline

.DEFAULT_GOAL := help

.PHONY: help up up-citus down status test test-citus lint migrate install install-dev clean bench-ingest bench-scale \
	bench-tracing bench-replay bench-query bench-rollups bench-session-list tracker tracker-deps pages pages-deps screenshots \
	capture-recordings load chaos attack

help: ## List the targets with one line each
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install --quiet -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@ $(VENV)/.installed

$(VENV)/.installed-load: pyproject.toml | $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[load]'
	@touch $@

install: $(VENV)/.installed ## Create .venv and install Sightline into it

install-dev: $(VENV)/.installed-dev ## Install Sightline with the test and lint tools

up: install ## Start Postgres, PgBouncer, ingest :8001, query :8002, replay :8003; print the demo keys
	$(SIGHTLINE) up

# Citus (docs/scaling.md): needs citus.so for PostgreSQL 15 (../shared/citus/build.sh builds it).
CITUS_WORKERS ?= 2
# The suites whose SQL runs on the distributed tables; see docs/scaling.md, "CI on Citus".
CITUS_TESTS ?= tests/ingest tests/query tests/replay tests/hostile tests/common/test_citus_routing.py \
	tests/common/test_citus_operations.py tests/common/test_project_keys.py tests/common/test_migrations.py

up-citus: install ## Like `make up`, with Postgres a Citus coordinator of CITUS_WORKERS (2) workers
	$(SIGHTLINE) up --citus-workers $(CITUS_WORKERS)

down: ## Stop everything `make up` started
	@if [ -x $(SIGHTLINE) ]; then $(SIGHTLINE) down; else echo "nothing to stop (no $(VENV))"; fi

status: ## Show what runs and whether each service is ready
	@$(SIGHTLINE) status

migrate: install ## Apply migrations to the local cluster (make up does this too)
	$(SIGHTLINE) migrate

test: install-dev ## Run the test suite (it starts its own Postgres and PgBouncer)
	@# The bundle checks need esbuild from npm; without npm those tests are skipped.
	@if command -v npm >/dev/null && [ ! -d tracker/node_modules/esbuild ]; then $(MAKE) --no-print-directory tracker-deps; fi
	@if command -v npm >/dev/null && [ ! -d web/node_modules/esbuild ]; then $(MAKE) --no-print-directory pages-deps; fi
	$(BIN)/pytest

test-citus: install-dev ## Run the Citus subset of the suite on a coordinator + 2 workers (CITUS_TESTS)
	SIGHTLINE_TEST_CITUS_WORKERS=2 $(BIN)/pytest $(CITUS_TESTS)

lint: install-dev ## ruff and mypy --strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

tracker-deps: ## npm ci in tracker/ (esbuild and rrweb's recorder; the bundle test needs them)
	cd tracker && npm ci --no-audit --no-fund

tracker: tracker-deps ## Rebuild services/ingest/static/tracker.js from tracker/src; commit the result
	cd tracker && node build.mjs

pages-deps: ## npm ci in web/ (esbuild, rrweb-player, uPlot; the pages' bundle test needs them)
	cd web && npm ci --no-audit --no-fund

pages: pages-deps ## Rebuild the player's and dashboard's scripts and styles from web/src; commit the result
	cd web && node build.mjs

screenshots: install-dev ## PNGs of every dashboard and player state at 1440 and 390 px in reports/screenshots (own throwaway stack, Chromium)
	$(BIN)/python -m tests.e2e.page_screenshots reports/screenshots

capture-recordings: install-dev ## Record tools/loadtest/recordings/*.json.gz with Chromium (replay payloads for the load test)
	$(BIN)/python -m tests.e2e.capture_recordings

bench-ingest: install ## wrk against POST /v1/events vs the no-op endpoint, CPU per request per process (needs `SIGHTLINE_INGEST_BENCHMARK_NOOP=1 SIGHTLINE_INGEST_RATE_LIMIT_REQUESTS_PER_S=0 make up`); writes docs/benchmarks.md
	@command -v wrk >/dev/null || { echo "wrk is missing: apt-get install -y wrk"; exit 1; }
	$(BIN)/python -m tools.bench.ingest

bench-tracing: install ## Throughput with tracing on vs off in one run (needs `make up`); writes docs/benchmarks.md
	@command -v wrk >/dev/null || { echo "wrk is missing: apt-get install -y wrk"; exit 1; }
	$(BIN)/python -m tools.bench.tracing

bench-session-list: install-dev ## The player's session list under every filter at 100k sessions: p50/p95 (own throwaway stack)
	$(BIN)/python -m tools.bench.session_list $(BENCH_ARGS)

bench-replay: install-dev ## Replay: first byte, throughput, worker memory for 30- vs 3-minute recordings (own throwaway stack)
	$(BIN)/python -m tools.bench.replay $(BENCH_ARGS)

load: $(VENV)/.installed-load ## Seed load test on `SIGHTLINE_INGEST_BENCHMARK_NOOP=1 make up`'s stack (5000 users, ~5 min); LOAD_ARGS="--users 500 --find-limit ..."
	$(SIGHTLINE) load $(LOAD_ARGS)

chaos: $(VENV)/.installed-load ## Fault run on its own stack: restarts under load, lost/duplicated = 0; CHAOS_ARGS="--users 500 --duration 120"
	$(SIGHTLINE) chaos --write-benchmarks $(CHAOS_ARGS)

attack: install-dev ## Honest traffic next to each attack (stalled uploads, bombs, key floods...) on its own stack; writes docs/reliability.md
	$(BIN)/python -m tools.attack $(ATTACK_ARGS)

clean: down ## Stop everything and delete .data (the local database) and .venv
	rm -rf .data $(VENV)

# The query benchmark runs its own stack (data dir and ports), apart from `make up`'s, and times
# queries back to back, which the per-project rate limit would throttle. The bench builds the
# rollups itself, so the query service's refresher is off: no rebuild runs during the timings.
BENCH_QUERY_ENV := SIGHTLINE_DATA_DIR=/tmp/sightline-bench-query SIGHTLINE_POSTGRES_PORT=56432 \
	SIGHTLINE_PGBOUNCER_PORT=7432 SIGHTLINE_INGEST_PORT=9101 SIGHTLINE_QUERY_PORT=9102 SIGHTLINE_REPLAY_PORT=9103 \
	SIGHTLINE_QUERY_RATE_LIMIT_REQUESTS_PER_S=0 SIGHTLINE_QUERY_ROLLUP_INTERVAL_S=0

# BENCH_QUERY_UP_ARGS="--citus-workers 2": the bench stack as a Citus coordinator with two workers
# (give it its own BENCH_QUERY_ENV too, so it does not meet a single-node bench stack's data dir).
BENCH_QUERY_UP_ARGS ?=

bench-query: install-dev ## Load 10M events (30 days) into a separate stack and time the dashboard's queries
	env $(BENCH_QUERY_ENV) $(SIGHTLINE) up $(BENCH_QUERY_UP_ARGS)
	env $(BENCH_QUERY_ENV) $(BIN)/python -m tools.bench.query $(BENCH_ARGS)
	@echo "The bench stack keeps running for reruns. Stop it: env $(BENCH_QUERY_ENV) $(SIGHTLINE) down"

# The scale run (docs/scaling.md): stepped seed load with Sightline and the generator on separate cores,
# single node vs Citus, each on a fresh stack of its own. On a larger machine give it the cores there.
BENCH_SCALE_ENV := SIGHTLINE_POSTGRES_PORT=22132 SIGHTLINE_PGBOUNCER_PORT=22164 SIGHTLINE_INGEST_PORT=22101 \
	SIGHTLINE_QUERY_PORT=22102 SIGHTLINE_REPLAY_PORT=22103
SCALE_ARGS ?= --engines single --visitors 2000 --steps 4 --step-s 20 --generators 1 --server-cores 0 \
	--generator-cores 1 --probe-core 1 --ingest-workers 1 --out /tmp/sightline-scale

bench-scale: install-dev ## Stepped seed load, Sightline and the generator on separate cores (SCALE_ARGS); scale.md in --out
	env $(BENCH_SCALE_ENV) $(BIN)/python -m tools.loadtest.scale $(SCALE_ARGS)

# The rollup refresh benchmark: its own stack (data dir and ports), the query service's refresher off.
BENCH_ROLLUPS_ENV := SIGHTLINE_DATA_DIR=/tmp/sightline-bench-rollups SIGHTLINE_POSTGRES_PORT=22032 \
	SIGHTLINE_PGBOUNCER_PORT=22064 SIGHTLINE_INGEST_PORT=22001 SIGHTLINE_QUERY_PORT=22002 SIGHTLINE_REPLAY_PORT=22003 \
	SIGHTLINE_QUERY_ROLLUP_INTERVAL_S=0

bench-rollups: install-dev ## A rollup refresh's cost: rebuilding a day vs merging a batch, at 20k-320k events a day
	env $(BENCH_ROLLUPS_ENV) $(SIGHTLINE) up
	env $(BENCH_ROLLUPS_ENV) $(BIN)/python -m tools.bench.rollups --write $(BENCH_ARGS)
	@echo "Stop the bench stack: env $(BENCH_ROLLUPS_ENV) $(SIGHTLINE) down"
