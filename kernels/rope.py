"""RoPE on q and k (Hugging Face rotate_half convention) fused with the KV-cache append.

qkv: [B, (H + 2 KVH) * hd] holds q heads, then k heads, then v heads, each head contiguous.
For i < hd/2 at position p:  out[i] = x[i] cos[p, i] - x[i + hd/2] sin[p, i],
                             out[i + hd/2] = x[i + hd/2] cos[p, i] + x[i] sin[p, i].
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from kernels import check_act, check_out


@triton.jit
def rope_rotate(x_lo, x_hi, cos, sin):
    """rotate_half RoPE of one head split in halves (fp32): returns (out_lo, out_hi)."""
    return x_lo * cos - x_hi * sin, x_hi * cos + x_lo * sin


@triton.jit
def rope_head(src_ptr, cos_row_ptr, sin_row_ptr, HALF: tl.constexpr, HALF_PAD: tl.constexpr):
    """Loads one head src_ptr[0:2 HALF] and the cos/sin row of its position -> roped (lo, hi) fp32 [HALF_PAD]."""
    i = tl.arange(0, HALF_PAD)
    mask = i < HALF
    cos = tl.load(cos_row_ptr + i, mask=mask, other=0.0).to(tl.float32)
    sin = tl.load(sin_row_ptr + i, mask=mask, other=0.0).to(tl.float32)
    x_lo = tl.load(src_ptr + i, mask=mask, other=0.0).to(tl.float32)
    x_hi = tl.load(src_ptr + HALF + i, mask=mask, other=0.0).to(tl.float32)
    return rope_rotate(x_lo, x_hi, cos, sin)


@triton.jit
def store_head(dst_ptr, lo, hi, HALF: tl.constexpr, HALF_PAD: tl.constexpr):
    """dst_ptr[0:HALF] = lo, dst_ptr[HALF:2 HALF] = hi, cast to dst's dtype."""
    i = tl.arange(0, HALF_PAD)
    mask = i < HALF
    tl.store(dst_ptr + i, lo.to(dst_ptr.dtype.element_ty), mask=mask)
    tl.store(dst_ptr + HALF + i, hi.to(dst_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rope_kv_append_kernel(qkv_ptr, pos_ptr, cos_ptr, sin_ptr, q_ptr, k_cache_ptr, v_cache_ptr, H, KVH,
                           stride_qkv_b, stride_pos, stride_cos, stride_sin, stride_qb, stride_qh,
                           stride_kb, stride_kh, stride_ks, stride_vb, stride_vh, stride_vs,
                           HALF: tl.constexpr, HALF_PAD: tl.constexpr):
    # grid: (B, H + KVH). Program (b, h): q head h if h < H, else kv head h - H (k roped, v copied).
    # qkv: [B, (H + 2 KVH) hd], positions: [B], cos/sin: [S_max, hd/2], q: [B, H, hd],
    # k_cache/v_cache: [B, KVH, S_max, hd]; every tensor at its own strides, the innermost (hd) unit-stride
    b = tl.program_id(0)
    h = tl.program_id(1)
    HD: tl.constexpr = 2 * HALF
    pos = tl.load(pos_ptr + b * stride_pos).to(tl.int64)
    src = qkv_ptr + b * stride_qkv_b + h * HD
    lo, hi = rope_head(src, cos_ptr + pos * stride_cos, sin_ptr + pos * stride_sin, HALF, HALF_PAD)
    if h < H:
        store_head(q_ptr + b * stride_qb + h * stride_qh, lo, hi, HALF, HALF_PAD)
    else:
        kvh = h - H
        store_head(k_cache_ptr + b * stride_kb + kvh * stride_kh + pos * stride_ks, lo, hi, HALF, HALF_PAD)
        v_src = src + KVH * HD  # the v head of kv head kvh
        i = tl.arange(0, HALF_PAD)
        mask = i < HALF
        v_dst = v_cache_ptr + b * stride_vb + kvh * stride_vh + pos * stride_vs
        v_lo = tl.load(v_src + i, mask=mask)
        v_hi = tl.load(v_src + HALF + i, mask=mask)
        tl.store(v_dst + i, v_lo.to(v_dst.dtype.element_ty), mask=mask)
        tl.store(v_dst + HALF + i, v_hi.to(v_dst.dtype.element_ty), mask=mask)


def rope_kv_append(qkv: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   k_cache: torch.Tensor, v_cache: torch.Tensor, n_heads: int, n_kv_heads: int, head_dim: int,
                   *, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """qkv: [B, (H + 2 KVH) hd], positions: [B] int, cos/sin: [S_max, hd/2] fp32 -> roped q [B, H, hd].

    Writes roped k and raw v into k_cache / v_cache [B, KVH, S_max, hd] at [b, :, positions[b], :].
    Positions must lie in [0, S_max).

    Strides: qkv, positions, cos, sin, the caches and out= are used at their own strides. qkv is copied first if
    its columns are not unit-stride; cos, sin, the caches and out= must have a unit-stride last dimension."""
    check_act(qkv, "rope_kv_append qkv")
    if qkv.dim() != 2 or qkv.shape[1] != (n_heads + 2 * n_kv_heads) * head_dim:
        raise ValueError(f"rope_kv_append: qkv must be [B, (H + 2 KVH) hd] = "
                         f"[B, {(n_heads + 2 * n_kv_heads) * head_dim}]; got {tuple(qkv.shape)}")
    b_sz = qkv.shape[0]
    if qkv.stride(1) != 1:
        qkv = qkv.contiguous()
    if positions.shape != (b_sz,):
        raise ValueError(f"rope_kv_append: positions must be [B] = [{b_sz}]; got shape {tuple(positions.shape)}")
    if head_dim % 2:
        raise ValueError(f"rope_kv_append: head_dim={head_dim} must be even")
    for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
        if c.dim() != 4 or c.shape[0] != b_sz or c.shape[1] != n_kv_heads or c.shape[3] != head_dim or c.stride(3) != 1:
            raise ValueError(f"rope_kv_append: {name} must be [B, KVH, S_max, hd] = [{b_sz}, {n_kv_heads}, S, {head_dim}] "
                             f"with unit stride on hd; got shape {tuple(c.shape)}, strides {c.stride()}")
    for name, t in (("cos", cos), ("sin", sin)):
        if t.dim() != 2 or t.shape != cos.shape or t.shape[1] != head_dim // 2 or t.stride(1) != 1:
            raise ValueError(f"rope_kv_append: cos and sin must both be [S_max, hd/2] = [S, {head_dim // 2}] with unit "
                             f"stride on hd/2; {name} has shape {tuple(t.shape)}, strides {t.stride()}")
    if out is None:
        q = torch.empty(b_sz, n_heads, head_dim, dtype=qkv.dtype, device=qkv.device)
    else:
        check_out(out, (b_sz, n_heads, head_dim), "rope_kv_append")
        q = out
    half = head_dim // 2
    grid = (b_sz, n_heads + n_kv_heads)
    _rope_kv_append_kernel[grid](qkv, positions, cos, sin, q, k_cache, v_cache, n_heads, n_kv_heads,
                                 qkv.stride(0), positions.stride(0), cos.stride(0), sin.stride(0),
                                 q.stride(0), q.stride(1),
                                 k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
                                 v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
                                 HALF=half, HALF_PAD=triton.next_power_of_2(half), num_warps=1)
    return q
