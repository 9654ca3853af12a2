"""RMSNorm: y = weight * x * rsqrt(mean(x^2) + eps), fp32 math, output in x.dtype (as Hugging Face)."""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from kernels import check_act, check_out

# Columns per step of the row loop: 16 bytes per thread for 4 warps of bf16 (128 threads x 8) x 2.
_BLOCK_D_MAX = 2048
_NUM_WARPS = 4


@triton.jit
def row_inv_rms(x_row_ptr, D, eps, BLOCK_D: tl.constexpr):
    """1 / sqrt(mean(x^2) + eps) of one row x_row_ptr[0:D] (fp32 scalar)."""
    cols = tl.arange(0, BLOCK_D)
    ssq = tl.zeros([BLOCK_D], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        x = tl.load(x_row_ptr + d0 + cols, mask=d0 + cols < D, other=0.0).to(tl.float32)
        ssq += x * x
    return tl.rsqrt(tl.sum(ssq, axis=0) / D + eps)


@triton.jit
def rmsnorm_row(x_row_ptr, w_ptr, y_row_ptr, D, eps, BLOCK_D: tl.constexpr):
    """y_row[0:D] = w * x_row * inv_rms(x_row), stored in y's dtype."""
    inv_rms = row_inv_rms(x_row_ptr, D, eps, BLOCK_D)
    cols = tl.arange(0, BLOCK_D)
    for d0 in range(0, D, BLOCK_D):
        mask = d0 + cols < D
        x = tl.load(x_row_ptr + d0 + cols, mask=mask, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + d0 + cols, mask=mask, other=0.0).to(tl.float32)
        y = w * (x * inv_rms)
        tl.store(y_row_ptr + d0 + cols, y.to(y_row_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rmsnorm_kernel(x_ptr, w_ptr, y_ptr, D, stride_xb, stride_yb, eps, BLOCK_D: tl.constexpr):
    # grid: (B,), one row per program. x: [B, D], w: [D], y: [B, D]
    row = tl.program_id(0)
    rmsnorm_row(x_ptr + row * stride_xb, w_ptr, y_ptr + row * stride_yb, D, eps, BLOCK_D)


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float, *, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x: [B, D] (bf16/fp16/fp32), weight: [D] -> y: [B, D] in x.dtype. Row strides of x and out= are honoured."""
    check_act(x, "rmsnorm input x")
    if x.dim() != 2 or weight.shape != (x.shape[1],):
        raise ValueError(f"rmsnorm takes x [B, D] and weight [D]; got {tuple(x.shape)} and {tuple(weight.shape)}")
    b_sz, d = x.shape
    if x.stride(1) != 1:  # rows are read at x's row stride; only the columns must be unit-stride
        x = x.contiguous()
    if out is None:
        y = torch.empty(b_sz, d, dtype=x.dtype, device=x.device)
    else:
        check_out(out, (b_sz, d), "rmsnorm")
        y = out
    block_d = min(triton.next_power_of_2(d), _BLOCK_D_MAX)
    _rmsnorm_kernel[(b_sz,)](x, weight.contiguous(), y, d, x.stride(0), y.stride(0), eps,
                             BLOCK_D=block_d, num_warps=_NUM_WARPS)
    return y
