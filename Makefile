# Two commands on a fresh machine with Python 3.11 and make:
#   make run    set up .venv if missing, serve on $(HOST):$(PORT) with waitress
#   make test   set up .venv if missing, run the whole test suite
#   make bench  the service against its baselines (about 5 minutes; BENCH_ARGS=--quick: about 2)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8080
THREADS ?= 8

.PHONY: run test bench lint clean

$(BIN)/activate: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

run: $(BIN)/activate
	$(BIN)/waitress-serve --host=$(HOST) --port=$(PORT) --threads=$(THREADS) wsgi:app

test: $(BIN)/activate
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# wrk is a Debian package: installed here when missing and we may (root with apt-get);
# without it the harness drives the servers with locust instead.
bench: $(BIN)/activate
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		{ apt-get update -qq && apt-get install -y -qq wrk; } >/dev/null 2>&1; } || \
		echo "wrk is not installed: the benchmark falls back to locust"
	$(BIN)/python -m loadtest.bench --threads=$(THREADS) $(BENCH_ARGS)

lint: $(BIN)/activate
	$(BIN)/pip install --quiet ruff
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache
