# Every target creates or reuses the virtual environment in .venv. torch==2.13.0 is installed first: that
# version is a CPU build available locally, and installing it before the package keeps pip from pulling a
# multi-GB CUDA build to satisfy the `torch` requirement.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1

.PHONY: install demo test test-fast conformance gpu-check lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"   # test = every extra + pytest and ruff
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest

# the same without the tests marked slow (subprocesses, fresh interpreters, torch.compile, the model-type census);
# `make test` and CI run everything
test-fast: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -m "not slow"

# PEFT's own generic tester (PeftCommonTester) against GROW, offline; not part of `make test` (docs/conformance.md).
# The first run downloads the installed peft's sdist (its tests) into ~/.cache/peft-grow/peft-src with pip.
conformance: $(STAMP)
	$(PY) -m benchmarks.peft_conformance

# The GPU check (benchmarks/gpu_check.py): on a CUDA machine with its own python3, which holds CUDA torch (no .venv
# there); `make gpu-check DRY=1` rehearses it anywhere on the CPU (the test suite runs the same dry run).
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),python3)
OUT ?= gpu-check
gpu-check:
	PYTHONPATH=. $(GPU_PY) -m benchmarks.gpu_check --out $(OUT) $(if $(DRY),--dry-run,)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
