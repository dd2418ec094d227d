# Two commands on a fresh machine with Python 3.11 and make:
#   make run    set up .venv if missing, serve on $(HOST):$(PORT) with waitress
#   make test   set up .venv if missing, run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8080
THREADS ?= 8

.PHONY: run test lint clean

$(BIN)/activate: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

run: $(BIN)/activate
	$(BIN)/waitress-serve --host=$(HOST) --port=$(PORT) --threads=$(THREADS) wsgi:app

test: $(BIN)/activate
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(BIN)/activate
	$(BIN)/pip install --quiet ruff
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache
