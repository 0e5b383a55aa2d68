# The two commands a new user needs (both create .venv and install the locked, tested set of packages):
#   make pretrain   -> the main job: `accelerate launch recipes/pretrain.py` on the embedded default
#   make test       -> ruff, then the whole test suite, offline
# Maintainers:
#   make lint / make fmt -> ruff check (settings in pyproject.toml) / the same with its safe fixes applied
#   make lock         -> re-resolve pyproject.toml's ranges in a fresh venv and pin the result in requirements.lock
#   make test-latest  -> canary: the newest releases of the HF stack in .venv-latest, model/generation/alignment tests
#   make test-oldest  -> the same tests on the oldest transformers pyproject.toml accepts (.venv-oldest)
#   make test-generic -> transformers' own generic model tests (ModelTesterMixin) on hfscratch and on Llama
# GPU users: `make pretrain PIP_CONSTRAINTS=` resolves within pyproject.toml's ranges instead of the CPU lock
# (the lock pins the CPU build of torch).
PYTHON ?= python3
VENV := .venv
LOCK := requirements.lock
PIP_CONSTRAINTS ?= -c $(LOCK)
STAMP := $(VENV)/.installed
# The one pin `make lock` and the canary start from: unpinned, pip pulls several GB of CUDA wheels.
TORCH_PIN ?= torch==2.13.0
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
# The canary's packages (newest releases that install here) and the tests that show drift in them first.
LATEST_PACKAGES := transformers accelerate trl peft datasets lm-eval gguf
LATEST_TESTS := tests/test_model_behaviour.py tests/test_model_parity.py tests/test_model_io.py tests/test_export.py \
	tests/test_lora_merge.py tests/test_alignment_sft.py tests/test_alignment_dpo.py tests/test_alignment_grpo.py \
	tests/test_eval_consistency.py tests/test_chat.py tests/test_serve.py tests/test_export_gguf.py

.PHONY: install pretrain speedrun test lint fmt test-latest test-oldest test-generic lock clean

$(STAMP): pyproject.toml $(LOCK)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check $(PIP_CONSTRAINTS) -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

pretrain: $(STAMP)
	$(VENV)/bin/accelerate launch --config_file recipes/accelerate/single.yaml recipes/pretrain.py $(ARGS)

# make speedrun: data -> pretrain -> SFT -> reward -> RLHF -> eval in one command, report in outputs/speedrun/REPORT.md.
# The CPU default reads only local data (offline); the GPU config streams FineWeb-Edu from the Hub:
#   make speedrun ARGS="--config speedrun_gpu" SPEEDRUN_ENV=
SPEEDRUN_ENV ?= $(OFFLINE)
speedrun: $(STAMP)
	$(SPEEDRUN_ENV) $(VENV)/bin/python -m hfscratch.cli speedrun $(ARGS)

# The slowest tests are listed at the end, so the suite's time budget (15 min on 2 cores) stays visible. One pytest
# worker per core (pytest-xdist; tests/conftest.py keeps the alignment chain in one worker and each worker on one thread).
test: $(STAMP)
	$(VENV)/bin/ruff check --quiet .
	$(OFFLINE) $(VENV)/bin/python -m pytest -q -n auto --dist loadgroup --durations=15 $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

fmt: $(STAMP)
	$(VENV)/bin/ruff check --fix .

test-generic: $(STAMP)
	$(OFFLINE) $(VENV)/bin/python compat/run_transformers_generic_tests.py $(GENERIC_ARGS)

lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	echo "$(TORCH_PIN)" > .venv-lock/torch-pin.txt
	.venv-lock/bin/pip install --quiet --disable-pip-version-check -c .venv-lock/torch-pin.txt -e ".[dev]"
	{ echo "# The tested environment: every package \`make install\` puts in .venv, pinned. Regenerate with \`make lock\`"; \
	  echo "# (a fresh resolve of pyproject.toml's ranges from $(TORCH_PIN)), then run \`make test\` before committing it."; \
	  .venv-lock/bin/pip freeze --exclude-editable --disable-pip-version-check | sed -e 's/+cpu$$//'; } > $(LOCK)
	rm -rf .venv-lock
	@echo "wrote $(LOCK): $$(grep -c '==' $(LOCK)) pinned packages"

# A canary venv: the tested set, then $(2) upgraded past the lock, then the drift-prone tests and the generic ones.
define canary
	rm -rf $(1)
	$(PYTHON) -m venv $(1)
	echo "$(TORCH_PIN)" > $(1)/torch-pin.txt
	$(1)/bin/pip install --quiet --disable-pip-version-check -c $(LOCK) -e ".[dev]"
	# pip notes that the new versions conflict with the lock's pins; in a canary that is the point.
	$(1)/bin/pip install --quiet --disable-pip-version-check -c $(1)/torch-pin.txt --upgrade $(2) 2>&1 \
		| grep -v "dependency resolver\|^hfscratch .* requires\|^WARNING: Location" || true
	$(1)/bin/python -c "import importlib.metadata as m; print('versions:', ', '.join(f'{p} {m.version(p)}' for p in 'torch transformers accelerate trl peft datasets lm-eval'.split()))"
	$(OFFLINE) $(1)/bin/python -m pytest -q -p no:cacheprovider $(LATEST_TESTS)
	$(OFFLINE) $(1)/bin/python compat/run_transformers_generic_tests.py
endef

test-latest:
	$(call canary,.venv-latest,$(LATEST_PACKAGES))

# The oldest transformers pyproject.toml accepts: what remote-code users on that release run.
test-oldest:
	$(call canary,.venv-oldest,transformers==$(shell sed -n 's/.*"transformers>=\([0-9.]*\),.*/\1/p' pyproject.toml).0)

clean:
	rm -rf $(VENV) .venv-latest .venv-oldest .venv-lock outputs
