# Developer entry points. `make test` is what CI runs (.ci/run calls it).
VENV ?= .venv
BIN := $(VENV)/bin
export PYTHON := $(abspath $(BIN))/python

.PHONY: venv test unit lint demo replay-demo bench kafka-start kafka-stop clean

$(BIN)/falco-correlator: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(BIN)/falco-correlator

## The full suite: lint, types, unit tests, rule tests, integration tests on a real local broker.
test: venv
	$(BIN)/ruff check streams tests bench
	$(BIN)/mypy
	$(BIN)/falco-correlator validate rules/
	$(BIN)/falco-correlator test rules/
	deploy/kafka/kafka.sh fetch
	deploy/kafka/kafka.sh start
	$(BIN)/pytest -q -p no:cacheprovider; status=$$?; deploy/kafka/kafka.sh stop; exit $$status

## Unit tests only (no broker).
unit: venv
	$(BIN)/pytest -q -m "not integration"

lint: venv
	$(BIN)/ruff check streams tests bench
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

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
