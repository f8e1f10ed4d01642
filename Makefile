# Two commands a newcomer needs: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench bench-rrule bench-transport soak clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	REMINDER_LOG_FORMAT=$${REMINDER_LOG_FORMAT:-console} $(BIN)/reminder-worker --dev --demo

test: $(STAMP) lint
	$(BIN)/pytest

# Randomized seeded soak (not in CI): SOAK_SEED=first seed, SOAK_RUNS=how many seeds,
# SOAK_TASKS=tasks per run; prints its figures, exits 1 on any violation.
soak: $(STAMP)
	SOAK_SEED=$${SOAK_SEED:-1} SOAK_RUNS=$${SOAK_RUNS:-3} SOAK_TASKS=$${SOAK_TASKS:-3000} \
		$(BIN)/python -m tests.soak

lint: $(STAMP)
	$(BIN)/ruff check worker devsidecar tests bench
	$(BIN)/mypy worker devsidecar

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

bench: $(STAMP)
	$(BIN)/pip install -q -e '.[bench]'
	command -v wrk >/dev/null || (apt-get update -q && apt-get install -y -q wrk)
	$(BIN)/python -m bench.run

# CPU per next-occurrence search over the costliest rules (issue 8; no network, ~10 s)
bench-rrule: $(STAMP)
	$(BIN)/python -m bench.rrule_cost

# CPU per sidecar call, worker/http1.py against httpx2's own transport (30-40 s)
bench-transport: $(STAMP)
	$(BIN)/python -m bench.transport_cost
