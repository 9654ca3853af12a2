"""Token embedding lookup: out[b, :] = table[tokens[b], :]."""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

# Columns per program: 16 bytes per thread of bf16 for 4 warps (128 threads x 8 = 1024).
_BLOCK_D = 1024
_NUM_WARPS = 4


@triton.jit
def copy_row_block(src_row_ptr, dst_row_ptr, d0, D, BLOCK_D: tl.constexpr):
    """dst_row[d0:d0+BLOCK_D] = src_row[d0:d0+BLOCK_D] (masked at D), cast to dst's dtype."""
    cols = d0 + tl.arange(0, BLOCK_D)
    mask = cols < D
    v = tl.load(src_row_ptr + cols, mask=mask)
    tl.store(dst_row_ptr + cols, v.to(dst_row_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _embedding_kernel(tok_ptr, table_ptr, out_ptr, D, stride_tok, stride_tv, stride_ob, BLOCK_D: tl.constexpr):
    # grid: (B, cdiv(D, BLOCK_D)). tokens: [B] (any stride: a column of a [B, T] prompt is a view), table: [V, D],
    # out: [B, D]
    b = tl.program_id(0)
    tok = tl.load(tok_ptr + b * stride_tok).to(tl.int64)  # int64: V * D can pass 2^31 (128256 x 4096 x 2 bytes)
    copy_row_block(table_ptr + tok * stride_tv, out_ptr + b * stride_ob, tl.program_id(1) * BLOCK_D, D, BLOCK_D)


def embedding(tokens: torch.Tensor, table: torch.Tensor, *, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """tokens: [B] int32/int64, table: [V, D] -> [B, D] in table.dtype. Tokens must lie in [0, V)."""
    if tokens.dim() != 1 or tokens.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"embedding takes tokens [B] int32/int64; got {tuple(tokens.shape)} {tokens.dtype}")
    if table.dim() != 2 or table.stride(1) != 1:
        raise ValueError(f"embedding takes a row-major table [V, D]; got shape {tuple(table.shape)} "
                         f"strides {table.stride()}")
    b_sz, d = tokens.shape[0], table.shape[1]
    if out is None:
        out = torch.empty(b_sz, d, dtype=table.dtype, device=table.device)
    elif tuple(out.shape) != (b_sz, d) or out.stride(1) != 1:  # the kernel writes each row as one contiguous run
        raise ValueError(f"embedding writes a row-major out [{b_sz}, {d}]; got shape {tuple(out.shape)} "
                         f"strides {out.stride()}")
    block_d = min(_BLOCK_D, triton.next_power_of_2(d))
    grid = (b_sz, triton.cdiv(d, block_d))
    _embedding_kernel[grid](tokens, table, out, d, tokens.stride(0), table.stride(0), out.stride(0), BLOCK_D=block_d,
                            num_warps=_NUM_WARPS)
    return out
