# One command sets everything up and runs the main job (`make bench`), one runs the tests
# (`make test`). Both create the virtual environment on first use.
#
# torch: `torch==2.13.0` is the CPU build on our machines (a local wheel); elsewhere pass the
# CPU index, e.g. `make test TORCH_INDEX=https://download.pytorch.org/whl/cpu`, or a plain
# PyPI install pulls a multi-GB CUDA build.

PYTHON      ?= python3
VENV        ?= .venv
BIN         := $(VENV)/bin
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
DATA_DIR    ?= $(firstword $(wildcard ../shared/data) $(METAREC_DATA_DIR) data)
METHODS     ?= mamo,melu
SEEDS       ?= 0
L2L_VENV    ?= .venv-l2l

TORCH_INDEX_ARG := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX) --extra-index-url https://pypi.org/simple,)

.PHONY: help venv bench test test-fast docs serve-docs l2l clean

help:
	@echo "make help        - this list"
	@echo "make venv        - create .venv and install metarec (CPU torch) with the dev, docs and plot extras"
	@echo "make bench       - set up .venv and run: metarec bench --methods $(METHODS) --dataset ml-1m --data-dir $(DATA_DIR)"
	@echo "make test        - what CI runs: also builds the learn2learn env .venv-l2l (~5.7 GB: learn2learn imports"
	@echo "                   torchvision, which needs a CUDA torch build) and runs every test, the parity test included"
	@echo "make test-fast   - set up .venv only and run the tests not marked slow, without the learn2learn parity"
	@echo "                   test (skipped: it needs .venv-l2l); the quick path for a newcomer"
	@echo "make l2l         - create the separate learn2learn environment ($(L2L_VENV)) for the parity test"
	@echo "make docs        - build the documentation site into site/ (strict)"
	@echo "make serve-docs  - serve the documentation locally with live reload"
	@echo "make clean       - remove the virtual environments and build outputs"

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH_INDEX_ARG) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e '.[dev,docs,plot]'
	@touch $@

venv: $(BIN)/.installed

bench: venv
	$(BIN)/metarec bench --methods $(METHODS) --dataset ml-1m --data-dir $(DATA_DIR) --seeds $(SEEDS) --jobs 2 --threads 1

# The learn2learn parity test runs for real: it needs its own environment (learn2learn imports
# torchvision, which needs a different torch build than the CPU one above).
# metarec goes into that env as plain `pip install -e .` (never `.[learn2learn]`: see the script's
# header), re-installed only when pyproject.toml changes.
l2l:
	bash scripts/install_learn2learn.sh $(L2L_VENV)
	@$(MAKE) --no-print-directory $(L2L_VENV)/.metarec-installed

$(L2L_VENV)/.metarec-installed: pyproject.toml
	$(L2L_VENV)/bin/python -m pip install -q -e .
	@touch $@

# The suite runs in TEST_JOBS pytest-xdist workers (one per core on CI's 2 cores; TEST_JOBS=0 runs
# it in one process) while the learn2learn env builds beside it; then the learn2learn parity test
# runs with that env, and the Ray tests in one plain process: they share one local Ray cluster
# (one per xdist worker otherwise) and their fault checks (kill -9, Ctrl-C, a node removed) wait
# on that cluster, not on the other tests. scripts/run_tests.sh says why in that order.
TEST_JOBS   ?= 2
RAY_TESTS   := tests/test_ray_executor.py tests/test_ray_tune.py
XDIST_ARGS  := $(if $(filter 0,$(TEST_JOBS)),,-n $(TEST_JOBS))

test: venv
	MAKE="$(MAKE)" bash scripts/run_tests.sh $(BIN) $(L2L_VENV) "$(XDIST_ARGS)" $(RAY_TESTS)

test-fast: venv
	$(BIN)/python -m pytest -q $(XDIST_ARGS) -m "not slow"

docs: venv
	$(BIN)/mkdocs build --strict

serve-docs: venv
	$(BIN)/mkdocs serve

clean:
	rm -rf $(VENV) $(L2L_VENV) site build *.egg-info
