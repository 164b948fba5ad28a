# Two commands a new user needs: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= $(shell pyenv which python3.12 2>/dev/null || command -v python3.12 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
MULTIDEVICE := XLA_FLAGS=--xla_force_host_platform_device_count=4
# The tested dependency set: every install goes through it, so any pip (the machine's stock
# one or the newest) resolves the same versions. `make lock` re-resolves and rewrites it.
LOCK := requirements.lock
CHECK_PY = @$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 12), "ucsciml needs Python 3.12 (see .python-version); set PYTHON=/path/to/python3.12"'

.PHONY: demo test lint format slow bench clean lock check-lock

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(CHECK_PY)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c $(LOCK) -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/ucsciml run

test: $(VENV)/.installed check-lock
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .
	$(PY) -m pytest -m "not slow and not multidevice" --durations=20
	$(MULTIDEVICE) $(PY) -m pytest -m "multidevice and not slow" --durations=10

slow: $(VENV)/.installed
	$(PY) -m pytest -m slow --durations=20

lint: $(VENV)/.installed
	$(PY) -m ruff format --check . && $(PY) -m ruff check .

format: $(VENV)/.installed
	$(PY) -m ruff format . && $(PY) -m ruff check --fix .

bench: $(VENV)/.installed
	for f in benchmarks/*.py; do $(PY) $$f || exit 1; done

# Lock and pyproject.toml agree, and .venv holds exactly the locked versions (< 1 s).
check-lock: $(VENV)/.installed
	$(PY) tools/check_lock.py --installed

# Upgrade the lock: resolve pyproject.toml's ranges afresh (newest pip, no constraints) in a
# throwaway venv, pin what it installed, check it; then `make clean test` tests that set.
lock:
	$(CHECK_PY)
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q --upgrade pip
	.lock-venv/bin/python -m pip install -q -e '.[dev]'
	{ sed -n '/^#/p' $(LOCK) 2>/dev/null; .lock-venv/bin/python -m pip freeze --exclude-editable; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	.lock-venv/bin/python tools/check_lock.py --installed
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) runs .pytest_cache
