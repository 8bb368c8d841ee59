# `make demo` and `make test` each build .venv when it is missing, install bevt into it, then run.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

$(BIN)/bevt: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(BIN)/bevt

.PHONY: demo test test-slow
demo: $(BIN)/bevt
	$(BIN)/bevt demo --out demo_out

test: $(BIN)/bevt
	$(BIN)/python -m pytest -q

test-slow: $(BIN)/bevt
	$(BIN)/python -m pytest -q -m slow
