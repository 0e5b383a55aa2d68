# The two commands a new user needs (both create .venv and install what is missing):
#   make pretrain   -> the main job: `accelerate launch recipes/pretrain.py` on the embedded default
#   make test       -> the whole test suite, offline
# GPU users: edit PIP_CONSTRAINTS (or drop -c) to get a CUDA build of torch.
PYTHON ?= python3
VENV := .venv
PIP_CONSTRAINTS ?= -c constraints.txt
STAMP := $(VENV)/.installed

.PHONY: install pretrain test bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check $(PIP_CONSTRAINTS) -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

pretrain: $(STAMP)
	$(VENV)/bin/accelerate launch --num_processes 1 recipes/pretrain.py $(ARGS)

test: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) outputs
