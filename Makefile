# Developer entry points. `make test` is what CI runs (.ci/run calls it).
VENV ?= .venv
BIN := $(VENV)/bin
export PYTHON := $(abspath $(BIN))/python

# The local OpenSearch node of the tests (deploy/opensearch/opensearch.sh); the tests read the URL.
export OPENSEARCH_PORT ?= 9200
export OPENSEARCH_URL ?= http://127.0.0.1:$(OPENSEARCH_PORT)
# What deploy/tools/install.sh prints: where helm, kubeconform, the schemas and promtool are.
TOOLS_ENV := $(VENV)/tools.env

.PHONY: venv test unit lint tools image-check demo replay-demo bench kafka-start kafka-stop \
	opensearch-start opensearch-stop clean

$(BIN)/falco-correlator: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(BIN)/falco-correlator

## The full suite: lint, types, unit tests, rule tests, the image's install steps, the deployment
## kit (Helm chart, alerts, dashboard) with the real tools, and integration tests on a real local
## Kafka broker and OpenSearch node.
test: venv tools image-check
	$(BIN)/ruff check streams tests bench
	$(BIN)/ruff format --check streams tests bench
	$(BIN)/mypy
	$(BIN)/falco-correlator validate rules/
	$(BIN)/falco-correlator test rules/
	deploy/kafka/kafka.sh fetch
	deploy/opensearch/opensearch.sh fetch
	deploy/kafka/kafka.sh start
	deploy/opensearch/opensearch.sh start || { deploy/kafka/kafka.sh stop; exit 1; }
	set -a; . ./$(TOOLS_ENV); set +a; $(BIN)/pytest -q -p no:cacheprovider; status=$$?; \
		deploy/opensearch/opensearch.sh stop; deploy/kafka/kafka.sh stop; exit $$status

## helm, kubeconform, the Kubernetes and CRD schemas, promtool: pinned, cached in
## ~/.cache/falco-correlator/tools (a few minutes the first time, a second afterwards).
tools: venv
	deploy/tools/install.sh > $(TOOLS_ENV).tmp && mv $(TOOLS_ENV).tmp $(TOOLS_ENV)

## The image's install step (deploy/image/install.sh, as deploy/Dockerfile runs it) into a fresh
## virtualenv, then the shipped rules from that install.
image-check:
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
		deploy/image/install.sh . "$$tmp/venv" && \
		"$$tmp/venv/bin/falco-correlator" validate rules/ && \
		"$$tmp/venv/bin/falco-correlator" test rules/ >/dev/null && \
		echo "image-check: the image's install steps give a working falco-correlator"

## Unit tests only (no broker).
unit: venv
	$(BIN)/pytest -q -m "not integration"

lint: venv
	$(BIN)/ruff check streams tests bench
	$(BIN)/ruff format --check streams tests bench
	$(BIN)/mypy

## The demo: local broker + worker + a scripted multi-stage attack sent as falcosidekick would.
demo: venv
	$(BIN)/python deploy/demo/demo.py

## Offline demo: replay the same attack through the shipped rules (no broker).
replay-demo: venv
	$(BIN)/falco-correlator replay --rules rules/ deploy/demo/attack.jsonl

bench: venv
	$(BIN)/python bench/replay_bench.py --events 1000000

kafka-start:
	deploy/kafka/kafka.sh fetch
	deploy/kafka/kafka.sh start

kafka-stop:
	deploy/kafka/kafka.sh stop

opensearch-start:
	deploy/opensearch/opensearch.sh fetch
	deploy/opensearch/opensearch.sh start

opensearch-stop:
	deploy/opensearch/opensearch.sh stop

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
