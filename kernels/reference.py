"""Pure-PyTorch reference of every kernel op: fp32 math, one rounding to the output dtype at the end.

The oracle for tests/kernels/. Signatures mirror the Triton launchers (same names, same layouts).
RoPE tables come from kernels.model.rope_tables, the one builder.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from kernels.quant import QLinear


def rms_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x / rms(x) over the last dimension, in fp32: the one RMSNorm reference. Callers add the weight with the
    rounding they model (the kernels' fp32 product, or transformers' rounding to the activation dtype first)."""
    xf = x.float()
    return xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x: [B, D], weight: [D] -> weight * x / rms(x) in fp32, rounded once to x.dtype."""
    return (rms_normalize(x, eps) * weight.float()).to(x.dtype)


def embedding(tokens: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """tokens: [B] int, table: [V, D] -> [B, D]."""
    return table[tokens.long()].clone()


def add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a, b: [B, N] -> a + b in a.dtype."""
    return (a.float() + b.float()).to(a.dtype)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """gate, up: [B, N] -> silu(gate) * up in gate.dtype."""
    return (F.silu(gate.float()) * up.float()).to(gate.dtype)


def _normed_fp32(x: torch.Tensor, norm_weight: Optional[torch.Tensor], eps: float) -> torch.Tensor:
    return x.float() if norm_weight is None else rms_normalize(x, eps) * norm_weight.float()


def gemv_fp32(x: torch.Tensor, w: QLinear, residual: Optional[torch.Tensor] = None,
              norm_weight: Optional[torch.Tensor] = None, eps: float = 1e-5) -> torch.Tensor:
    """x: [B, K] -> [B, N] fp32 = rmsnorm?(x) @ W.T (+ residual), W dequantised in fp32."""
    y = _normed_fp32(x, norm_weight, eps) @ w.dequantize(torch.float32).T
    if residual is not None:
        y = y + residual.float()
    return y


def gemv(x: torch.Tensor, w: QLinear, residual: Optional[torch.Tensor] = None,
         norm_weight: Optional[torch.Tensor] = None, eps: float = 1e-5) -> torch.Tensor:
    """x: [B, K] -> [B, N] in x.dtype."""
    return gemv_fp32(x, w, residual, norm_weight, eps).to(x.dtype)


def gemv_silu_mul(x: torch.Tensor, w_gate: QLinear, w_up: QLinear,
                  norm_weight: Optional[torch.Tensor] = None, eps: float = 1e-5) -> torch.Tensor:
    """x: [B, K] -> silu(x @ Wg.T) * (x @ Wu.T): [B, F] in x.dtype."""
    g = gemv_fp32(x, w_gate, None, norm_weight, eps)
    u = gemv_fp32(x, w_up, None, norm_weight, eps)
    return (F.silu(g) * u).to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, n, hd] fp32, cos/sin: [B, hd/2] -> rotate_half RoPE (Hugging Face convention)."""
    half = x.shape[-1] // 2
    lo, hi = x[..., :half], x[..., half:]
    c, s = cos[:, None, :], sin[:, None, :]
    return torch.cat([lo * c - hi * s, hi * c + lo * s], dim=-1)


def rope_kv_append(qkv: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   k_cache: torch.Tensor, v_cache: torch.Tensor, n_heads: int, n_kv_heads: int,
                   head_dim: int) -> torch.Tensor:
    """qkv: [B, (H + 2 KVH) hd] -> roped q [B, H, hd]; writes roped k and raw v into the caches
    [B, KVH, S_max, hd] at position positions[b] (in place, like the kernel)."""
    b_sz = qkv.shape[0]
    q_dim, kv_dim = n_heads * head_dim, n_kv_heads * head_dim
    x = qkv.float()
    q = x[:, :q_dim].reshape(b_sz, n_heads, head_dim)
    k = x[:, q_dim:q_dim + kv_dim].reshape(b_sz, n_kv_heads, head_dim)
    v = qkv[:, q_dim + kv_dim:].reshape(b_sz, n_kv_heads, head_dim)
    pos = positions.long()
    c, s = cos[pos].float(), sin[pos].float()  # [B, hd/2]
    q, k = _rotate(q, c, s), _rotate(k, c, s)
    for b in range(b_sz):
        k_cache[b, :, pos[b]] = k[b].to(k_cache.dtype)
        v_cache[b, :, pos[b]] = v[b].to(v_cache.dtype)
    return q.to(qkv.dtype)


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, seq_lens: torch.Tensor,
                     scale: float, n_splits: Optional[int] = None) -> torch.Tensor:
    """q: [B, H, hd], caches: [B, KVH, S_max, hd], seq_lens: [B] -> out [B, H * hd] in q.dtype.
    Grouped-query: query head h reads kv head h // (H // KVH). `n_splits` is ignored (exact softmax)."""
    b_sz, n_heads, hd = q.shape
    group = n_heads // k_cache.shape[1]
    out = torch.empty(b_sz, n_heads, hd, dtype=torch.float32, device=q.device)
    for b in range(b_sz):
        length = int(seq_lens[b])
        k = k_cache[b, :, :length].float().repeat_interleave(group, dim=0)  # [H, L, hd]
        v = v_cache[b, :, :length].float().repeat_interleave(group, dim=0)
        scores = torch.einsum("hd,hld->hl", q[b].float(), k) * scale
        out[b] = torch.einsum("hl,hld->hd", scores.softmax(dim=-1), v)
    return out.reshape(b_sz, n_heads * hd).to(q.dtype)


def lm_head_argmax(x: torch.Tensor, w: QLinear, norm_weight: torch.Tensor,
                   eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x: [B, D] -> (logits [B, V] fp32 of rmsnorm(x) @ W.T, greedy tokens [B] int64)."""
    logits = gemv_fp32(x, w, None, norm_weight, eps)
    return logits, logits.argmax(dim=-1)
