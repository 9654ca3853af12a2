"""Element-wise ops on [B, N] activations: residual add and silu(gate) * up. fp32 math, act-dtype output."""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from kernels import check_act, check_out

# Elements of one row per program: 8 per thread (16 bytes of bf16) x 128 threads (4 warps).
_BLOCK = 1024
_NUM_WARPS = 4


@triton.jit
def silu(x):
    """x * sigmoid(x) of an fp32 tensor."""
    return x / (1.0 + tl.exp(-x))


@triton.jit
def _add_kernel(a_ptr, b_ptr, out_ptr, N, stride_a, stride_b, stride_o, BLOCK: tl.constexpr):
    # grid: (cdiv(N, BLOCK), R). a, b, out: [R, N], unit stride along N, each at its own row stride
    row = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    a = tl.load(a_ptr + row * stride_a + offs, mask=mask).to(tl.float32)
    b = tl.load(b_ptr + row * stride_b + offs, mask=mask).to(tl.float32)
    tl.store(out_ptr + row * stride_o + offs, (a + b).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _silu_mul_kernel(gate_ptr, up_ptr, out_ptr, N, stride_g, stride_u, stride_o, BLOCK: tl.constexpr):
    # grid: (cdiv(N, BLOCK), R). gate, up, out: [R, N], unit stride along N, each at its own row stride
    row = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    g = tl.load(gate_ptr + row * stride_g + offs, mask=mask).to(tl.float32)
    u = tl.load(up_ptr + row * stride_u + offs, mask=mask).to(tl.float32)
    tl.store(out_ptr + row * stride_o + offs, (silu(g) * u).to(out_ptr.dtype.element_ty), mask=mask)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """An input as [R, C] with unit stride along C: a 2-D tensor keeps its row stride (a slice of a wider buffer, a
    broadcast row); any other layout or rank is copied to a contiguous one."""
    if t.dim() == 2 and (t.shape[1] <= 1 or t.stride(1) == 1):
        return t
    t = t.contiguous()
    return t if t.dim() == 2 else t.view(1, -1)


def _binary(kernel, a: torch.Tensor, b: torch.Tensor, out: Optional[torch.Tensor], name: str) -> torch.Tensor:
    check_act(a, f"{name} first input")
    if a.shape != b.shape:
        raise ValueError(f"{name} takes two tensors of one shape; got {tuple(a.shape)} and {tuple(b.shape)}")
    if out is None:
        out = torch.empty(a.shape, dtype=a.dtype, device=a.device)
    if a.dim() == 2:
        check_out(out, a.shape, name)
        o = out
    elif out.shape != a.shape or not out.is_contiguous():
        raise ValueError(f"{name}: out= must be a contiguous {list(a.shape)}; got shape {list(out.shape)}, "
                         f"strides {list(out.stride())}")
    else:
        o = out.view(1, -1)
    a2, b2 = _rows(a), _rows(b)
    r, c = o.shape
    if r * c:
        block = min(_BLOCK, triton.next_power_of_2(c))
        kernel[(triton.cdiv(c, block), r)](a2, b2, o, c, a2.stride(0), b2.stride(0), o.stride(0), BLOCK=block,
                                           num_warps=_NUM_WARPS)
    return out


def add(a: torch.Tensor, b: torch.Tensor, *, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """a, b: [B, N] -> a + b in a.dtype (the residual add). Row strides are honoured (inputs and out=); an input
    whose last dimension is not unit-stride is copied first."""
    return _binary(_add_kernel, a, b, out, "add")


def silu_mul(gate: torch.Tensor, up: torch.Tensor, *, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """gate, up: [B, N] -> silu(gate) * up in gate.dtype. Strides as in add."""
    return _binary(_silu_mul_kernel, gate, up, out, "silu_mul")
