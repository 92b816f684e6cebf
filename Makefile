# Two commands do all setup on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench bench-paper gpu-check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch==2.13.0 is the CPU build on this machine's disk; pinned in pyproject.toml.
	$(BIN)/pip install --quiet -e '.[test,hf]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/nngraph demo

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

# The paper protocol, row by row (rerun to continue; ROWS=name,name for some rows; see --dry-run).
# SUITE=mnist: the paper's own tables on MNIST INRs (README "The MNIST suite").
bench-paper: $(STAMP)
	$(BIN)/python benchmarks/run.py --paper $(if $(SUITE),--suite $(SUITE)) $(if $(ROWS),--rows $(ROWS))

# On a GPU machine, with its own Python's CUDA torch (nothing installed; README "GPUs, bf16, several GPUs").
gpu-check:
	PYTHONPATH=src $(PYTHON) benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
