"""layerwise: our Triton kernels, one launch per operation (the ablation's baseline), replayed from
one CUDA graph by the timer. Per layer: RMSNorm, QKV GEMV, RoPE + KV append, attention (partial +
reduce), O GEMV, residual add, RMSNorm, gate GEMV, up GEMV, SiLU*up, down GEMV, residual add."""
from __future__ import annotations

import math

import torch

from harness.impls.base import DecodeImpl, ImplContext, register
from kernels.attention import decode_attention
from kernels.elementwise import add, silu_mul
from kernels.embedding import embedding
from kernels.gemv import gemv
from kernels.lm_head import lm_head_argmax
from kernels.norm import rmsnorm
from kernels.rope import rope_kv_append


@register("layerwise")
class Layerwise(DecodeImpl):
    graph_safe = True

    def __init__(self, ctx: ImplContext):
        super().__init__(ctx)
        self.cos, self.sin = ctx.spec.rope_tables(ctx.cache.max_len, ctx.device)
        self.scale = 1.0 / math.sqrt(ctx.spec.head_dim)

    def decode(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        s, w, cache, eps = self.ctx.spec, self.ctx.weights, self.ctx.cache, self.ctx.spec.norm_eps
        seq_lens = positions + 1
        h = embedding(tokens, w.embed)  # [B, D]
        for i, lw in enumerate(w.layers):
            qkv = gemv(rmsnorm(h, lw.attn_norm, eps), lw.wqkv)  # [B, (H + 2 KVH) hd]
            q = rope_kv_append(qkv, positions, self.cos, self.sin, cache.k[i], cache.v[i],
                               s.n_heads, s.n_kv_heads, s.head_dim)  # [B, H, hd]
            attn = decode_attention(q, cache.k[i], cache.v[i], seq_lens, self.scale)  # [B, H hd]
            h = add(h, gemv(attn, lw.wo))
            x = rmsnorm(h, lw.mlp_norm, eps)
            h = add(h, gemv(silu_mul(gemv(x, lw.w_gate), gemv(x, lw.w_up)), lw.w_down))
        logits, _ = lm_head_argmax(h, w.lm_head, w.final_norm, eps)
        return logits
