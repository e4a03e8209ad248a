# Two commands for a newcomer: `make demo` and `make test`. Everything else builds on them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
# Service worker processes for `make serve` and `make bench`: one per core of this 2-core box.
SERVE_WORKERS := FLIGHT_DELAY_WORKERS=$${FLIGHT_DELAY_WORKERS:-2}
UV ?= $(shell command -v uv 2>/dev/null || echo python3 -m uv)
DAGSTER := $(UV) run --frozen dagster

# The CLI runs a partition range in one run only for assets that are all partitioned, so the
# graph goes in three steps: reference tables and the Feast registry, the daily assets, training.
REFERENCE_ASSETS := raw_airports,raw_airlines,raw_planes,aircraft_profile,feature_registry
DAILY_ASSETS := raw_flights,raw_weather,departures,origin_hourly_weather,origin_1h_departures,origin_carrier_3h_departures,aircraft_last_departure,carrier_7d_delays,route_28d_delays,online_features
TRAINING_ASSETS := training_set,delay_model,model_promotion,prediction_bento

# Debian packages the tests drive for real: Chromium (the Dagster UI test), Redis (the Redis
# online store).
SYSTEM_PACKAGES := chromium redis-server

.PHONY: help setup system-deps demo evaluate materialize test ui serve bench rollback clean

help:
	@echo "make demo      set up, then materialize the whole graph on January-March 2013"
	@echo "make test      set up, then run the test suite"
	@echo "make evaluate  full year: train January-September, evaluate October-December"
	@echo "make ui        the Dagster UI on http://127.0.0.1:3030"
	@echo "make serve     the prediction service on http://127.0.0.1:3000 (after make demo)"
	@echo "make bench     latency and throughput of the service against a naive baseline"

setup:
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet 'uv>=0.5'
	$(UV) sync --frozen
	@mkdir -p $(DAGSTER_HOME) && touch $(DAGSTER_HOME)/dagster.yaml

# RANGE and CONFIG select the window; FLIGHT_DELAY_DATA_DIR the data folder (default: data/).
materialize:
	$(DAGSTER) asset materialize -m pipeline.definitions --select $(REFERENCE_ASSETS)
	$(DAGSTER) asset materialize -m pipeline.definitions --select $(DAILY_ASSETS) --partition-range $(RANGE)
	$(DAGSTER) asset materialize -m pipeline.definitions --select $(TRAINING_ASSETS) -c $(CONFIG)

demo: setup
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory materialize RANGE=2013-01-01...2013-03-31 CONFIG=pipeline/run_config/demo.yaml && \
	$(UV) run --frozen python -m pipeline.report --next-steps --started $$start

evaluate: setup
	@start=$$(date +%s); \
	export FLIGHT_DELAY_DATA_DIR=$(CURDIR)/data/full-year; \
	$(MAKE) --no-print-directory materialize RANGE=2013-01-01...2013-12-31 CONFIG=pipeline/run_config/evaluate.yaml && \
	$(UV) run --frozen python -m pipeline.report --started $$start

system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

test: setup system-deps
	$(UV) run --frozen pytest

ui: setup
	$(DAGSTER) dev -w workspace.yaml -h 127.0.0.1 -p 3030

# The prediction service for the current champion (after `make demo`), on 127.0.0.1:3000.
serve: setup
	$(SERVE_WORKERS) $(UV) run --frozen bentoml serve serving.service:FlightDelayService --host 127.0.0.1 --port 3000

# Latency and throughput of the service against a naive Keras-predict baseline (after `make demo`).
# About 9 minutes; QUICK=1 for a 2-minute smoke run; BENCH_ARGS for more (--sustain-seconds 60).
bench: setup
	$(SERVE_WORKERS) $(UV) run --frozen python -m serving.bench $(if $(QUICK),--quick) $(BENCH_ARGS)

# Restore the previous champion; the running service switches within a second.
rollback: setup
	$(UV) run --frozen python -m flight_delay.registry rollback --reason "$${REASON:-manual rollback}"

clean:
	rm -rf data .dagster_home
