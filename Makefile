# Two commands do all the set-up: `make demo` and `make test`.
# Both create .venv at the repository root if it is missing, install pagrob into it (editable), then do their job.
# GPU users: `make test TORCH_SPEC="torch torchvision"` takes whatever CUDA build pip chooses.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
# Versions known to install together (pip's resolver gives up on diffusers' huggingface-hub/httpx2 tree
# without them). `make test CONSTRAINTS=` drops them.
CONSTRAINTS ?= -c constraints.txt
STAMP := $(VENV)/.pagrob-installed
OUT ?= runs/demo
# make gpu-check: the one prepared check for a GPU (benchmarks/gpu_check.py, under 8 minutes)
DATA ?= ../shared/data/cifar10.npz
GPU_CHECK_OUT ?= runs/gpu-check

.PHONY: demo test env clean gpu-check

env: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q $(CONSTRAINTS) -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pagrob demo --out $(OUT)

test: $(STAMP)
	$(VENV)/bin/python -m pytest

gpu-check: $(STAMP)
	PYTHONPATH=src $(PY) benchmarks/gpu_check.py --data $(DATA) --out $(GPU_CHECK_OUT)

clean:
	rm -rf runs .pytest_cache
