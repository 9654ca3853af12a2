"""Decode attention (one query token per sequence) with flash-decoding and grouped-query heads.

Partial kernel, grid (B, KVH, n_splits): a program takes one kv head's keys in one slice of the
context and ALL query heads of its group at once, so each K/V block is read from memory once per
group. It writes fp32 partial outputs (normalised by their own softmax sum) and log2-sum-exp.
Reduce kernel, grid (B, H): combines the splits of one query head.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl

from kernels import check_act, check_out, dot_operand_dtype, sm_count
from kernels.gemv import dot_acc
from kernels.tiles import split_count

LOG2E = 1.4426950408889634  # softmax in base 2: exp(s) = exp2(s * log2(e))
_MIN_DOT = 16  # smallest M/N/K of a tl.dot tile: the query group is padded to it
# Untuned first choices; on an H100 (2026-11-22, CUDA graph, L2 flushed) they match SDPA's FlashAttention
# backend: llama8b batch 1 ctx 1024 12.4 us vs 15.2 us, batch 16 ctx 4096 107 us (2.5 TB/s) vs 108 us.
_BLOCK_N = 64  # keys per step: [64, hd] K and V tiles (16 KB each at hd 128 bf16)
_WAVES = 2  # per-op launches aim for this many programs per SM when splitting (kernels/tiles.split_count)


@triton.jit
def attn_partial_tile(q_ptr, k_ptr, v_ptr, stride_qh, stride_ks, stride_vs, start, end, scale_log2,
                      GROUP: tl.constexpr, G_PAD: tl.constexpr, HD: tl.constexpr, HD_PAD: tl.constexpr,
                      BLOCK_N: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """Attention of GROUP query heads (q_ptr: [GROUP, HD], row stride stride_qh) over keys start..end-1 of
    one kv head (k_ptr, v_ptr: [S, HD]) -> (out [G_PAD, HD_PAD] fp32 normalised, lse2 [G_PAD] base-2 log-sum-exp).
    An empty range gives out = 0, lse2 = -inf."""
    g = tl.arange(0, G_PAD)
    d = tl.arange(0, HD_PAD)
    d_mask = d < HD
    q = tl.load(q_ptr + g[:, None] * stride_qh + d[None, :], mask=(g < GROUP)[:, None] & d_mask[None, :], other=0.0)
    q = q.to(DOT_DTYPE)  # [G_PAD, HD_PAD]
    m_i = tl.full([G_PAD], float("-inf"), dtype=tl.float32)  # running max of the scores (base 2)
    l_i = tl.zeros([G_PAD], dtype=tl.float32)  # running softmax denominator
    acc = tl.zeros([G_PAD, HD_PAD], dtype=tl.float32)
    n = tl.arange(0, BLOCK_N)
    for n0 in range(start, end, BLOCK_N):
        keys = n0 + n
        kv_mask = (keys < end)[:, None] & d_mask[None, :]
        k = tl.load(k_ptr + keys[:, None] * stride_ks + d[None, :], mask=kv_mask, other=0.0)  # [BLOCK_N, HD_PAD]
        v = tl.load(v_ptr + keys[:, None] * stride_vs + d[None, :], mask=kv_mask, other=0.0)
        # s: [G_PAD, BLOCK_N] scores in base-2 units
        s = dot_acc(q, tl.trans(k.to(DOT_DTYPE)), tl.zeros([G_PAD, BLOCK_N], dtype=tl.float32)) * scale_log2
        s = tl.where((keys < end)[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = dot_acc(p.to(DOT_DTYPE), v.to(DOT_DTYPE), acc * alpha[:, None])  # [G_PAD, HD_PAD]
        m_i = m_new
    has_keys = l_i > 0.0
    out = acc / tl.where(has_keys, l_i, 1.0)[:, None]
    lse2 = tl.where(has_keys, m_i + tl.log2(tl.where(has_keys, l_i, 1.0)), float("-inf"))
    return out, lse2


@triton.jit
def split_range(seq_len, split, n_splits, BLOCK_N: tl.constexpr):
    """Keys [start, end) of split `split`: equal slices rounded up to whole BLOCK_N blocks."""
    per_split = tl.cdiv(tl.cdiv(seq_len, n_splits), BLOCK_N) * BLOCK_N
    start = split * per_split
    end = tl.minimum(start + per_split, seq_len)
    return start, end


@triton.jit
def split_seqs(split, B, n_splits, SEQS_PER_GROUP: tl.constexpr):
    """The megakernel's AttnPartial index `split` as (first sequence, last sequence + 1, context slice): sequence
    group split // n_splits of SEQS_PER_GROUP sequences (the last group may be smaller), slice split % n_splits."""
    first = split // n_splits * SEQS_PER_GROUP
    return first, tl.minimum(first + SEQS_PER_GROUP, B), split % n_splits


@triton.jit
def _attn_partial_kernel(q_ptr, k_ptr, v_ptr, len_ptr, o_part_ptr, lse_part_ptr, n_splits, scale_log2,
                         stride_len, stride_qb, stride_qh, stride_kb, stride_kh, stride_ks,
                         stride_vb, stride_vh, stride_vs,
                         GROUP: tl.constexpr, G_PAD: tl.constexpr, HD: tl.constexpr, HD_PAD: tl.constexpr,
                         BLOCK_N: tl.constexpr, DOT_DTYPE: tl.constexpr):
    # grid: (B, KVH, n_splits). q: [B, H, hd], caches: [B, KVH, S_max, hd], seq_lens: [B] (stride stride_len),
    # o_part: [B, H, n_splits, HD_PAD] fp32, lse_part: [B, H, n_splits] fp32
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(len_ptr + b * stride_len).to(tl.int32)
    start, end = split_range(seq_len, split, n_splits, BLOCK_N)
    out, lse2 = attn_partial_tile(q_ptr + b * stride_qb + kvh * GROUP * stride_qh,
                                  k_ptr + b.to(tl.int64) * stride_kb + kvh * stride_kh,
                                  v_ptr + b.to(tl.int64) * stride_vb + kvh * stride_vh,
                                  stride_qh, stride_ks, stride_vs, start, end, scale_log2,
                                  GROUP, G_PAD, HD, HD_PAD, BLOCK_N, DOT_DTYPE)
    g = tl.arange(0, G_PAD)
    d = tl.arange(0, HD_PAD)
    head = b * (GROUP * tl.num_programs(1)) + kvh * GROUP + g  # flat (b, h) index: [G_PAD]
    g_mask = g < GROUP
    tl.store(o_part_ptr + ((head * n_splits + split) * HD_PAD)[:, None] + d[None, :], out, mask=g_mask[:, None])
    tl.store(lse_part_ptr + head * n_splits + split, lse2, mask=g_mask)


@triton.jit
def combine_splits(o_part_ptr, lse_part_ptr, n_splits, SPLITS_PAD: tl.constexpr, HD_PAD: tl.constexpr):
    """Weighted sum of one head's split outputs (o_part_ptr: [n_splits, HD_PAD], lse_part_ptr: [n_splits]) -> [HD_PAD]."""
    sp = tl.arange(0, SPLITS_PAD)
    d = tl.arange(0, HD_PAD)
    lse2 = tl.load(lse_part_ptr + sp, mask=sp < n_splits, other=float("-inf"))
    m = tl.max(lse2, axis=0)
    m = tl.where(m == float("-inf"), 0.0, m)  # no keys at all: every weight is 0, output 0
    w = tl.exp2(lse2 - m)  # [SPLITS_PAD]
    o = tl.load(o_part_ptr + sp[:, None] * HD_PAD + d[None, :], mask=(sp < n_splits)[:, None], other=0.0)
    denom = tl.sum(w, axis=0)
    return tl.sum(o * w[:, None], axis=0) / tl.where(denom > 0.0, denom, 1.0)


@triton.jit
def _attn_reduce_kernel(o_part_ptr, lse_part_ptr, out_ptr, n_splits, stride_ob,
                        HD: tl.constexpr, HD_PAD: tl.constexpr, SPLITS_PAD: tl.constexpr):
    # grid: (B, H). o_part: [B, H, n_splits, HD_PAD], lse_part: [B, H, n_splits], out: [B, H * hd] (row stride
    # stride_ob, unit column stride)
    b = tl.program_id(0)
    h = tl.program_id(1)
    head = b * tl.num_programs(1) + h
    o = combine_splits(o_part_ptr + head * n_splits * HD_PAD, lse_part_ptr + head * n_splits, n_splits,
                       SPLITS_PAD, HD_PAD)
    d = tl.arange(0, HD_PAD)
    tl.store(out_ptr + b * stride_ob + h * HD + d, o.to(out_ptr.dtype.element_ty), mask=d < HD)


def pick_n_splits(batch: int, n_kv_heads: int, max_len: int, device: torch.device) -> int:
    """Enough (batch, kv head, split) programs for _WAVES per SM (split_count)."""
    return split_count(max_len, batch * n_kv_heads, _WAVES * sm_count(device))


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, seq_lens: torch.Tensor,
                     scale: float, n_splits: Optional[int] = None, *, max_len: Optional[int] = None,
                     out: Optional[torch.Tensor] = None, block_n: int = _BLOCK_N) -> torch.Tensor:
    """q: [B, H, hd], caches: [B, KVH, S_max, hd], seq_lens: [B] int -> out [B, H * hd] in q.dtype.

    Sequence b attends to keys 0 .. seq_lens[b] - 1; query head h reads kv head h // (H // KVH).
    n_splits=None picks it from `max_len` (an upper bound of seq_lens, default S_max: no host sync,
    CUDA-graph safe) and the SM count; splits past a sequence's end are empty and cost little.

    Strides: q, the caches and seq_lens are read at their own strides (q is copied first if hd is not unit-stride;
    the caches must have unit stride on hd); out= may have any row stride but unit stride along H * hd."""
    check_act(q, "decode_attention q")
    if q.dim() != 3:
        raise ValueError(f"decode_attention: q must be [B, H, hd]; got shape {tuple(q.shape)}")
    b_sz, n_heads, hd = q.shape
    n_kv_heads, s_max = k_cache.shape[1], k_cache.shape[2]
    if n_heads % n_kv_heads:
        raise ValueError(f"decode_attention: H={n_heads} query heads must be a multiple of KVH={n_kv_heads} kv heads")
    for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
        if c.shape != (b_sz, n_kv_heads, s_max, hd) or c.stride(3) != 1:
            raise ValueError(f"decode_attention: {name} must be [B, KVH, S_max, hd] = {(b_sz, n_kv_heads, s_max, hd)} "
                             f"with unit stride on hd; got shape {tuple(c.shape)}, strides {c.stride()}")
    if seq_lens.shape != (b_sz,):
        raise ValueError(f"decode_attention: seq_lens must be [B] = [{b_sz}]; got shape {tuple(seq_lens.shape)}")
    if q.stride(2) != 1:
        q = q.contiguous()
    group = n_heads // n_kv_heads
    if n_splits is None:
        n_splits = pick_n_splits(b_sz, n_kv_heads, max_len or s_max, q.device)
    hd_pad = max(triton.next_power_of_2(hd), _MIN_DOT)
    o_part = torch.empty(b_sz, n_heads, n_splits, hd_pad, dtype=torch.float32, device=q.device)
    lse_part = torch.empty(b_sz, n_heads, n_splits, dtype=torch.float32, device=q.device)
    if out is None:
        out = torch.empty(b_sz, n_heads * hd, dtype=q.dtype, device=q.device)
    else:
        check_out(out, (b_sz, n_heads * hd), "decode_attention")
    _attn_partial_kernel[(b_sz, n_kv_heads, n_splits)](
        q, k_cache, v_cache, seq_lens, o_part, lse_part, n_splits, scale * LOG2E, seq_lens.stride(0),
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        GROUP=group, G_PAD=max(triton.next_power_of_2(group), _MIN_DOT), HD=hd, HD_PAD=hd_pad,
        BLOCK_N=block_n, DOT_DTYPE=dot_operand_dtype(q.dtype), num_warps=4)
    _attn_reduce_kernel[(b_sz, n_heads)](o_part, lse_part, out, n_splits, out.stride(0),
                                         HD=hd, HD_PAD=hd_pad, SPLITS_PAD=triton.next_power_of_2(n_splits),
                                         num_warps=1)
    return out


def default_scale(head_dim: int) -> float:
    """The usual softmax scale 1 / sqrt(hd)."""
    return 1.0 / math.sqrt(head_dim)
