# The README's two commands are `make demo` and `make test`; both set everything up first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
JARS := $(VENV)/.kafka-jars

.PHONY: install kafka-jars demo test lint bench-ingest bench-compact bench-derive bench-ab bench-quality tune-quality bench-eval-scale bench-retrain bench-serve bench-loop bench-cuda clean

# pip byte-compiles each package's ~18,700 modules in one process (about 95 s here); compileall
# does it on every core. Some packages ship files that are not Python 3 on purpose (templates,
# test data): pip skips those silently, and so does this (its exit status says "some failed").
$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --no-compile -e '.[dev]'
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	touch $@

install: $(INSTALLED)

# The broker jars go to ~/.cache/pagellm (or $$PAGELLM_CACHE_DIR), outside git.
$(JARS): $(INSTALLED) deploy/kafka/pom.xml
	$(BIN)/pagellm kafka fetch-jars
	touch $@

kafka-jars: $(JARS)

demo: $(JARS)
	$(BIN)/pagellm demo

lint: $(INSTALLED)
	$(BIN)/ruff check .

# Two workers (pytest-xdist), a module each at a time: many tests wait on brokers, processes
# and Ray more than they compute. Then, alone, the tests timed against a wall-clock budget.
test: $(JARS)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 --dist loadfile -m "not serial"
	$(BIN)/python -m pytest -m serial

bench-ingest: $(JARS)
	$(BIN)/python -m tests.benchmarks.bench_ingest

bench-compact: $(INSTALLED)
	$(BIN)/python -m tests.benchmarks.bench_compact

bench-derive: $(JARS)
	$(BIN)/python -m tests.benchmarks.bench_derive

bench-ab: $(INSTALLED)
	$(BIN)/python -m tests.benchmarks.bench_ab

bench-quality: $(INSTALLED)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m tests.benchmarks.bench_quality

# Ray Tune on validation only; TUNE_BUDGET_S (3600) and TUNE_SAMPLES (64) bound it.
tune-quality: $(INSTALLED)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m tests.benchmarks.tune_quality

# EVAL_FLAGS: extra `pagellm eval` flags, e.g. EVAL_FLAGS="--workers 2".
bench-eval-scale: $(INSTALLED)
	$(BIN)/python -m tests.benchmarks.bench_eval_scale $(EVAL_FLAGS)

bench-retrain: $(JARS)
	$(BIN)/python -m tests.benchmarks.bench_retrain

# wrk (Debian's package) drives the HTTP load from a process of its own.
bench-serve: $(JARS)
	command -v wrk > /dev/null || apt-get install -y wrk
	$(BIN)/python -m tests.benchmarks.bench_serve

bench-loop: $(JARS)
	$(BIN)/python -m tests.benchmarks.bench_loop

# Where a GPU is present; without one only the CPU half runs.
bench-cuda: $(INSTALLED)
	$(BIN)/python -m tests.benchmarks.bench_cuda

clean:
	rm -rf $(VENV) var .pytest_cache
