# Two commands for a fresh machine: `make up` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

LOCK := requirements.lock

.PHONY: up test lint typecheck bench-dns clean lock

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Installs the versions in the lock (a constraints file): two installs a week apart are equal.
$(STAMP): $(BIN)/python pyproject.toml $(LOCK)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c $(LOCK) -e '.[dev]'
	touch $(STAMP)

# Resolves pyproject.toml's dependencies afresh (newest allowed by its bounds) in a scratch
# venv and writes what was installed to the lock. Run the tests before committing it.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install -q --upgrade pip
	.venv-lock/bin/pip install -q -e '.[dev,analysis]'
	{ sed -n '1,3p' $(LOCK); .venv-lock/bin/pip freeze --exclude-editable | sort -f; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf .venv-lock

# The project's own bytecode, as the image has it (an editable install compiles none, and
# with PYTHONDONTWRITEBYTECODE set nothing is cached on import): every service process would
# compile its ~100 modules from source at each start, 0.25 s of CPU each (docs/benchmarks.md).
# Up to date, this takes a fraction of a second; a stale file is never used (Python checks
# each source's time and size).
BYTECODE := $(BIN)/python -m compileall -q -j 0 kgslb services shared kubesim

up: $(STAMP)
	$(BYTECODE)
	$(BIN)/kgslb up

test: $(STAMP)
	$(BYTECODE)
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
