# Every target creates or reuses .venv; README's commands are `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-sqlite test-postgres lint bench bench-study install chromium clean

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

chromium:
	@command -v /usr/bin/chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium)

test: $(STAMP) chromium
	$(BIN)/pytest -q
	@if pg_isready -q -h 127.0.0.1; then \
		SWEEPLAB_TEST_DATABASE_URL=$${SWEEPLAB_TEST_DATABASE_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/test} $(BIN)/pytest -q -m "not browser"; \
	else echo "PostgreSQL not reachable on 127.0.0.1:5432: the PostgreSQL pass is skipped"; exit 1; fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench.packed

bench-study: $(STAMP)
	$(BIN)/python -m bench.study

clean:
	rm -rf $(VENV) sweeplab-data
