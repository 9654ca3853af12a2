# The two set-up commands (each builds .venv/ on first use):
#   make run     the main job: one benchmark point, every impl (tiny model on a CPU-only machine)
#   make test    the test suite (what CI runs)
PY := .venv/bin/python
HAS_GPU := $(shell ($(PY) -c "import torch; print(int(torch.cuda.is_available()))" || python3 -c "import torch; print(int(torch.cuda.is_available()))") 2>/dev/null || echo 0)
RUN_ARGS ?= $(if $(filter 1,$(HAS_GPU)),,model=tiny bench=quick bench.ctx=256)

.PHONY: env run test test-gpu test-gpu-kernels test-gpu-mega figures-gpu
env:
	@bash scripts/setup_env.sh

run: env
	$(PY) run.py $(RUN_ARGS) $(ARGS)

test: env  # two processes (the CI machine has two cores): 7 minutes instead of 12
	$(PY) -m pytest -q -n 2 $(PYTEST_ARGS)

test-gpu: env  # spread over 8 processes (Triton compiles in parallel); the 30-70 GB cases share one of them
	$(PY) -m pytest -q -m gpu -n 8 --dist loadgroup $(PYTEST_ARGS)

# The GPU suite in two named parts, for machines or sessions with a per-command time limit: the per-op kernels,
# impls and harness, then the megakernel (both backends). The whole suite took 221 s on one H200 (perf notes).
test-gpu-kernels: env
	$(PY) -m pytest -q -m gpu -n 8 --dist loadgroup --ignore=tests/mega $(PYTEST_ARGS)

test-gpu-mega: env
	$(PY) -m pytest -q -m gpu -n 8 --dist loadgroup tests/mega $(PYTEST_ARGS)

# Every figure from fresh rows, on a GPU machine: each experiment's sweep (experiments/*.yaml, their own impl lists;
# bandwidth_by_impl first, with telemetry, then the others by name, all under results.tag=$(FIGURES_TAG) so that a
# point an earlier sweep measured is resumed, not measured twice), then `python -m harness.figures`. Device time: an
# estimate from the wall time per impl row of the committed sessions, printed from the rows at hand by
# `python -m harness.figures --gpu-plan`. Without a GPU it stops at the first step with one
# sentence; from a tree that is not a clean commit it stops too (ALLOW_DIRTY=1 measures anyway, rows say -dirty).
FIGURES_TAG ?= figures
FIGURE_EXPERIMENTS := bandwidth_by_impl $(filter-out bandwidth_by_impl,$(sort $(basename $(notdir $(wildcard experiments/*.yaml)))))
figures-gpu: env
	@$(PY) -m harness.figures --require-gpu
	@$(if $(filter 1,$(ALLOW_DIRTY)),,$(PY) -m harness.results --require-clean)
	@$(PY) -m harness.figures --gpu-plan
	@rc=0; for e in $(FIGURE_EXPERIMENTS); do \
	  echo "== $$e: $(PY) run.py +experiment=$$e results.tag=$(FIGURES_TAG) -m $(ARGS)"; \
	  $(PY) run.py +experiment=$$e results.tag=$(FIGURES_TAG) -m $(ARGS) || rc=1; \
	done; \
	$(PY) -m harness.figures || rc=1; exit $$rc
