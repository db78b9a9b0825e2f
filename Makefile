# Two commands on a fresh machine (Python 3.10+ and make):
#
#   make quickstart   a virtual environment in .venv, then the toy world's main job into runs/toy
#   make test         the same environment with the test extra, then the lint and the whole suite (what CI runs)
#
# torch is installed first, on its own, from TORCH_INDEX: by default PyTorch's CPU index, so a bare
# `torch` requirement never pulls the multi-GB CUDA build onto a machine without a GPU. For a GPU, name the
# CUDA build's index (https://pytorch.org/get-started/locally/ lists them for each torch version), e.g.
#   make quickstart TORCH_INDEX=https://download.pytorch.org/whl/cu128
# TORCH_INDEX= (empty) takes torch from pip's own configuration: PyPI's Linux wheel is a CUDA build; a
# machine whose pip is set up with local wheels gets those.
#
# Settings (make VAR=value ...): VENV (.venv), PYTHON (python3), TORCH_VERSION, TORCH_INDEX, EXTRAS (the
# project's extras), PINS (more requirements, e.g. transformers==5.17.0), OUT (runs/toy, the quickstart's
# folder: it must be new or empty), QUICKSTART_ARGS (e.g. --threads 1), PYTEST_ARGS (e.g. -m "not slow").
# Every pip step is safe to repeat: what is installed already is kept.

VENV ?= .venv
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
EXTRAS ?= train,eval,demo
PINS ?=
OUT ?= runs/toy
QUICKSTART_ARGS ?=
PYTEST_ARGS ?=

VENV_PYTHON = $(VENV)/bin/python
PIP = $(VENV_PYTHON) -m pip

.PHONY: help venv quickstart test

help:
	@echo "make quickstart   create $(VENV), install torch ($(if $(TORCH_INDEX),$(TORCH_INDEX),pip's own index)) and the train,eval,demo extras, run the toy quickstart into $(OUT)"
	@echo "make test         create $(VENV), install torch and the test extra, run ruff and the whole test suite"
	@echo "make venv         the environment alone (EXTRAS=$(EXTRAS))"
	@echo "then: $(VENV)/bin/python demo/app.py   (the demo page on the toy model)"

# The .gitignore inside, as Python 3.13's venv writes: git never lists the environment's files.
venv:
	$(PYTHON) -m venv $(VENV)
	echo '*' > $(VENV)/.gitignore
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PIP) install -q -e ".[$(EXTRAS)]" $(PINS)

quickstart: venv
	$(VENV_PYTHON) -m ha_dpo.toy.quickstart --out $(OUT) $(QUICKSTART_ARGS)

# The test extra holds every other extra's packages too. The environment's bin/ goes first on PATH for
# pytest: the multi-process tests launch its `deepspeed` and `torchrun`.
test: EXTRAS = test
test: venv
	$(VENV_PYTHON) -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
	$(VENV_PYTHON) -m ruff check .
	$(VENV_PYTHON) -m ruff format --check .
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV_PYTHON) -m pytest -q $(PYTEST_ARGS) tests
