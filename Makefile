# The README's two commands. Each does all of its own set-up on a fresh machine:
#   make demo   install, generate the local TFDS mixture, run the ladder on the bundled trainer, write the report
#   make test   install, run the test suite
PYTHON ?= python3
VENV   ?= .venv
# torch goes in first and pinned: a plain "torch" requirement pulls a multi-GB CUDA build. On a GPU machine,
# install your own torch first (make TORCH=torch==X.Y.Z), the project's range keeps it.
TORCH  ?= torch==2.13.0
SPEC   ?= ladders/local_s2.yaml
DATA_DIR ?= $(HOME)/.cache/hlrp-ladder/tfds
BIN    := $(VENV)/bin

.PHONY: setup demo test bench

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@# tmux: launch-overnight starts the long run in a session you can attach to (it falls back without it).
	@command -v tmux >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get update -qq && apt-get install -y -qq tmux >/dev/null; } || \
	  echo "note: tmux not installed (needs root + apt-get); launch-overnight will run without it"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[trainer,test]"
	touch $@

demo: setup
	$(BIN)/python -m trainer.data.make --data-dir "$(DATA_DIR)"
	$(BIN)/hlrp-ladder run $(SPEC); status=$$?; \
	  $(BIN)/hlrp-ladder report --spec $(SPEC) && exit $$status

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python bench/monitor_bench.py
