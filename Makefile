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

test: env  # two processes (the CI machine has two cores): 7 minutes instead of 12
	$(PY) -m pytest -q -n 2 $(PYTEST_ARGS)

test-gpu: env  # spread over 8 processes (Triton compiles in parallel); the 30-70 GB cases share one of them
	$(PY) -m pytest -q -m gpu -n 8 --dist loadgroup $(PYTEST_ARGS)
