# The two commands: `make run` sets everything up (each step only when missing) and runs a short
# RL run; `make test` runs the whole suite. Everything else here is a step of those two.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test venv data policy image serve lint clean-runs

run: venv data policy image
	$(BIN)/sharpe-rl run --cycles 3 --batch-size 8

test: venv
	$(BIN)/python -m pytest -q

venv: $(STAMP)

# torch is installed first and exactly, so nothing can pull a multi-GB CUDA build instead.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

data: venv
	$(BIN)/sharpe-rl data fetch --source sample

policy: venv
	$(BIN)/sharpe-rl build-policy --if-missing

image: venv
	$(BIN)/python sandbox_image/build.py

serve: venv
	$(BIN)/sharpe-rl serve

lint: venv
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean-runs:
	rm -rf runs
