# Common commands. Everything a run writes goes to $(STATE) (default .state/).
SHELL := /bin/bash
PY_VERSION ?= 3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STATE ?= $(CURDIR)/.state
DATA ?= $(abspath ../shared/datasets/fashion-product-images)
WEEKS ?= 2
START ?= 2026-11-02
AIRFLOW_PORT ?= 8080
MLFLOW_PORT ?= 5000

export LCP_STATE_DIR := $(STATE)
export AIRFLOW_HOME := $(STATE)/airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__PLUGINS_FOLDER := $(CURDIR)/plugins
export GX_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export PYTHONUNBUFFERED := 1
# no tqdm bars on stderr for MLflow's artifact downloads: Airflow logs a task's stderr at ERROR
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR ?= false
export LCP_MLFLOW_UI_URL ?= http://localhost:$(MLFLOW_PORT)


_SEASON_WEEKS = $(if $(filter command line environment,$(origin WEEKS)),$(WEEKS),10)

.PHONY: venv demo season test test-fast test-stack lint status ui clean-state reproduce

# Virtual environment with the pinned dependencies (requirements/dev.lock, resolved by uv).
$(VENV)/.installed: requirements/dev.lock pyproject.toml
	command -v uv >/dev/null || python3 -m pip install -q uv
	uv venv -q --allow-existing --python $(PY_VERSION) $(VENV)
	# --compile-bytecode: every installed module's bytecode written once, here; where the shell
	# sets PYTHONDONTWRITEBYTECODE (some hosts do) each task process would otherwise recompile
	# torch, Airflow, MLflow and GX from source (seconds per process)
	uv pip install -q --compile-bytecode --python $(PY) -r requirements/dev.lock
	uv pip install -q --python $(PY) --no-deps -e .
	$(PY) plugins/data_docs_assets.py fetch  # Data Docs' scripts and styles, served offline (npm)
	touch $@

venv: $(VENV)/.installed

## make demo: publish the catalog as WEEKS weekly batches and run the DAG once per week.
demo: venv
	$(PY) scripts/demo.py --data "$(DATA)" --weeks $(WEEKS) --start $(START)

## make season: publish the catalog in its time order as WEEKS (default 10) weekly batches, run the DAG
## once per week with the quick profile (profiles/season.yaml), print the season table (<state>/season/).
season: venv
	$(PY) scripts/season.py --data "$(DATA)" --weeks $(_SEASON_WEEKS) $(if $(filter command line environment,$(origin START)),--start $(START))

## make test: the whole test suite (what .ci/run calls), native-stack and browser tests included.
test: venv
	$(PY) -m pytest -q

## make test-fast: everything but the native-stack tests.
test-fast: venv
	$(PY) -m pytest -q -m "not stack"

## make test-stack: the native Celery stack + headless Chromium tests (needs PostgreSQL, Redis, /usr/bin/chromium).
test-stack: venv
	$(PY) -m pytest -q -m stack

lint: venv
	$(VENV)/bin/ruff check .

## make status: registry state as JSON (champion, every version's decision and scores).
status: venv
	@$(PY) -m promotion.status

## make ui: Airflow UI on :$(AIRFLOW_PORT) (api-server first, then scheduler, dag-processor, triggerer) and
## MLflow UI on :$(MLFLOW_PORT); Ctrl-C stops both with every task they run (scripts/stop_airflow.py).
ui: venv
	VENV=$(VENV) STATE=$(STATE) AIRFLOW_PORT=$(AIRFLOW_PORT) MLFLOW_PORT=$(MLFLOW_PORT) scripts/ui.sh

## make reproduce VERSION=<n>: restore a model version's data, code and params and re-run dvc repro.
reproduce: venv
	@test -n "$(VERSION)" || { echo "usage: make reproduce VERSION=<model version>"; exit 2; }
	$(PY) -m promotion.reproduce --version $(VERSION)

clean-state:
	rm -rf "$(STATE)"
