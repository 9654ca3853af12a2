"""Final RMSNorm + LM head GEMV + greedy argmax.

Tile kernel, grid (cdiv(V, BLOCK_N),): the fused-norm GEMV tile of kernels/gemv.py, fp32 logits
stored, plus the tile's max and (lowest) argmax per batch row. Reduce kernel, grid (B,): the
max over tiles, ties to the lowest vocabulary index like torch.argmax.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from kernels import dot_operand_dtype
from kernels.gemv import (GemvConfig, _check_linear, _norm_weight, _out, _weight_args, gemv_tile, pick_config,
                          store_rows_tile)
from kernels.quant import QLinear

_REDUCE_BLOCK = 1024  # tile partials scanned per step of the reduce (128256 / 8 rows per tile = 16032 tiles)


@triton.jit
def tile_argmax(logits, offs_n, N):
    """Per batch row of a [B_PAD, BLOCK_N] fp32 tile: (max [B_PAD], lowest index of the max [B_PAD] int32)."""
    vals = tl.where((offs_n < N)[None, :], logits, float("-inf"))
    best = tl.max(vals, axis=1)
    cand = tl.where(vals == best[:, None], offs_n[None, :], N)  # N: larger than any valid index
    return best, tl.min(cand, axis=1)


@triton.jit
def _lm_head_tile_kernel(x_ptr, w_ptr, s_ptr, z_ptr, nw_ptr, logits_ptr, pmax_ptr, pidx_ptr, B, N, K,
                         stride_xb, stride_wn, stride_sn, stride_lb, eps,
                         KIND: tl.constexpr, GROUP: tl.constexpr, B_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_K: tl.constexpr, GROUPS_PER_STEP: tl.constexpr, USE_DOT: tl.constexpr,
                         DOT_DTYPE: tl.constexpr, FOLD: tl.constexpr):
    # grid: (n_tiles,) = (cdiv(V, BLOCK_N),). x: [B, K], W: [V, K], logits: [B, V] fp32,
    # pmax, pidx: [B, n_tiles] (fp32, int32): this tile's max logit and its index per batch row
    tile = tl.program_id(0)
    n_start = tile * BLOCK_N
    logits = gemv_tile(x_ptr, stride_xb, B, K, w_ptr, stride_wn, s_ptr, z_ptr, stride_sn, nw_ptr, eps, n_start, N,
                       KIND, GROUP, True, B_PAD, BLOCK_N, BLOCK_K, GROUPS_PER_STEP, USE_DOT, DOT_DTYPE, FOLD)
    rows = tl.arange(0, B_PAD)
    offs_n = n_start + tl.arange(0, BLOCK_N)
    store_rows_tile(logits_ptr, stride_lb, logits, rows, offs_n, B, N)
    best, best_idx = tile_argmax(logits, offs_n, N)
    n_tiles = tl.num_programs(0)
    tl.store(pmax_ptr + rows * n_tiles + tile, best, mask=rows < B)
    tl.store(pidx_ptr + rows * n_tiles + tile, best_idx, mask=rows < B)


@triton.jit
def argmax_of_partials(pmax_row_ptr, pidx_row_ptr, n_tiles, BLOCK: tl.constexpr):
    """Global argmax over the tile partials of one batch row; ties go to the lowest index."""
    t = tl.arange(0, BLOCK)
    best = tl.max(tl.full([BLOCK], float("-inf"), dtype=tl.float32), axis=0)
    best_idx = tl.max(tl.zeros([BLOCK], dtype=tl.int32), axis=0)
    for t0 in range(0, n_tiles, BLOCK):
        mask = t0 + t < n_tiles
        m = tl.load(pmax_row_ptr + t0 + t, mask=mask, other=float("-inf"))
        i = tl.load(pidx_row_ptr + t0 + t, mask=mask, other=0)
        m_blk = tl.max(m, axis=0)
        i_blk = tl.min(tl.where(mask & (m == m_blk), i, 2147483647), axis=0)  # lowest index among the ties
        take = m_blk > best  # strict: an equal max in a later block has a higher index
        best_idx = tl.where(take, i_blk, best_idx)
        best = tl.maximum(best, m_blk)
    return best_idx


@triton.jit
def _argmax_reduce_kernel(pmax_ptr, pidx_ptr, tok_ptr, n_tiles, BLOCK: tl.constexpr):
    # grid: (B,). pmax, pidx: [B, n_tiles], tokens: [B] int64
    b = tl.program_id(0)
    idx = argmax_of_partials(pmax_ptr + b * n_tiles, pidx_ptr + b * n_tiles, n_tiles, BLOCK)
    tl.store(tok_ptr + b, idx.to(tl.int64))


def lm_head_argmax(x: torch.Tensor, w: QLinear, norm_weight: torch.Tensor, eps: float, *,
                   out: Optional[torch.Tensor] = None,
                   config: Optional[GemvConfig] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x: [B, D] (final hidden state, before the norm), W: [V, D] -> (logits [B, V] fp32, tokens [B] int64).

    logits = rmsnorm(x, norm_weight, eps) @ W.T; tokens = argmax over V (lowest index on ties).
    Strides: x and out= (the logits) may have any row stride (x is copied first if its columns are not unit-stride;
    out= must have unit-stride columns); norm_weight is copied if it is not contiguous."""
    _check_linear(x, w, "lm_head_argmax")
    if x.stride(1) != 1:
        x = x.contiguous()
    b_sz, k = x.shape
    n = w.out_features
    norm_weight = _norm_weight(norm_weight, k, "lm_head_argmax")
    logits = _out(out, (b_sz, n), torch.float32, x.device, "lm_head_argmax")
    cfg = config or pick_config(x, w)
    n_tiles = triton.cdiv(n, cfg.block_n)
    pmax = torch.empty(b_sz, n_tiles, dtype=torch.float32, device=x.device)
    pidx = torch.empty(b_sz, n_tiles, dtype=torch.int32, device=x.device)
    tokens = torch.empty(b_sz, dtype=torch.int64, device=x.device)
    weight, s, z, stride_sn = _weight_args(w)
    _lm_head_tile_kernel[(n_tiles,)](x, weight, s, z, norm_weight, logits, pmax, pidx, b_sz, n, k,
                                     x.stride(0), weight.stride(0), stride_sn, logits.stride(0), eps,
                                     KIND=int(w.kind), GROUP=max(w.group_size, 2), DOT_DTYPE=dot_operand_dtype(x.dtype),
                                     **cfg.constexprs(), num_warps=cfg.num_warps)
    _argmax_reduce_kernel[(b_sz,)](pmax, pidx, tokens, n_tiles,
                                   BLOCK=min(_REDUCE_BLOCK, triton.next_power_of_2(n_tiles)), num_warps=4)
    return logits, tokens
