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

# The main job at laptop scale: a 3-game dataset from the emulator (uniformly random behaviour,
# 3 checkpoints per game), pre-training of the `demo` preset, and its evaluation in the emulator
# beside the random-policy and behaviour-data baselines. Run again,
# it keeps the dataset and resumes (or reports) the finished run.
DEMO_GAMES ?= pong,breakout,freeway
DEMO_STEPS ?= 4000
# Evaluation: 4 episodes per game, each cut at 2,500 agent steps so a policy that never serves
# in Breakout cannot run to the 27,000-step cap; the table says which episodes were cut.
DEMO_EVAL_EPISODES ?= 4
DEMO_EVAL_STEPS ?= 2500

demo: $(STAMP)
	$(PY) -m launch.make_dataset --source=ale --games=$(DEMO_GAMES) --runs=1 \
	  --checkpoints_per_run=3 --steps_per_checkpoint=$(DEMO_STEPS) --policy=random --seed=0 \
	  --data_dir=$(WORKDIR)/data --skip_existing
	$(PY) -m launch.pretrain --config=configs/pretrain.py:demo --workdir=$(WORKDIR) \
	  --config.data.data_dir=$(WORKDIR)/data
	$(PY) -m launch.evaluate --checkpoint=$(WORKDIR) --episodes=$(DEMO_EVAL_EPISODES) \
	  --max_steps_per_episode=$(DEMO_EVAL_STEPS) --baselines=random,behaviour \
	  --data_dir=$(WORKDIR)/data

test: $(STAMP)
	$(PY) -m pytest -n 2 --durations=15 tests

clean:
	rm -rf $(VENV) runs .pytest_cache
