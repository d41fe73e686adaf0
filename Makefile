# capsroute: `make train` (install + the main job) and `make test` (install + the test suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Data root: $CAPSROUTE_DATA if set, else ../shared/data when present, else ./data (downloaded).
export CAPSROUTE_DATA ?= $(abspath $(if $(wildcard ../shared/data),../shared/data,data))
# The main job: MNIST, r = 3, paper settings, on a 10k-image subset so it ends in minutes on a CPU.
# `make train ARGS="train.epochs=50"` for the full paper run (all 60k images when ARGS sets no subset).
ARGS ?= dataset.train_size=10000 train.epochs=2

.PHONY: install train test test-all test-slurm lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/python -m pip install --quiet -e ".[dev,launchers,tensorboard,mlflow]"
	touch $@

train: install
	$(BIN)/capsroute train dataset.download=true $(ARGS)

test: install
	$(BIN)/python -m pytest -q -m "not slow and not slurm"

test-all: install
	$(BIN)/python -m pytest -q -m "not slurm"

# the SLURM suite: brings up a single-node cluster (root + apt) and leaves it running
test-slurm: install
	$(BIN)/python -m pytest -q -m slurm tests/cluster

lint: install
	$(BIN)/ruff check capsroute tests benchmarks
	$(BIN)/ruff format --check capsroute tests benchmarks

bench: install
	$(BIN)/capsroute bench --precision fp32 --json benchmarks/latest.json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
