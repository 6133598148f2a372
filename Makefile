# One entry point per task; every target creates the virtualenv first if it is missing.
PYTHON  ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
DATASET ?= fashion_mnist
EPOCHS  ?=
export DAGSTER_HOME := $(CURDIR)
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: run refresh offline test dev status docs bench bench-graph bench-refresh lint clean-data

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

## run: materialize every asset and partition of DATASET (default fashion_mnist) into data/
run: $(BIN)/.installed
	scripts/materialize.sh $(DATASET) $(EPOCHS)
	$(BIN)/python -m mnist_assets.status $(DATASET)

## refresh: rebuild exactly the stale or missing partitions of DATASET; DRY_RUN=1 prints the plan only,
## VERIFY=1 also reads every stored artifact against its checksums and rebuilds what is damaged
refresh: $(BIN)/.installed
	$(BIN)/mnist-assets refresh $(DATASET) $(if $(DRY_RUN),--dry-run) $(if $(VERIFY),--verify)

FASHION_DEBIAN := /usr/share/datasets/fashion-mnist

$(FASHION_DEBIAN):
	apt-get update && apt-get install -y dataset-fashion-mnist

## offline: install Debian's Fashion-MNIST, then materialize it from that directory only
offline: | $(FASHION_DEBIAN)
	$(MAKE) run DATASET=fashion_mnist MNIST_ASSETS_MIRROR_FASHION_MNIST=/usr/share/datasets/fashion-mnist

## test: the test suite (real loopback mirrors, real instances, tiny TensorFlow)
test: $(BIN)/.installed | $(FASHION_DEBIAN)
	$(BIN)/python -m pytest -q

## dev: the Dagster UI on http://127.0.0.1:3000 with the same instance and data as `make run`
dev: $(BIN)/.installed
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

## status: what is materialized for DATASET, with data versions, step seconds and paths
status: $(BIN)/.installed
	$(BIN)/python -m mnist_assets.status $(DATASET)

## docs: regenerate docs/faults.md (the fault table) from the fault-injection tests
docs: $(BIN)/.installed
	$(BIN)/python -m mnist_assets_tests.faults > docs/faults.md

## bench: both benchmarks below -> data/bench/*.json, *.md
bench: bench-graph bench-refresh

## bench-graph: full-size Fashion-MNIST graph with the default training config, beside a plain script
bench-graph: $(BIN)/.installed
	$(BIN)/python benchmarks/graph_bench.py --out data/bench

## bench-refresh: no-op and training-change refresh beside bare `dagster asset materialize`
bench-refresh: $(BIN)/.installed
	$(BIN)/python benchmarks/refresh_bench.py --out data/bench

lint: $(BIN)/.installed
	$(BIN)/ruff check .

## clean-data: forget every artifact and run (data/ is all generated)
clean-data:
	find data -mindepth 1 ! -name .gitkeep -delete
