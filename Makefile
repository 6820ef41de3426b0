# One task runner; CI (.ci/run) calls `make test` unchanged.
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup lint test unit bench demo clean-lab

setup:
	bash scripts/setup.sh

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

# The whole suite, lab tests included (needs root: namespaces, sshd, PostgreSQL).
test: lint
	$(BIN)/pytest

# The tests that need no lab: any user, no root, seconds.
unit:
	$(BIN)/pytest tests/unit -n auto

# Every benchmark, then one table (root; under 15 minutes). QUICK=1: a 2-minute subset.
bench: setup
	$(BIN)/python benchmarks/bench.py $(if $(QUICK),--quick,)

# The main job on the lab: build it, make a host leak, triage the incident end to end.
demo: setup
	$(BIN)/connfix lab up
	$(BIN)/connfix inventory check lab
	$(BIN)/connfix lab leak app2 --count 6
	$(BIN)/connfix triage lab --yes

clean-lab:
	$(BIN)/connfix lab down
