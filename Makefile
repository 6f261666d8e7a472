# The two commands: `make demo` (the main job) and `make test` (the test suite).
# Each sets itself up on a fresh machine, refreshed whenever setup.py or the constraints change:
# - .venv: the pinned stack (Python 3.11, constraints/pinned.txt, Reverb: online fine-tuning's
#   Reverb backend);
# - .venv-current: today's releases (Python 3.12, numpy 2, newest JAX and TensorFlow/TFDS for
#   RLDS data), every job (online fine-tuning with its local replay: Reverb has no 3.12 build)
#   but ONNX export (jax2tf's graph mode, which tf2onnx needs, is gone from today's JAX);
# - .venv-consumer: onnxruntime, numpy and ale-py only (constraints/consumer.txt), where the
#   export tests check the exported files without JAX, Flax or this library.

PYTHON ?= python3.11
# Python 3.12 for the current stack: python3.12 on PATH, else a pyenv-installed 3.12.
PYTHON_CURRENT ?= $(shell for p in python3.12 $$(ls -d $$(pyenv root 2>/dev/null)/versions/3.12*/bin/python 2>/dev/null | sort -V | tail -n 1); do $$p -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null && { echo $$p; break; }; done)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
VENV_CURRENT := .venv-current
PY_CURRENT := $(VENV_CURRENT)/bin/python
STAMP_CURRENT := $(VENV_CURRENT)/.installed
VENV_CONSUMER := .venv-consumer
STAMP_CONSUMER := $(VENV_CONSUMER)/.installed
WORKDIR ?= runs/demo
# --dist loadfile: a file's tests share one worker, so a module fixture (a training run, the
# reproduce plan) runs once, not once per worker.
PYTEST_ARGS ?= -n 2 --dist loadfile -rs --durations=10
# Quiet TensorFlow's C++ logging and keep it (and JAX) off any accelerator during CPU runs.
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# pip installs without byte-compiling every module of every package (--no-compile: half the
# set-up's CPU time); Python compiles a module when it is first imported and keeps the .pyc,
# so no job here runs with PYTHONDONTWRITEBYTECODE, which would make every process compile
# what it imports again (TensorFlow's import: 4 s -> 10 s).
PIP_INSTALL := pip install --quiet --no-compile
unexport PYTHONDONTWRITEBYTECODE

.PHONY: setup setup-current setup-consumer demo test test-pinned test-current wheel-check versions clean

setup: $(STAMP)

setup-current: $(STAMP_CURRENT)

setup-consumer: $(STAMP_CONSUMER)

$(STAMP): setup.py constraints/pinned.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; the pinned stack needs Python 3.11 (set PYTHON=/path/to/python3.11)." >&2; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m $(PIP_INSTALL) -c constraints/pinned.txt -e '.[data,online,test,export]'
	@touch $(STAMP)

$(STAMP_CURRENT): setup.py
	@test -n "$(PYTHON_CURRENT)" || { echo "error: no Python 3.12 found for the current stack (set PYTHON_CURRENT=/path/to/python3.12)." >&2; exit 1; }
	@test -x $(PY_CURRENT) || $(PYTHON_CURRENT) -m venv $(VENV_CURRENT)
	$(PY_CURRENT) -m pip install --quiet --upgrade pip
	$(PY_CURRENT) -m $(PIP_INSTALL) --upgrade -e '.[data,test]'
	@touch $(STAMP_CURRENT)

# No editable install here on purpose: the export tests run this interpreter isolated (-I) and
# check that jax, flax and scaled_ql cannot be imported.
$(STAMP_CONSUMER): constraints/consumer.txt
	@test -n "$(PYTHON_CURRENT)" || { echo "error: no Python 3.12 found for .venv-consumer (set PYTHON_CURRENT=/path/to/python3.12)." >&2; exit 1; }
	@test -x $(VENV_CONSUMER)/bin/python || $(PYTHON_CURRENT) -m venv $(VENV_CONSUMER)
	$(VENV_CONSUMER)/bin/python -m $(PIP_INSTALL) --upgrade -r constraints/consumer.txt
	@touch $(STAMP_CONSUMER)

# The main job at laptop scale: a logged-agent dataset (an online C51 agent learning RoadRunner
# from scratch, every transition it plays kept, its run cut into 10 checkpoints), pre-training of
# the `demo` preset on it, and its evaluation in the emulator beside the random policy, the best
# constant action (every legal action held for whole episodes, the best one; cached per
# protocol in ~/.cache/scaled_ql) and the behaviour data (the mean return of the dataset's
# episodes, cut at the same cap). Run again, it keeps the dataset and resumes (or reports) the
# finished run.
DEMO_GAMES ?= road_runner
DEMO_CHECKPOINTS ?= 10
DEMO_STEPS ?= 2000
# Evaluation: 8 episodes per game, each cut at 2,500 agent steps; the table says which were cut.
DEMO_EVAL_EPISODES ?= 8
DEMO_EVAL_STEPS ?= 2500

demo: $(STAMP)
	$(PY) -m launch.make_dataset --source=agent --games=$(DEMO_GAMES) --runs=1 \
	  --checkpoints_per_run=$(DEMO_CHECKPOINTS) --steps_per_checkpoint=$(DEMO_STEPS) --seed=0 \
	  --data_dir=$(WORKDIR)/data --skip_existing
	$(PY) -m launch.pretrain --config=configs/pretrain.py:demo --workdir=$(WORKDIR) \
	  --config.data.data_dir=$(WORKDIR)/data \
	  --config.games=$(DEMO_GAMES)
	$(PY) -m launch.evaluate --checkpoint=$(WORKDIR) --episodes=$(DEMO_EVAL_EPISODES) \
	  --max_steps_per_episode=$(DEMO_EVAL_STEPS) --baselines=random,constant,behaviour \
	  --data_dir=$(WORKDIR)/data

# The whole suite on the pinned stack, then on the current stack (the Reverb backend's tests
# skip themselves without Reverb, with the reason shown) with the wheel check beside it: the
# check runs one job at a time, the suite two, on this 2-core reference machine. The three
# virtualenvs are set up side by side (pip mostly waits on downloads).
WHEEL_LOG := .wheel-check.log
test:
	@$(MAKE) --no-print-directory -j3 setup setup-current setup-consumer
	@$(MAKE) --no-print-directory versions
	@rc=0; $(MAKE) --no-print-directory test-pinned || rc=1; \
	echo "== wheel check, beside the current stack's suite (its output: $(WHEEL_LOG))"; \
	$(MAKE) --no-print-directory wheel-check > $(WHEEL_LOG) 2>&1 & wheel=$$!; \
	$(MAKE) --no-print-directory test-current || rc=1; \
	wait $$wheel; wheel_rc=$$?; echo; echo "== wheel check ($(WHEEL_LOG))"; cat $(WHEEL_LOG); \
	[ $$wheel_rc = 0 ] || { echo "wheel check FAILED" >&2; rc=1; }; exit $$rc

versions: $(STAMP) $(STAMP_CURRENT)
	@$(PY) tests/versions.py "pinned stack (.venv)"
	@$(PY_CURRENT) tests/versions.py "current stack (.venv-current)"

test-pinned: $(STAMP)
	@$(PY) tests/versions.py "== pinned stack (.venv)"
	$(PY) -m pytest $(PYTEST_ARGS) tests

# On the current stack the suite's processes (pytest's workers and the jobs they launch) share
# one JAX persistent compilation cache, new for the suite and removed after it: the same small
# programs (the tiny presets' updates, initialisation, evaluation) compile once, not in every
# job. Not on the pinned stack: JAX 0.4.34's executables read back from the cache corrupt
# memory there (BUILD_NOTES.md, Known limits), and every job turns the cache off.
JAX_CACHE_ENV = JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0.5 JAX_COMPILATION_CACHE_DIR=$$cache

test-current: $(STAMP_CURRENT)
	@$(PY_CURRENT) tests/versions.py "== current stack (.venv-current)"
	cache=$$(mktemp -d); $(JAX_CACHE_ENV) $(PY_CURRENT) -m pytest $(PYTEST_ARGS) tests; rc=$$?; \
	rm -rf $$cache; exit $$rc

# The package as a user installs it: a wheel of this checkout in a fresh virtualenv outside it
# (pinned stack), running every job with the README's commands from there.
wheel-check:
	PYTHON=$(PYTHON) bash .ci/wheel_check.sh

clean:
	rm -rf $(VENV) $(VENV_CURRENT) $(VENV_CONSUMER) runs .pytest_cache $(WHEEL_LOG)
