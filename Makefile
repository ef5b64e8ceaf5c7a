# CroPS retrieval — the two quickstart commands are `make serve` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -q -c constraints.txt
PORT ?= 8000
HOST ?= 0.0.0.0
DEFAULT_DIR ?= runs/default
BUNDLE ?= $(DEFAULT_DIR)/bundle
export OPENBLAS_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: serve test lint docs bundle bench install-serve install-dev clean help

help:
	@echo "make serve   set up, build the default bundle if missing, serve /retrieve on :$(PORT)"
	@echo "make test    set up and run lint + the test suite"
	@echo "make lint    ruff, mypy, import-linter"
	@echo "make docs    regenerate docs/reference/ from the code (CLI, HTTP API, settings, metrics, schemas)"
	@echo "make bench   performance benchmark (see docs/results/bench.md)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Stamps re-run the install only when pyproject.toml changes.
$(VENV)/.stamp-serve: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) -e ".[serve,export,index]"
	touch $@

$(VENV)/.stamp-dev: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) -e ".[serve,export,index,train,spark,loadtest,dev]"
	touch $@ $(VENV)/.stamp-serve

install-serve: $(VENV)/.stamp-serve
install-dev: $(VENV)/.stamp-dev

$(BUNDLE)/.complete: | $(VENV)/.stamp-serve
	$(BIN)/crops world catalog --out $(DEFAULT_DIR)/catalog.jsonl
	$(BIN)/crops export --out $(BUNDLE) --force
	$(BIN)/crops index build --bundle $(BUNDLE) --corpus $(DEFAULT_DIR)/catalog.jsonl
	touch $@

bundle: $(BUNDLE)/.complete

# GLIBC_TUNABLES: the index and model on transparent huge pages (service/heap.py).
serve: install-serve bundle
	GLIBC_TUNABLES=$${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1} $(BIN)/crops serve --bundle $(BUNDLE) --host $(HOST) --port $(PORT)

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/mypy core world towers service index_builder model_export loadtest online crops training \
		benchmarks/harness.py benchmarks/vectors.py benchmarks/fleet.py benchmarks/stock_index.py benchmarks/overload.py \
		benchmarks/overload_client.py benchmarks/overload_report.py benchmarks/schemathesis_run.py benchmarks/gpu_pack.py \
		benchmarks/batch_slots.py
	$(BIN)/lint-imports

docs: install-dev
	$(BIN)/python -m crops.docgen

test: install-dev
	$(BIN)/pytest -q

# The 1M benchmark, in three steps that each reuse what an earlier run built under runs/realq:
# 1. real_query_recall: doc-tower vectors of real catalogs (and recall vs exact on 4 real query sets);
# 2. index_memory: those vectors expanded to 1M; the IVF-PQ + SQ8 refine recipe and an HNSW32,SQ8 graph,
#    each tuned on real (MIMICS) queries; memory and latency per worker (docs/results/index_memory_1M.md);
# 3. fleet: the HNSW bundle (the faster of the two at recall 0.95) served: the in-process limit, the
#    service, nginx in front of replicas (when nginx is installed), granian, the strong and the naive
#    peer (docs/results/bench.{md,json,png}).
# `python -m benchmarks.fleet --quick` is a 100k-vector, 5 s-per-point development run on its own.
BENCH_DIR = runs/realq
BENCH_BUNDLE = $(BENCH_DIR)/bundle_HNSW32_SQ8
bench: install-dev
	test -d $(BENCH_DIR)/vectors || $(BIN)/python -m benchmarks.real_query_recall
	test -f $(BENCH_BUNDLE)/index.faiss || $(BIN)/python -m benchmarks.index_memory --n 1000000
	test -f $(BENCH_BUNDLE)_stock/index.faiss || \
		$(BIN)/python -m benchmarks.stock_index --bundle $(BENCH_BUNDLE) --vectors $(BENCH_DIR)/vectors_1000000.npy
	$(BIN)/python -m benchmarks.fleet --bundle $(BENCH_BUNDLE) --vectors $(BENCH_DIR)/vectors_1000000.npy --publish

clean:
	rm -rf runs/default .pytest_cache .mypy_cache .ruff_cache
