# Sightline: `make up` runs everything on this machine (no Docker), `make test` runs the suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SIGHTLINE := $(BIN)/sightline

.DEFAULT_GOAL := help

.PHONY: help up down status test lint migrate install install-dev clean bench-ingest load

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

down: ## Stop everything `make up` started
	@if [ -x $(SIGHTLINE) ]; then $(SIGHTLINE) down; else echo "nothing to stop (no $(VENV))"; fi

status: ## Show what runs and whether each service is ready
	@$(SIGHTLINE) status

migrate: install ## Apply migrations to the local cluster (make up does this too)
	$(SIGHTLINE) migrate

test: install-dev ## Run the test suite (it starts its own Postgres and PgBouncer)
	$(BIN)/pytest

lint: install-dev ## ruff and mypy --strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench-ingest: install ## wrk against POST /v1/events vs the no-op endpoint (needs `make up`); writes docs/benchmarks.md
	@command -v wrk >/dev/null || { echo "wrk is missing: apt-get install -y wrk"; exit 1; }
	$(BIN)/python -m services.ingest.bench

load: $(VENV)/.installed-load ## Seed load test on `make up`'s stack (5000 users, ~5 min); LOAD_ARGS="--users 500 --find-limit ..."
	$(SIGHTLINE) load $(LOAD_ARGS)

clean: down ## Stop everything and delete .data (the local database) and .venv
	rm -rf .data $(VENV)
