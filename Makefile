# Two commands for a fresh clone (Python 3.11): `make run` serves, `make test` tests.
# Each creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --quiet --disable-pip-version-check
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run demo test lint openapi clean

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

openapi: $(VENV)/.run-installed  ## write the OpenAPI document the code describes to docs/openapi.json
	env -u DATABASE_URL -u REDIS_URL $(BIN)/quart --app service schema --output docs/openapi.json

clean:
	rm -rf $(VENV) instance .pytest_cache .mypy_cache .ruff_cache .coverage*
