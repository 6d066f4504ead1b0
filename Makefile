# The two commands of the README: `make demo` and `make test`. Both set up what they need first.
VENV   := .venv
STAMP  := $(VENV)/.installed-stamp
TINY   := models/tiny
SHARED_DNSMOS := $(wildcard ../shared/models/dnsmos)
export DAGSTER_HOME := $(CURDIR)/dagster_home
export PYANNOTE_METRICS_ENABLED := false
export EMILIA_LOCAL_STORE ?= $(CURDIR)/data
# The embedded default runs every stage on tiny random-weight models (production: `emilia-forge models fetch`).
export EMILIA_MODELS_DIR ?= $(CURDIR)/$(TINY)

.PHONY: setup demo test test-fast lint dev validate clean

$(STAMP): pyproject.toml scripts/bootstrap.sh
	./scripts/bootstrap.sh
	touch $@

$(TINY)/models.json: $(STAMP) emilia_pipe/models.py $(wildcard emilia_pipe/tiny/*.py)
	$(VENV)/bin/emilia-forge models tiny $(TINY) $(if $(SHARED_DNSMOS),--dnsmos $(SHARED_DNSMOS))

setup: $(STAMP) $(TINY)/models.json

demo: setup clean
	# Starts from an empty local store and instance, so every run of the demo shows the whole chain.
	# Random weights detect no language with confidence, so the demo names it (as ASR_LANGUAGE does in production).
	# Their output may only be published as a test release (HF_TEST_RELEASE=1); the card says so.
	ASR_LANGUAGE=en HF_TEST_RELEASE=1 RAW_AUDIO_SENSOR_INTERVAL_S=5 $(VENV)/bin/python -m emilia_assets.demo

# -rs: every skipped test is listed with its reason (e.g. real model files absent from ../shared/models).
test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q -rs --durations=15 -p no:cacheprovider

test-fast: setup
	$(VENV)/bin/python -m pytest -q -rs -m "not slow"

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

validate: setup
	$(VENV)/bin/dagster definitions validate -w workspace.yaml

dev: setup
	$(VENV)/bin/dagster dev -w workspace.yaml

clean:
	rm -rf data dagster_home/storage dagster_home/history dagster_home/schedules dagster_home/logs
