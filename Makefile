# Two commands for a fresh machine: `make repro` (set up + run the default pipeline), `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup repro test lint ui tracking-server bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the CPU wheel of torch 2.13 (from local disk here); a range admitting it then installs nothing more
	$(BIN)/pip install -q "torch==2.13.0" || $(BIN)/pip install -q "torch>=2.2,<2.14"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

repro: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	@echo "runs, metrics, models and the policy video are in MLflow: make ui, then open http://127.0.0.1:5000"

ui: $(STAMP)
	$(BIN)/smiling-cli ui

# an MLflow server on PostgreSQL (data in .tracking/) for sweep --backend ray; Ctrl-C stops it
tracking-server: $(STAMP)
	$(BIN)/smiling-cli tracking-server

# Two pytest-xdist workers, each taking whole test files (a file's module-scoped server, Ray cluster or browser is built
# once, in conftest.py's order: --no-loadscope-reorder, else xdist sorts files by their number of tests; --dist
# loadgroup does not group under pytest 9.2, pytest-xdist issue 1386),
# with the temporary files (MLflow's SQLite stores, PostgreSQL, Ray's session) in memory where /dev/shm has 2 GB free:
# a new MLflow store alone makes ~1,100 fdatasync calls, seconds of waiting on a disk.
TEST_TMPDIR := $(shell [ "$$(df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 {print $$4}')" -gt 2000000 ] 2>/dev/null && echo /dev/shm)

test: $(STAMP)
	$(if $(TEST_TMPDIR),TMPDIR=$(TEST_TMPDIR)) $(BIN)/pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=15

lint: $(STAMP)
	$(BIN)/ruff check smiling_pipeline tests benchmarks studies
	$(BIN)/mypy smiling_pipeline

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) mlflow.db mlruns data/pipeline data/minari
