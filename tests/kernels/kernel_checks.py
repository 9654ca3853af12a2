"""Shared helpers of the kernel tests: device, NaN-poisoned outputs, per-dtype tolerances, quantized weights."""
from __future__ import annotations

import pytest
import torch

from kernels.quant import QLinear, quantize_linear
from kernels import interpreting

# Kernels run on the GPU when there is one (compiled), else on the CPU through the interpreter.
DEVICE = "cuda" if torch.cuda.is_available() and not interpreting() else "cpu"

# Relative tolerance per output dtype, against the fp32 reference, scaled by the output's magnitude.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 2e-2}
DTYPE_IDS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}

# (id, quant mode, activation dtype, int4 group size): every layout of harness/quant.py.
QUANTS = [
    ("dense-fp16", "fp16", torch.float16, 0),
    ("dense-bf16", "bf16", torch.bfloat16, 0),
    ("dense-fp32", "fp16", torch.float32, 0),
    ("int8-bf16", "int8", torch.bfloat16, 0),
    ("int8-fp16", "int8", torch.float16, 0),
    ("int4g32-bf16", "int4", torch.bfloat16, 32),
    ("int4g64-fp16", "int4", torch.float16, 64),
    ("int4g128-bf16", "int4", torch.bfloat16, 128),
]


def generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)


def randn(*shape, dtype=torch.float32, gen: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    """Fresh random N(0, scale^2) values (drawn on the CPU for reproducibility), on DEVICE."""
    return (torch.randn(*shape, generator=gen) * scale).to(dtype=dtype, device=DEVICE)


def nan_full(*shape, dtype) -> torch.Tensor:
    """An output buffer poisoned with NaN: any element the kernel does not write fails the comparison."""
    return torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)


def make_linear(n: int, k: int, mode: str, act_dtype: torch.dtype, group_size: int, gen: torch.Generator) -> QLinear:
    """A random [n, k] weight (std 1/sqrt(k), so outputs stay O(1)) quantized as `mode`."""
    w = randn(n, k, dtype=act_dtype, gen=gen, scale=k ** -0.5)
    return quantize_linear(w, mode, group_size or 128)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str = "") -> None:
    """|actual - expected| <= tol * (|expected| + max|expected|) elementwise, tol by `dtype`; no NaN allowed."""
    tol = TOLERANCE[dtype]
    a, e = actual.float(), expected.float()
    assert a.shape == e.shape, f"{what}: shape {tuple(a.shape)} != {tuple(e.shape)}"
    assert not torch.isnan(a).any(), f"{what}: {int(torch.isnan(a).sum())} NaN (unwritten or masked-in) elements"
    scale = max(e.abs().max().item(), 1e-6)
    torch.testing.assert_close(a, e, rtol=tol, atol=tol * scale, msg=lambda m: f"{what}: {m}")

# The Triton interpreter itself (triton/runtime/interpreter.py, `range` over a runtime int) trips a
# numpy deprecation; not our code. Test modules apply this mark: `pytestmark = INTERPRETER_WARNINGS`.
INTERPRETER_WARNINGS = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")
