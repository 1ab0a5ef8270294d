# The two commands a user needs: `make demo` and `make test`. Everything else is a building block.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
KAFKA := deploy/kafka/kafka.sh
export KAFKA_BOOTSTRAP_SERVERS ?= 127.0.0.1:9092
# Docker Compose v2, built from its Go module once per version into a cache outside the clone
# (`make compose-tool`); tests/unit/deploy/test_compose.py runs its `config` on every variant.
GO ?= $(or $(shell command -v go 2>/dev/null),/usr/local/go/bin/go)
COMPOSE_VERSION := v2.32.4
COMPOSE_CACHE ?= $(HOME)/.cache/gmm-ci/compose-$(COMPOSE_VERSION)
COMPOSE_BIN := $(COMPOSE_CACHE)/docker-compose
export DOCKER_COMPOSE ?= $(wildcard $(COMPOSE_BIN))
# The test targets build it first where Go is (compose-tool-if-go) and give the tests the build
# then in the cache, unless DOCKER_COMPOSE names another Compose; without Go (or when the build
# fails) the compose tests skip, saying how to get one.
TEST_COMPOSE = DOCKER_COMPOSE="$${DOCKER_COMPOSE:-$$([[ -x $(COMPOSE_BIN) ]] && echo $(COMPOSE_BIN))}"
# The suite runs in parallel processes (pytest-xdist): each test has topics of its own, and most
# of the time is spent waiting on the broker and on worker and trainer processes, so more
# processes than CPUs pay (on 2 CPUs, cold caches: 9.5 min with 3 or 4 processes, about 16 one by
# one; 3 leave the broker and the subprocesses more room). A test file whose tests share a
# module-scoped fixture (a broker of their own) runs in one process, every other test wherever a
# process is free (tests/conftest.py's scheduler for --dist loadscope). `make test PYTEST_PAR=`
# runs them one by one.
PYTEST_PAR ?= -n 3 --dist loadscope
# Most of the suite's CPU time is XLA compiling the tests' programs and NumPyro tracing the fits':
# the test targets keep both in a JAX compilation cache outside the clone, from run to run (as
# ccache keeps objects), the traced fit programs in its programs/ (as the trainer keeps them),
# keyed by program, compile options, code and JAX version. `make test TEST_JAX_CACHE=` gives
# each run a new one (every program traced and compiled again: the cold time).
TEST_JAX_CACHE ?= $(HOME)/.cache/gmm-ci/jax-tests
TEST_ENV = $(TEST_COMPOSE) GMM_TESTS_JAX_CACHE_DIR="$(TEST_JAX_CACHE)"

.PHONY: help venv venv-quix kafka-up kafka-down kafka-status test test-quick test-unit test-integration demo demo-down lint typecheck bench bench-summary device-wheels clean compose-tool \
	compose-tool-if-go

help:
	@echo "make demo              set up, start Kafka, run the demo (make demo-down stops it)"
	@echo "make test              set up, start Kafka, run the whole test suite"
	@echo "make test-quick        the suite without the slow fault tests"
	@echo "make test-unit         unit tests only (no broker)"
	@echo "make kafka-up|kafka-down|kafka-status"
	@echo "make lint typecheck bench clean"
	@echo "make venv-quix         the Quix Streams venv (.venv-quix) bench/stream.py runs its Quix app in"
	@echo "make compose-tool      build Docker Compose $(COMPOSE_VERSION) (cached) for the compose tests"
	@echo "make bench-summary     rewrite docs/benchmarks.md's summary from bench/results/*.json"
	@echo "make device-wheels     wheels the GPU machine lacks, into .whl (for bench/device/run.sh)"

# The venv is rebuilt when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	@command -v $(PY) >/dev/null || { echo "setup: $(PY) not found (Python >= 3.11 is required)" >&2; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

venv: $(VENV)/.installed

# The Quix Streams app of bench/stream.py runs in a venv of its own: quixstreams (the `bench`
# extra) requires confluent-kafka < 2.13, the dev extra pins 2.16.1.
QUIX_VENV := .venv-quix
$(QUIX_VENV)/.installed: pyproject.toml
	@command -v $(PY) >/dev/null || { echo "setup: $(PY) not found (Python >= 3.11 is required)" >&2; exit 1; }
	$(PY) -m venv $(QUIX_VENV)
	$(QUIX_VENV)/bin/pip install -q --upgrade pip
	$(QUIX_VENV)/bin/pip install -q -e '.[bench]'
	@touch $@

venv-quix: $(QUIX_VENV)/.installed

kafka-up:
	@bash $(KAFKA) up

kafka-down:
	@bash $(KAFKA) down

kafka-status:
	@bash $(KAFKA) status

test: venv kafka-up compose-tool-if-go
	$(if $(TEST_JAX_CACHE),@mkdir -p -m 700 $(TEST_JAX_CACHE))
	$(TEST_ENV) $(BIN)/pytest tests $(PYTEST_PAR) --durations=30

test-quick: venv kafka-up compose-tool-if-go
	$(if $(TEST_JAX_CACHE),@mkdir -p -m 700 $(TEST_JAX_CACHE))
	$(TEST_ENV) $(BIN)/pytest tests -m "not slow" $(PYTEST_PAR)

test-unit: venv compose-tool-if-go
	$(if $(TEST_JAX_CACHE),@mkdir -p -m 700 $(TEST_JAX_CACHE))
	$(TEST_ENV) $(BIN)/pytest tests/unit $(PYTEST_PAR)

test-integration: venv kafka-up
	$(BIN)/pytest tests/integration $(PYTEST_PAR)

demo: venv kafka-up
	@bash deploy/demo.sh

demo-down:
	@for p in prometheus trainer worker; do \
	  if [ -f .run/demo/$$p.pid ]; then kill $$(cat .run/demo/$$p.pid) 2>/dev/null || true; rm -f .run/demo/$$p.pid; echo "demo: $$p stopped"; fi; \
	done
	@bash $(KAFKA) down

# `go install` names the binary after its package directory (cmd); it is renamed, and only a
# complete build is moved into place, so an interrupted one is retried on the next run.
compose-tool: $(COMPOSE_BIN)

# For the test targets: the build where Go is, a warning where it fails, nothing without Go.
compose-tool-if-go:
	@if [[ -z "$$DOCKER_COMPOSE" && ! -x $(COMPOSE_BIN) ]] && command -v $(GO) >/dev/null; then \
	  echo "compose-tool: building Docker Compose $(COMPOSE_VERSION) for the compose tests (once)"; \
	  $(MAKE) --no-print-directory compose-tool \
	    || echo "compose-tool: build failed; the compose tests will skip" >&2; \
	fi

$(COMPOSE_BIN):
	@command -v $(GO) >/dev/null || { echo "compose-tool: Go not found (set GO=/path/to/go)" >&2; exit 1; }
	@mkdir -p $(COMPOSE_CACHE)
	rm -rf $(COMPOSE_CACHE)/tmp
	GOBIN=$(COMPOSE_CACHE)/tmp $(GO) install -trimpath \
	  -ldflags "-s -w -X github.com/docker/compose/v2/internal.Version=$(COMPOSE_VERSION)" \
	  github.com/docker/compose/v2/cmd@$(COMPOSE_VERSION)
	mv $(COMPOSE_CACHE)/tmp/cmd $@
	rmdir $(COMPOSE_CACHE)/tmp
	@$@ version

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

bench: venv venv-quix kafka-up
	$(BIN)/python -m bench.inference
	$(BIN)/python -m bench.fit
	$(BIN)/python -m bench.window
	$(BIN)/python -m bench.stream
	$(BIN)/python -m bench.codecs
	$(BIN)/python -m bench.scaleout
	$(BIN)/python -m bench.memory
	$(BIN)/python -m bench.soak
	$(BIN)/python -m bench.drift
	$(BIN)/python -m bench.contamination
	$(BIN)/python -m bench.startup
	$(MAKE) bench-summary

# docs/benchmarks.md's summary is rendered from bench/results/*.json (a unit test checks it).
bench-summary: venv
	$(BIN)/python -m bench.summary --write

# The wheels the device machine (Python 3.12, no registry) lacks for bench/device/run.sh: funsor
# and its makefun, orjson, and NumPyro at the project's pin (the machine has 0.21). Same versions
# as pyproject.toml and the venv; each without its dependencies (the machine has the rest).
DEVICE_WHEELS := funsor==0.4.8 makefun==1.16.0 numpyro==0.22.0 orjson==3.13.0
DEVICE_PLATFORMS := manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 \
	manylinux2014_x86_64 manylinux1_x86_64

device-wheels: venv
	rm -rf .whl && mkdir -p .whl
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
	  --implementation cp $(addprefix --platform ,$(DEVICE_PLATFORMS)) -d .whl $(DEVICE_WHEELS)
	@ls .whl

clean: demo-down
	rm -rf .kafka .run reports
