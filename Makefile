# Every target creates or reuses .venv; README's commands are `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench bench-study bench-dashboard bench-sqlite install chromium clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[train,dev]'
	touch $(STAMP)

.venv: $(STAMP)
install: $(STAMP)

run: $(STAMP)
	SWEEPLAB_DATA_DIR=$${SWEEPLAB_DATA_DIR:-$$( [ -f ../shared/data/mnist.npz ] && echo ../shared/data || echo sweeplab-data/datasets )} \
	$(BIN)/sweeplab up --workers $${WORKERS:-1}

# Debian's Chromium drives the page tests; docker-compose validates docker-compose.yml (no engine needed).
chromium:
	@command -v /usr/bin/chromium >/dev/null && command -v docker-compose >/dev/null || \
		(apt-get update -q && apt-get install -y -q chromium docker-compose)

# The whole suite on SQLite, then again on PostgreSQL (each test gets a fresh database there; tests/unit,
# which touch no database, run in the first pass only).
test: $(STAMP) chromium
	$(BIN)/pytest -q
	@pg_isready -q -h 127.0.0.1 || { echo "PostgreSQL is not running on 127.0.0.1:5432 (needed for the second pass)"; exit 1; }
	SWEEPLAB_TEST_DATABASE_URL=$${SWEEPLAB_TEST_DATABASE_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/test} $(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench.packed

bench-study: $(STAMP)
	$(BIN)/python -m bench.study

bench-dashboard: $(STAMP) chromium
	$(BIN)/python -m bench.dashboard

bench-sqlite: $(STAMP)
	$(BIN)/python -m bench.sqlite_load

clean:
	rm -rf $(VENV) sweeplab-data
