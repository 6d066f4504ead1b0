# The two commands of the README: `make demo` and `make test`. Both set up what they need first.
VENV   := .venv
STAMP  := $(VENV)/.installed-stamp
export DAGSTER_HOME := $(CURDIR)/dagster_home
export PYANNOTE_METRICS_ENABLED := false
export EMILIA_LOCAL_STORE ?= $(CURDIR)/data

.PHONY: setup demo test test-fast lint dev validate clean

$(STAMP): pyproject.toml scripts/bootstrap.sh
	./scripts/bootstrap.sh
	touch $@

setup: $(STAMP)

demo: setup
	RAW_AUDIO_SENSOR_INTERVAL_S=5 $(VENV)/bin/python -m emilia_assets.demo

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider

test-fast: setup
	$(VENV)/bin/python -m pytest -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

validate: setup
	$(VENV)/bin/dagster definitions validate -w workspace.yaml

dev: setup
	$(VENV)/bin/dagster dev -w workspace.yaml

clean:
	rm -rf data dagster_home/storage dagster_home/history dagster_home/schedules dagster_home/logs
