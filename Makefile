# Two commands for a fresh clone (Python 3.11): `make run` serves, `make test` tests.
# Each creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --quiet --disable-pip-version-check
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run demo test lint openapi bench clean load soak

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.run-installed: pyproject.toml | $(BIN)/python
	$(PIP) install -e .
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(PIP) install -e ".[dev,sentry]"
	touch $@ $(VENV)/.run-installed

run: $(VENV)/.run-installed
	$(BIN)/alembic upgrade head
	@echo "Switchboard: http://$(HOST):$(PORT)  API docs: http://$(HOST):$(PORT)/docs"
	$(BIN)/hypercorn --config hypercorn.toml --workers 1 --bind $(HOST):$(PORT) "service:create_app()"

demo: $(VENV)/.run-installed  ## demo agents at work against `make run` (in a second terminal; DEMO_ARGS="--agents 12")
	$(BIN)/quart --app service demo --url http://$(HOST):$(PORT) $(DEMO_ARGS)

test: $(VENV)/.test-installed
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(VENV)/.test-installed
	$(BIN)/ruff check service tests alembic
	$(BIN)/ruff format --check service tests alembic
	$(BIN)/mypy
	$(BIN)/bandit -q -r service -ll  # medium severity and above; justify each exception with `# nosec Bxxx - why`

load: $(VENV)/.test-installed  ## 500 users + 50 SSE listeners on PostgreSQL + Redis (docs/reliability.md; LOAD_ARGS="--duration 60")
	$(BIN)/python -m tests.reliability load $(LOAD_ARGS)

soak: $(VENV)/.test-installed  ## 10 minutes: memory, open files, Redis clients, DB connections, asyncio tasks
	$(BIN)/python -m tests.reliability soak --users 250 $(LOAD_ARGS)

openapi: $(VENV)/.run-installed  ## write the OpenAPI document the code describes to docs/openapi.json
	env -u DATABASE_URL -u REDIS_URL $(BIN)/quart --app service schema --output docs/openapi.json

bench: $(VENV)/.test-installed  ## benchmarks into docs/benchmarks.md: BENCH=read for one, COMPARE=/other/checkout
	@command -v wrk >/dev/null || apt-get install -y wrk || (apt-get update && apt-get install -y wrk)
	$(BIN)/python -m tests.performance $(BENCH) $(if $(COMPARE),--compare $(COMPARE)) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) instance .pytest_cache .mypy_cache .ruff_cache .coverage*
