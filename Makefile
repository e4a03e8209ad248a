# Two commands for a newcomer: `make demo` and `make test`. Everything else builds on them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
# Service worker processes for `make serve` and `make bench`: one per core of this 2-core box.
SERVE_WORKERS := FLIGHT_DELAY_WORKERS=$${FLIGHT_DELAY_WORKERS:-2}
UV ?= $(shell command -v uv 2>/dev/null || echo python3 -m uv)
DAGSTER := $(UV) run --frozen dagster


# Debian packages the tests drive for real: Chromium (the Dagster UI test), Redis (the Redis
# online store; openssl makes the certificates of its TLS test), Prometheus with promtool and
# Alertmanager with amtool (the rules, alerts and dashboards' queries). PostgreSQL below.
SYSTEM_PACKAGES := chromium redis-server openssl prometheus prometheus-alertmanager

.PHONY: help setup system-deps demo evaluate materialize lint test ui serve bench bench-ab bench-interference drift-scenario replay rollback monitor images deploy-check clean

help:
	@echo "make demo      set up, then materialize the whole graph on January-March 2013"
	@echo "make test      set up, then run the test suite"
	@echo "make evaluate  full year: train January-September, evaluate October-December"
	@echo "make ui        the Dagster UI on http://127.0.0.1:3030"
	@echo "make serve     the prediction service on http://127.0.0.1:3000 (after make demo)"
	@echo "make bench     latency and throughput of the service, beside its floor and a naive baseline"
	@echo "make bench-ab BASELINE=DIR  this checkout's service against another checkout's, interleaved"
	@echo "make replay    March-December 2013 through the service and the loop's sensors (static vs monthly vs loop)"
	@echo "make monitor   Prometheus (http://127.0.0.1:19090) and Alertmanager (:19093) watching make serve"
	@echo "make images    the service and Dagster user-code images (needs a Docker engine)"
	@echo "make deploy-check  render deploy/k8s and the Jobs Dagster creates, validate them, lint images and workflow, checkov"

setup:
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet 'uv>=0.5'
	@$(UV) sync --frozen --quiet
	@mkdir -p $(DAGSTER_HOME) && [ -s $(DAGSTER_HOME)/dagster.yaml ] || printf 'telemetry:\n  enabled: false\n' > $(DAGSTER_HOME)/dagster.yaml

# RANGE and CONFIG select the window; FLIGHT_DELAY_DATA_DIR the data folder (default: data/).
# Three `dagster asset materialize` runs (python -m pipeline.materialize says why); VERBOSE=1
# prints every Dagster event, which the UI shows in any case.
materialize:
	@$(UV) run --frozen python -m pipeline.materialize --range $(RANGE) -c $(CONFIG) $(if $(VERBOSE),--verbose)

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
	@# PostgreSQL (the shared log and champion history's tests start their own): any build with initdb.
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  echo "installing postgresql"; if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql >/dev/null; }

lint: setup
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .

test: setup system-deps lint
	$(UV) run --frozen pytest

ui: setup
	$(DAGSTER) dev -w workspace.yaml -h 127.0.0.1 -p 3030

# The prediction service for the current champion (after `make demo`), on 127.0.0.1:3000.
serve: setup
	$(SERVE_WORKERS) $(UV) run --frozen bentoml serve serving.service:FlightDelayService --host 127.0.0.1 --port 3000

# Latency and throughput of the service beside the floor (the same API over nothing) and a naive
# Keras-predict baseline (after `make demo`); QUICK=1 for a smoke run; BENCH_ARGS for more.
bench: setup
	$(SERVE_WORKERS) $(UV) run --frozen python -m bench $(if $(QUICK),--quick) $(BENCH_ARGS)

# This checkout's service against another checkout's, in interleaved rounds (bench/ab.py):
# BASELINE is a checkout of the code to compare with (a git worktree), set up, with its own
# `make demo` data in BASELINE/data.
bench-ab: setup
	@[ -n "$(BASELINE)" ] || { echo "usage: make bench-ab BASELINE=<checkout to compare with>"; exit 2; }
	$(SERVE_WORKERS) $(UV) run --frozen python -m bench.ab --baseline $(BASELINE) $(BENCH_ARGS)

# Predictions alone and with feedback that waits for the log alongside: one and two workers.
bench-interference: setup
	$(UV) run --frozen python -m bench.interference $(BENCH_ARGS)

# The drift alert on July traffic, and its silence on the training months, through two services,
# Redis and Prometheus with the project's rules (bench/drift_scenario.py). Its data (January to
# July, trained on January 1 - March 10 as the demo) is built once, about 5 minutes.
DRIFT_DATA := $(CURDIR)/data/drift-scenario
drift-scenario: setup system-deps
	@[ -d $(DRIFT_DATA)/bentoml ] || FLIGHT_DELAY_DATA_DIR=$(DRIFT_DATA) $(MAKE) --no-print-directory materialize \
	  RANGE=2013-01-01...2013-07-31 CONFIG=pipeline/run_config/demo.yaml
	$(UV) run --frozen python -m bench.drift_scenario --data-dir $(DRIFT_DATA) $(BENCH_ARGS)

# A replay of 2013 through the running system (bench/replay.py): the service, its Redis online
# store fed as data time passes, and the Dagster daemon's loop sensors; report in data/replay/.
# Its data (the whole year through the asset graph, the static model of January-February) is
# built once, about 6 minutes. START, END (local days) and DAY_SECONDS (wall time per data day).
REPLAY_DATA := $(CURDIR)/data/replay
replay: setup system-deps
	@[ -d $(REPLAY_DATA)/bentoml ] || FLIGHT_DELAY_DATA_DIR=$(REPLAY_DATA) $(MAKE) --no-print-directory materialize \
	  RANGE=2013-01-01...2013-12-31 CONFIG=pipeline/run_config/replay.yaml
	$(UV) run --frozen python -m bench.replay --data-dir $(REPLAY_DATA) $(if $(START),--start $(START)) \
	  $(if $(END),--end $(END)) $(if $(DAY_SECONDS),--day-seconds $(DAY_SECONDS)) $(BENCH_ARGS)

# Restore the previous champion; the running service switches within a second.
rollback: setup
	$(UV) run --frozen python -m flight_delay.registry rollback --reason "$${REASON:-manual rollback}"

# Prometheus on 127.0.0.1:19090 and Alertmanager on 127.0.0.1:19093 with deploy/prometheus/'s
# config, scraping `make serve` (TARGETS=host:port,host:port for replicas); Ctrl-C stops both.
monitor: setup system-deps
	$(UV) run --frozen python -m deploy.prometheus.monitor $(if $(TARGETS),--targets $(TARGETS))

clean:
	rm -rf data .dagster_home

# The two images (deploy/docker/), where a Docker engine is; CI builds and pushes them on main.
TAG ?= $(shell git rev-parse --short HEAD)
images:
	docker build -f deploy/docker/service.Dockerfile -t flight-delay-service:$(TAG) .
	docker build -f deploy/docker/user-code.Dockerfile -t flight-delay-user-code:$(TAG) .

# Everything deployable, checked without a cluster: both overlays and the Jobs dagster-k8s would
# create, rendered into build/k8s and validated against Kubernetes 1.30; hadolint and the workflow
# schema (the tests in tests/deploy/); checkov, in a venv of its own (its python-dateutil breaks
# botocore in the project's).
CHECKOV := build/checkov-venv/bin/checkov
deploy-check: setup
	@mkdir -p build/k8s
	kubectl kustomize deploy/k8s/overlays/dev > build/k8s/dev.yaml
	kubectl kustomize deploy/k8s/overlays/aws > build/k8s/aws.yaml
	$(UV) run --frozen python -m deploy.k8s.dagster_jobs build/k8s/dagster-jobs
	$(UV) run --frozen kubernetes-validate --strict -k 1.30.0 build/k8s/dev.yaml build/k8s/aws.yaml build/k8s/dagster-jobs/*.yaml
	$(UV) run --frozen pytest -q tests/deploy
	@[ -x $(CHECKOV) ] || { python3 -m venv build/checkov-venv && build/checkov-venv/bin/pip install --quiet checkov; }
	# The manifests as files, then the overlays as kustomize renders them (checkov's own kustomize
	# runner crashed here on the dev overlay's multi-document files, then hung).
	$(CHECKOV) --skip-download --compact --quiet --framework kubernetes -d deploy/k8s
	$(CHECKOV) --skip-download --compact --quiet --framework kubernetes -f build/k8s/dev.yaml -f build/k8s/aws.yaml
	$(CHECKOV) --skip-download --compact --quiet -d deploy/docker
	$(CHECKOV) --skip-download --compact --quiet --framework github_actions -f .github/workflows/deploy.yml
