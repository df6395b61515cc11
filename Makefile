# The two commands: `make demo` and `make test`. Each creates .venv and installs the project when needed.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export RAY_AUTH_MODE ?= disabled
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER ?= 0
export RAY_USAGE_STATS_ENABLED ?= 0
export RAY_TMPDIR ?= $(CURDIR)/.ray_tmp
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export RAY_raylet_start_wait_time_s ?= 120

.PHONY: install browser demo lint test test-fast

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The web page is tested in Debian's headless Chromium (no browser download at run time).
browser:
	command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

demo: $(STAMP)
	mkdir -p $(RAY_TMPDIR)
	$(BIN)/python jobs/demo.py --output demo_out

# Lint only: the code's hand-aligned continuation lines are not `ruff format`'s style (see pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check .

# The CI suite, end-to-end runs included, after the lint.
test: lint browser
	mkdir -p $(RAY_TMPDIR)
	$(BIN)/python -m pytest -q --durations=15

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"
