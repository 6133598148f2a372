# One entry point per task; every target creates the virtualenv first if it is missing.
PYTHON  ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
DATASET ?= fashion_mnist
EPOCHS  ?=
LOCK    := requirements.lock
BENCH_LOCK := requirements-bench.lock
DVC_LOCK   := requirements-dvc.lock
DVC_VENV   := .venv-dvc
UV_VERSION := 0.13.9
export DAGSTER_HOME := $(CURDIR)
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: help run refresh offline test test-deploy dev status docs bench bench-graph bench-refresh bench-scale bench-models lint lock lock-bench clean-data

# The whole dependency tree comes from the lock (exact versions, every file's sha256); pyproject.toml's
# ranges only decide what the lock may pick (`make lock`). The lock holds the test and deploy extras, so
# every .venv can run test-deploy. The project itself goes in last, without deps.
$(BIN)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

$(BIN)/uv:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet uv==$(UV_VERSION)

## lock: re-resolve requirements.lock from pyproject.toml ([project] dependencies + the test and deploy
## extras) for Python 3.11, keeping the current pins where they still fit; UPGRADE=1 takes the newest
## allowed versions; then the benchmark's locks (lock-bench)
lock: $(BIN)/uv
	$(BIN)/uv pip compile pyproject.toml --extra test --extra deploy --universal --python-version 3.11 \
	  --generate-hashes --no-strip-extras --custom-compile-command 'make lock' \
	  $(if $(UPGRADE),--upgrade) --quiet -o $(LOCK)
	$(MAKE) lock-bench

## lock-bench: re-resolve the benchmark's locks (`make bench` only; CI and `make test` never install them):
## requirements-bench.lock is requirements.lock (its pins as constraints, so none moves) plus the bench
## extra (TensorFlow Datasets, which needs the locked TensorFlow), installed into .venv; requirements-dvc.lock
## is the bench-dvc group alone, installed into .venv-dvc: DVC's hydra-core pins antlr4 4.9, which cannot
## share an environment with Dagster (its asset selection parser needs the 4.13 runtime)
lock-bench: $(BIN)/uv
	$(BIN)/uv pip compile pyproject.toml --extra test --extra deploy --extra bench -c $(LOCK) --universal \
	  --python-version 3.11 --generate-hashes --no-strip-extras --custom-compile-command 'make lock-bench' \
	  $(if $(UPGRADE),--upgrade) --quiet -o $(BENCH_LOCK)
	$(BIN)/uv pip compile --group pyproject.toml:bench-dvc --universal --python-version 3.11 \
	  --generate-hashes --no-strip-extras --custom-compile-command 'make lock-bench' \
	  $(if $(UPGRADE),--upgrade) --quiet -o $(DVC_LOCK)

# The benchmark's peers: TensorFlow Datasets into .venv (the same pins as the lock, plus its own), DVC
# into a virtualenv of its own (figure 7 runs it as a command)
$(BIN)/.bench-installed: $(BIN)/.installed $(BENCH_LOCK)
	$(BIN)/pip install --quiet --require-hashes -r $(BENCH_LOCK)
	touch $@

$(DVC_VENV)/bin/dvc: $(DVC_LOCK)
	$(PYTHON) -m venv $(DVC_VENV)
	$(DVC_VENV)/bin/pip install --quiet --require-hashes -r $(DVC_LOCK)
	touch $@

## run: build every asset and partition of DATASET (default fashion_mnist) into data/ with `mnist-assets refresh`
## (what is missing or stale; the steps' progress on stderr, its JSON summary in data/refresh-DATASET.json),
## then print the status; EPOCHS=N materializes everything with the plain Dagster CLI instead
## (scripts/materialize.sh), training N epochs (a one-off run config, which staleness does not track)
run: $(BIN)/.installed
	$(if $(EPOCHS),scripts/materialize.sh $(DATASET) $(EPOCHS),$(BIN)/mnist-assets refresh $(DATASET) > data/refresh-$(DATASET).json)
	$(BIN)/mnist-assets status $(DATASET)

## refresh: rebuild exactly the stale or missing partitions of DATASET; DRY_RUN=1 prints the plan only,
## VERIFY=1 also reads every stored artifact against its checksums and rebuilds what is damaged,
## SELECT=ASSETS only those (e.g. SELECT=+shards, SELECT='checkpoint[cnn]'; README: Recompute only what is stale)
refresh: $(BIN)/.installed
	$(BIN)/mnist-assets refresh $(DATASET) $(if $(DRY_RUN),--dry-run) $(if $(VERIFY),--verify) \
	  $(if $(SELECT),--select '$(SELECT)')

FASHION_DEBIAN := /usr/share/datasets/fashion-mnist

$(FASHION_DEBIAN):
	apt-get update && apt-get install -y dataset-fashion-mnist

## offline: install Debian's Fashion-MNIST, then materialize it from that directory only
offline: | $(FASHION_DEBIAN)
	$(MAKE) run DATASET=fashion_mnist MNIST_ASSETS_MIRROR_FASHION_MNIST=/usr/share/datasets/fashion-mnist

# the browser the UI test drives (mnist_assets_tests/test_ui_browser.py; skipped where it is missing)
CHROMIUM := /usr/bin/chromium

$(CHROMIUM):
	apt-get update && apt-get install -y --no-install-recommends chromium

## test: the test suite on 2 workers (real loopback mirrors, real instances, tiny TensorFlow, a real browser);
## installs what its tests need when missing, through apt-get: Debian's dataset-fashion-mnist and chromium
test: $(BIN)/.installed | $(FASHION_DEBIAN) $(CHROMIUM)
	$(BIN)/python -m pytest -q -n 2

## test-deploy: the deployment tests (issue 13): the small graph on PostgreSQL 15 with two Celery workers,
## a Redis broker and artifacts on moto's S3 server, each started on loopback in a temporary directory
## and stopped; needs Debian's postgresql-15 and redis-server (apt-get install -y postgresql-15
## redis-server), run as root; moto comes with the deploy extra
test-deploy: $(BIN)/.installed
	$(BIN)/python -m pytest -q -m deploy mnist_assets_tests/deploy

## dev: the Dagster UI on http://127.0.0.1:3000 (DEV_PORT) with the same instance and data as `make run`;
## Ctrl-C or kill stops it and everything it started, also when it was started in the background
## (scripts/with_default_signals.py says why that needs a wrapper)
DEV_PORT ?= 3000
dev: $(BIN)/.installed
	$(BIN)/python scripts/with_default_signals.py $(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p $(DEV_PORT)

## status: what is materialized for DATASET, with data versions, step seconds and paths
status: $(BIN)/.installed
	$(BIN)/mnist-assets status $(DATASET)

## docs: regenerate docs/faults.md (the fault table) from the fault-injection tests
docs: $(BIN)/.installed
	$(BIN)/python -m mnist_assets_tests.faults > docs/faults.md

## bench: issues 11 and 23's suite (figures 1-4 and 6-8, each a ratio to a baseline measured in the same run,
## on full-size Fashion-MNIST served by a loopback mirror; 7 and 8 beside DVC and TensorFlow Datasets,
## installed here from their own locks) -> docs/benchmarks.md and docs/benchmarks.json (~20 min);
## FIGURES=7,8 measures only those and merges them into the existing report
bench: $(BIN)/.bench-installed $(DVC_VENV)/bin/dvc | $(FASHION_DEBIAN)
	$(BIN)/python benchmarks/suite.py --out docs --dvc $(DVC_VENV)/bin/dvc $(if $(FIGURES),--figures $(FIGURES))

## bench-graph: full-size Fashion-MNIST graph with the default training config, beside a plain script
bench-graph: $(BIN)/.installed
	$(BIN)/python benchmarks/graph_bench.py --out data/bench

## bench-refresh: no-op and training-change refresh beside bare `dagster asset materialize`
bench-refresh: $(BIN)/.installed
	$(BIN)/python benchmarks/refresh_bench.py --out data/bench

## bench-scale: figure 5, every data stage and one loader pass at 1x, 10x and 100x Fashion-MNIST's size
## (generated data; 100x needs ~15 GB of scratch disk) -> data/bench/scale_bench.{json,md}; SCALES="1 10" for fewer
bench-scale: $(BIN)/.installed
	$(BIN)/python benchmarks/scale_bench.py --out data/bench $(if $(SCALES),--scales $(SCALES))

## bench-models: issue 14's model quality: every training configuration each of MODEL_DATASETS lists, trained
## by `mnist-assets prepare` in a scratch instance (parameters, training seconds, test and holdout accuracy,
## load average; goal: Fashion-MNIST holdout >= 0.925 in <= 300 s) -> docs/model_quality.{json,md}. MNIST's
## mirrors are on the internet (or set MNIST_ASSETS_MIRROR_MNIST); unreachable, it is reported, not fatal
MODEL_DATASETS ?= fashion_mnist mnist
bench-models: $(BIN)/.installed | $(FASHION_DEBIAN)
	$(BIN)/python benchmarks/model_quality.py --out docs $(foreach d,$(MODEL_DATASETS),--dataset $(d))

## lint: ruff check, ruff format --check and mypy; all three run, and lint fails if any of them failed
lint: $(BIN)/.installed
	status=0; \
	$(BIN)/ruff check . || status=1; \
	$(BIN)/ruff format --check . || status=1; \
	$(BIN)/mypy mnist_assets || status=1; \
	exit $$status

## clean-data: forget every artifact and run (data/ is all generated)
clean-data:
	find data -mindepth 1 ! -name .gitkeep -delete

## help: every target and what it does (the Makefile's ## lines)
help:
	@sed -n 's/^## //p' $(firstword $(MAKEFILE_LIST))
