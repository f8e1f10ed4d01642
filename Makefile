# Two commands a newcomer needs: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench soak clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	REMINDER_LOG_FORMAT=$${REMINDER_LOG_FORMAT:-console} $(BIN)/reminder-worker --dev --demo

test: $(STAMP) lint
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check worker tests
	$(BIN)/mypy worker

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
