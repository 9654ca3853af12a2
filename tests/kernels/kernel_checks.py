"""Shared helpers of the kernel tests: device, NaN-poisoned outputs, error bounds from the dtypes' rounding,
quantized weights."""
from __future__ import annotations

import math
from typing import Optional

import pytest
import torch

from kernels.quant import QLinear, quantize_linear
from kernels import interpreting
from kernels import reference as ref

# Kernels run on the GPU when there is one (compiled), else on the CPU through the interpreter.
DEVICE = "cuda" if torch.cuda.is_available() and not interpreting() else "cpu"

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

# Every kernel accumulates in fp32 (the interpreter's tl.dot too: its dot dtype is fp32).
ACC_EPS = torch.finfo(torch.float32).eps
# On the GPU the tensor cores take their operands in the activation dtype: the fused RMSNorm prologue's x * g (and
# an attention's probabilities) are rounded to it before the product. The interpreter keeps them in fp32.
OPERANDS_ROUNDED = not interpreting()
# Reduction length assumed for a caller that names none (element-wise ops, RMSNorm over <= 2500 columns, attention
# over <= 320 positions): beyond the output's rounding, the fp32 kernels of those tests differ from their references
# by at most 6 eps(fp32) (|expected| + max|expected|) (every case, measured on the CPU); sqrt(256) = 16 leaves ~3x.
DEFAULT_K = 256


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


# ---------------------------------------------------------------- error bounds

def gemv_terms(x: torch.Tensor, w: QLinear, residual: Optional[torch.Tensor] = None,
               norm_weight: Optional[torch.Tensor] = None, eps: float = 1e-5) -> torch.Tensor:
    """|rmsnorm?(x)| @ |W|.T (+ |residual|): [B, N] fp32, the sum of the magnitudes of the terms each output adds
    up. A rounding error of every term is at most this times the unit roundoff, however much the terms cancel."""
    xn = x.float() if norm_weight is None else ref.rms_normalize(x, eps) * norm_weight.float()
    terms = xn.abs() @ w.dequantize(torch.float32).abs().T
    return terms if residual is None else terms + residual.float().abs()


def silu_mul_terms(x: torch.Tensor, w_gate: QLinear, w_up: QLinear, norm_weight: Optional[torch.Tensor] = None,
                   eps: float = 1e-5) -> torch.Tensor:
    """gemv_terms carried through silu(g) * u: |silu'(g)| |u| T_g + |silu(g)| T_u, with |silu'| <= 1.1."""
    g = ref.gemv_fp32(x, w_gate, None, norm_weight, eps)
    u = ref.gemv_fp32(x, w_up, None, norm_weight, eps)
    return 1.1 * u.abs() * gemv_terms(x, w_gate, None, norm_weight, eps) + \
        torch.nn.functional.silu(g).abs() * gemv_terms(x, w_up, None, norm_weight, eps)


def error_bound(expected: torch.Tensor, out_dtype: torch.dtype, act_dtype: torch.dtype,
                terms: Optional[torch.Tensor] = None, k: Optional[int] = None, dot: bool = True) -> torch.Tensor:
    """Elementwise bound on |kernel - fp32 reference| for a kernel that computes in fp32 and rounds once:

        eps(out) |expected|                           the output's rounding: where kernel and reference straddle a
                                                      rounding midpoint, one last-bit step (<= eps |expected|)
      + (eps(operands) + sqrt(k) eps(fp32)) terms     operands rounded to the activation dtype (GPU tensor cores,
                                                      `dot`) and a sum of k fp32 terms taken in another order

    `terms` bounds the magnitudes each output adds up (gemv_terms, silu_mul_terms: |x| @ |W|), whatever they cancel
    to. A caller that cannot say (terms None) gets |expected| + max|expected| as a stand-in and DEFAULT_K terms: a
    loose default for element-wise ops and attention; every GEMV test passes its own terms and k."""
    e = expected.float().abs()
    if terms is None:
        terms = e + (e.max() if e.numel() else 0.0)
        k = DEFAULT_K if k is None else k
    eps_out = torch.finfo(out_dtype).eps
    eps_operands = torch.finfo(act_dtype).eps if dot and OPERANDS_ROUNDED else 0.0
    acc = eps_operands + math.sqrt(k or 1) * ACC_EPS
    return eps_out * e + acc * terms.float() + torch.finfo(out_dtype).tiny  # tiny: an exact zero may stay zero


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str = "", *,
                 terms: Optional[torch.Tensor] = None, k: Optional[int] = None, dot: bool = True) -> None:
    """|actual - expected| <= error_bound(...) elementwise, and no NaN. dtype: the activation dtype (the output's
    rounding is actual's own dtype: the LM head writes fp32 logits from bf16 activations). dot=False: the kernel
    took the FMA path (fp32 products on the GPU too)."""
    a, e = actual.float(), expected.float()
    assert a.shape == e.shape, f"{what}: shape {tuple(a.shape)} != {tuple(e.shape)}"
    assert not torch.isnan(a).any(), f"{what}: {int(torch.isnan(a).sum())} NaN (unwritten or masked-in) elements"
    bound = error_bound(expected, actual.dtype, dtype, terms, k, dot)
    err = (a - e).abs()
    bad = err > bound
    if bad.any():
        i = int((err / bound).flatten().argmax())
        idx = tuple(int(v) for v in torch.unravel_index(torch.tensor(i), a.shape))
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {a.numel()} elements exceed the rounding bound, the worst at {idx} "
            f"(actual {a[idx].item():.6g}, expected {e[idx].item():.6g}, error {err[idx].item():.3g}, "
            f"bound {bound[idx].item():.3g}, {err[idx].item() / bound[idx].item():.2f}x)")


# The Triton interpreter itself (triton/runtime/interpreter.py, `range` over a runtime int) trips a
# numpy deprecation; not our code. Test modules apply this mark: `pytestmark = INTERPRETER_WARNINGS`.
INTERPRETER_WARNINGS = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")
