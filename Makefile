# The two set-up commands (each builds .venv/ on first use):
#   make run     the main job: one benchmark point, every impl (tiny model on a CPU-only machine)
#   make test    the test suite (what CI runs)
PY := .venv/bin/python
HAS_GPU := $(shell ($(PY) -c "import torch; print(int(torch.cuda.is_available()))" || python3 -c "import torch; print(int(torch.cuda.is_available()))") 2>/dev/null || echo 0)
RUN_ARGS ?= $(if $(filter 1,$(HAS_GPU)),,model=tiny bench=quick bench.ctx=256)

.PHONY: env run test test-gpu
env:
	@bash scripts/setup_env.sh

run: env
	$(PY) run.py $(RUN_ARGS) $(ARGS)

test: env
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-gpu: env
	$(PY) -m pytest -q -m gpu $(PYTEST_ARGS)
