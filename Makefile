# Two commands on a fresh machine with Python 3.11 and make:
#   make run    set up .venv if missing, serve on $(HOST):$(PORT) with waitress
#   make test   set up .venv if missing, run the whole test suite
#   make bench  the service against its baselines (BENCH_ARGS=--quick: one short round)
#   make check-native   the native tables' tests under AddressSanitizer and UBSan
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8080
THREADS ?= 8
# The native hour tables, built in place by `pip install -e .` (a C compiler and the Python
# headers are all they need); rebuilt whenever a source changes.
NATIVE_SOURCES := $(wildcard flowagg/store/native/*.c flowagg/store/native/*.h)
NATIVE := $(VENV)/.native-built

.PHONY: run test test-tools bench lint check-native clean

$(BIN)/activate: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(NATIVE): $(BIN)/activate pyproject.toml $(NATIVE_SOURCES)
	PYTHONWARNINGS=ignore $(BIN)/pip install --quiet --no-deps -e .
	touch $@

# waitress gets the bounds on what one client can hold (connections, idle time, header and
# body size; FLOWAGG_MAX_BODY_BYTES as the app resolves it) from `python -m flowagg
# --waitress-flags`, which serves with the same. Up to 3 open files per connection: OPEN_FILES
# covers the 1000 connections of --connection-limit.
OPEN_FILES ?= 4096
run: $(NATIVE)
	@flags="$$($(BIN)/python -m flowagg --waitress-flags)" && \
	if [ "$$(ulimit -n)" != unlimited ] && [ "$$(ulimit -n)" -lt $(OPEN_FILES) ]; then \
		ulimit -Sn $(OPEN_FILES) 2>/dev/null || \
		echo "make run: cannot raise the open-file limit to $(OPEN_FILES); it is $$(ulimit -n)" >&2; \
	fi && \
	echo "waitress-serve --host=$(HOST) --port=$(PORT) --threads=$(THREADS) $$flags wsgi:app" && \
	exec $(BIN)/waitress-serve --host=$(HOST) --port=$(PORT) --threads=$(THREADS) $$flags wsgi:app

# What the tests drive for real, from Debian's packages (command:package): chromium for the
# page (tests/test_page.py), nginx and openssl (tests/test_nginx.py), haproxy and systemd-analyze
# (tests/test_deploy.py; the unit's checks are skipped without systemd), redis-server and
# redis-cli for a real Redis Cluster, faketime for instances whose clocks are wrong
# (tests/test_redis_clock.py). The missing ones are installed in one apt-get when we may (root
# with apt-get); otherwise the tests that need them fail, saying so. (Where services may start,
# Debian's packages also start their own nginx, haproxy and redis; the tests start theirs.)
TEST_TOOLS := chromium:chromium nginx:nginx openssl:openssl haproxy:haproxy \
	systemd-analyze:systemd redis-server:redis-server redis-cli:redis-tools faketime:faketime

test: $(NATIVE) test-tools
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-tools:
	@missing=; for tool in $(TEST_TOOLS); do \
		command -v $${tool%%:*} >/dev/null || [ -x /usr/sbin/$${tool%%:*} ] || \
			missing="$$missing $${tool#*:}"; \
	done; \
	[ -z "$$missing" ] || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		  apt-get -o DPkg::Lock::Timeout=300 install -y -qq $$missing; } >/dev/null 2>&1; } || \
		echo "not installed:$$missing; the tests that drive them will fail (docs/testing.md)"

# wrk is a Debian package: installed here when missing and we may (root with apt-get);
# without it the harness drives the servers with locust instead.
bench: $(NATIVE)
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		{ apt-get update -qq && apt-get install -y -qq wrk; } >/dev/null 2>&1; } || \
		echo "wrk is not installed: the benchmark falls back to locust"
	$(BIN)/python -m loadtest.bench --threads=$(THREADS) $(BENCH_ARGS)

lint: $(BIN)/activate
	$(BIN)/pip install --quiet ruff
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# A copy of the package whose table module is built with AddressSanitizer and UndefinedBehavior-
# Sanitizer (any report fails the run); the interpreter preloads their runtimes and allocates
# its objects with malloc, so that a read past a Python object is seen too. Leaks in the
# module's own memory are caught by tests/test_table.py itself (tracemalloc sees it). Then the
# fuzzer (tests/fuzz/fuzz_table.py, atheris over libFuzzer) drives a copy built by clang with
# coverage and both sanitizers for FUZZ_SECONDS, seeded from tests/fuzz/corpus/; clang (Debian)
# and atheris (PyPI, into .venv) are installed here when missing.
SANITIZED := build/sanitized
FUZZED := build/fuzz
SANITIZERS := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
FUZZ_SECONDS ?= 60
PY_INCLUDE = $$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
EXT_SUFFIX = $$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
check-native: $(NATIVE)
	rm -rf $(SANITIZED) && mkdir -p $(SANITIZED)
	cp -r flowagg tests pyproject.toml $(SANITIZED)/
	rm -f $(SANITIZED)/flowagg/store/table.*.so
	$(CC) -shared -fPIC -O1 -g -std=c11 -Wall -Wextra -Werror $(SANITIZERS) -I"$(PY_INCLUDE)" \
		$(filter %.c,$(NATIVE_SOURCES)) -o $(SANITIZED)/flowagg/store/table$(EXT_SUFFIX)
	cd $(SANITIZED) && PYTHONMALLOC=malloc ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1 \
		LD_PRELOAD="$$($(CC) -print-file-name=libasan.so) $$($(CC) -print-file-name=libubsan.so)" \
		$(abspath $(BIN))/python -m pytest -q -p no:cacheprovider \
		tests/test_table.py tests/test_table_safety.py tests/test_query.py \
		tests/test_partition.py tests/test_limits.py tests/test_api.py tests/test_concurrency.py \
		tests/test_packed.py
	@command -v clang >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		{ apt-get update -qq && apt-get -o DPkg::Lock::Timeout=300 install -y -qq clang; } \
		>/dev/null 2>&1; } || { echo "clang cannot be installed: no fuzzing" >&2; exit 1; }
	$(BIN)/python -c 'import atheris' 2>/dev/null || $(BIN)/pip install --quiet atheris
	rm -rf $(FUZZED) && mkdir -p $(FUZZED)/corpus
	cp -r flowagg tests pyproject.toml $(FUZZED)/
	rm -f $(FUZZED)/flowagg/store/table.*.so
	clang -shared -fPIC -O1 -g -std=c11 -Wall -Wextra -Werror $(SANITIZERS) \
		-fsanitize=fuzzer-no-link -I"$(PY_INCLUDE)" \
		$(filter %.c,$(NATIVE_SOURCES)) -o $(FUZZED)/flowagg/store/table$(EXT_SUFFIX)
	cd $(FUZZED) && PYTHONMALLOC=malloc ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1 \
		UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		LD_PRELOAD="$$($(abspath $(BIN))/python -c 'import atheris; print(atheris.path())')/asan_with_fuzzer.so" \
		$(abspath $(BIN))/python tests/fuzz/fuzz_table.py -max_total_time=$(FUZZ_SECONDS) \
		-rss_limit_mb=4096 -print_final_stats=1 corpus $(abspath tests/fuzz/corpus)

clean:
	rm -rf $(VENV) .pytest_cache build flowagg/store/table.*.so
