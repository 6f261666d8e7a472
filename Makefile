# The two commands: `make demo` (the main job) and `make test` (the test suite).
# Each sets itself up on a fresh machine: .venv with Python 3.11, the pinned package installed,
# refreshed whenever setup.py changes.

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= runs/demo
# Quiet TensorFlow's C++ logging and keep it (and JAX) off any accelerator during CPU runs.
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: setup demo test clean

setup: $(STAMP)

$(STAMP): setup.py
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; scaled-ql needs Python 3.11 (set PYTHON=/path/to/python3.11)." >&2; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m launch.demo --workdir=$(WORKDIR)

test: $(STAMP)
	$(PY) -m pytest -n 2 --durations=15 tests

clean:
	rm -rf $(VENV) runs .pytest_cache
