# Two commands a new user needs: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= $(shell pyenv which python3.12 2>/dev/null || command -v python3.12 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
MULTIDEVICE := XLA_FLAGS=--xla_force_host_platform_device_count=4

.PHONY: demo test lint format slow bench clean

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 12), "ucsciml needs Python 3.12 (see .python-version); set PYTHON=/path/to/python3.12"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/ucsciml run

test: $(VENV)/.installed
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

clean:
	rm -rf $(VENV) runs .pytest_cache
