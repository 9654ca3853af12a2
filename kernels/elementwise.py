"""Element-wise ops on [B, N] activations: residual add and silu(gate) * up. fp32 math, act-dtype output."""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from kernels import check_act

# Elements per program: 8 per thread (16 bytes of bf16) x 128 threads (4 warps).
_BLOCK = 1024
_NUM_WARPS = 4


@triton.jit
def silu(x):
    """x * sigmoid(x) of an fp32 tensor."""
    return x / (1.0 + tl.exp(-x))


@triton.jit
def _add_kernel(a_ptr, b_ptr, out_ptr, n_elements, BLOCK: tl.constexpr):
    # grid: (cdiv(B*N, BLOCK),). a, b, out: [B*N] flat, contiguous
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elements
    a = tl.load(a_ptr + offs, mask=mask).to(tl.float32)
    b = tl.load(b_ptr + offs, mask=mask).to(tl.float32)
    tl.store(out_ptr + offs, (a + b).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _silu_mul_kernel(gate_ptr, up_ptr, out_ptr, n_elements, BLOCK: tl.constexpr):
    # grid: (cdiv(B*N, BLOCK),). gate, up, out: [B*N] flat, contiguous
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elements
    g = tl.load(gate_ptr + offs, mask=mask).to(tl.float32)
    u = tl.load(up_ptr + offs, mask=mask).to(tl.float32)
    tl.store(out_ptr + offs, (silu(g) * u).to(out_ptr.dtype.element_ty), mask=mask)


def _binary(kernel, a: torch.Tensor, b: torch.Tensor, out: Optional[torch.Tensor], name: str) -> torch.Tensor:
    check_act(a, f"{name} first input")
    if a.shape != b.shape:
        raise ValueError(f"{name} takes two tensors of one shape; got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = a.contiguous(), b.contiguous()
    if out is None:
        out = torch.empty_like(a)
    elif not out.is_contiguous():
        raise ValueError(f"{name}: out= must be contiguous")
    n = a.numel()
    kernel[(triton.cdiv(n, _BLOCK),)](a, b, out, n, BLOCK=_BLOCK, num_warps=_NUM_WARPS)
    return out


def add(a: torch.Tensor, b: torch.Tensor, *, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """a, b: [B, N] -> a + b in a.dtype (the residual add)."""
    return _binary(_add_kernel, a, b, out, "add")


def silu_mul(gate: torch.Tensor, up: torch.Tensor, *, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """gate, up: [B, N] -> silu(gate) * up in gate.dtype."""
    return _binary(_silu_mul_kernel, gate, up, out, "silu_mul")
