# The README's two commands. Each does all of its own set-up on a fresh machine:
#   make demo   install, generate the local TFDS mixture, run the ladder on the bundled trainer, write the report
#   make test   install, check the house's import layers (lint-imports), run the whole test suite
# and, while working: make test-fast (the pure tests, seconds), make lint-imports, make bench.
PYTHON ?= python3
VENV   ?= .venv
# torch goes in first and pinned: a plain "torch" requirement pulls a multi-GB CUDA build. On a GPU machine,
# install your own torch first (make TORCH=torch==X.Y.Z), the project's range keeps it.
TORCH  ?= torch==2.13.0
SPEC   ?= ladders/local_s2.yaml
DATA_DIR ?= $(HOME)/.cache/hlrp-ladder/tfds
BIN    := $(VENV)/bin

.PHONY: setup demo test test-fast lint-imports bench

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@# tmux: launch-overnight starts the long run in a session you can attach to (it falls back without it).
	@command -v tmux >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get update -qq && apt-get install -y -qq tmux >/dev/null; } || \
	  echo "note: tmux not installed (needs root + apt-get); launch-overnight will run without it"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[trainer,test,gpu,integrations]"
	touch $@

demo: setup
	$(BIN)/python -m trainer.data.make --data-dir "$(DATA_DIR)"
	$(BIN)/hlrp-ladder run $(SPEC); status=$$?; \
	  $(BIN)/hlrp-ladder report --spec $(SPEC) && exit $$status

test: setup lint-imports
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m pure

# The layers contract in pyproject.toml: a module importing from a layer above it fails here (and so in CI).
lint-imports: setup
	$(BIN)/lint-imports

bench: setup
	$(BIN)/python bench/monitor_bench.py
