"""Test set-up. Without CUDA, Triton kernels run through the interpreter; TRITON_INTERPRET must be
set before any module defining @triton.jit kernels is imported, hence at the very top here."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """`gpu` tests need CUDA: skipped, with a reason, where there is none."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run `pytest -m gpu` on the GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
