"""The reference Llama-3 decoder in PyTorch: the same arithmetic, in the same order, as Hugging Face
transformers' LlamaForCausalLM (RMSNorm in fp32, rotate-half RoPE with llama3 scaling, grouped-query
SDPA attention, SwiGLU), over a static KV cache.

`LlamaDecoder(weights)` computes in the weights' activation dtype like transformers does; with
`compute_dtype=torch.float32` every op upcasts its inputs, which makes it the fp32 oracle that
every impl's logits are checked against. The `linear` argument is the seam through which impls
swap in their own matmul for quantized weights (dequantize-then-matmul by default).
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from kernels.model import KVCache, ModelWeights
from kernels.quant import QLinear
from kernels.reference import rms_normalize

LinearFn = Callable[[torch.Tensor, QLinear], torch.Tensor]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def dequant_linear(x: torch.Tensor, w: QLinear) -> torch.Tensor:
    """x: [..., K] -> [..., N]: dequantize W to x's dtype, then one matmul."""
    return F.linear(x, w.dequantize(x.dtype))


class LlamaDecoder:
    """Prefill and decode over a static KV cache; positions are per sequence."""

    def __init__(self, weights: ModelWeights, linear: LinearFn = dequant_linear,
                 compute_dtype: Optional[torch.dtype] = None, max_len: Optional[int] = None):
        self.w, self.spec, self.linear = weights, weights.spec, linear
        self.dtype = compute_dtype or weights.dtype
        self.cos, self.sin = self.spec.rope_tables(max_len or self.spec.max_seq_len, weights.device)
        # Optional decode-attention override (T == 1): fn(layer, q [B,H,1,hd], k, v [B,KVH,1,hd] roped,
        # positions [B]) -> [B, H, 1, hd]; it must append k/v to its cache itself.
        self.attention: Optional[Callable] = None

    def _lin(self, x: torch.Tensor, w: QLinear) -> torch.Tensor:
        return self.linear(x.to(self.dtype), w)

    def _norm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """transformers' LlamaRMSNorm: normalise in fp32, round to the compute dtype, then scale in it."""
        return w.to(self.dtype) * rms_normalize(x, self.spec.norm_eps).to(self.dtype)

    def forward(self, tokens: torch.Tensor, start: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """tokens: [B, T] at positions start[b] + t; writes their K/V into `cache`.
        Returns logits [B, T, V] fp32. Query t of sequence b sees keys 0 .. start[b] + t."""
        s, (B, T) = self.spec, tokens.shape
        H, KVH, hd = s.n_heads, s.n_kv_heads, s.head_dim
        pos = start[:, None].long() + torch.arange(T, device=tokens.device)[None, :]  # [B, T]
        # cos/sin like transformers: cat(freqs, freqs) in fp32, then cast to the compute dtype.
        cos = torch.cat([self.cos[pos], self.cos[pos]], dim=-1).to(self.dtype)[:, None]  # [B, 1, T, hd]
        sin = torch.cat([self.sin[pos], self.sin[pos]], dim=-1).to(self.dtype)[:, None]
        S = cache.max_len  # attend over the whole static cache, masked: no host sync, graph-capturable
        key_pos = torch.arange(S, device=tokens.device)
        mask = key_pos[None, None, None, :] <= pos[:, None, :, None]  # [B, 1, T, S]
        b_idx = torch.arange(B, device=tokens.device)[:, None].expand(B, T)

        h = F.embedding(tokens, self.w.embed).to(self.dtype)  # [B, T, D]
        for i, lw in enumerate(self.w.layers):
            x = self._norm(h, lw.attn_norm)
            qkv = self._lin(x, lw.wqkv)
            q, k, v = qkv.split([s.q_dim, s.kv_dim, s.kv_dim], dim=-1)
            q = q.view(B, T, H, hd).transpose(1, 2)  # [B, H, T, hd]
            k = k.view(B, T, KVH, hd).transpose(1, 2)
            v = v.view(B, T, KVH, hd).transpose(1, 2)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            if self.attention is not None and T == 1:
                o = self.attention(i, q, k, v, pos[:, 0])
            else:
                cache.k[i][b_idx, :, pos] = k.transpose(1, 2).to(cache.k[i].dtype)  # [B, T, KVH, hd] at (b, :, pos)
                cache.v[i][b_idx, :, pos] = v.transpose(1, 2).to(cache.v[i].dtype)
                keys, vals = cache.k[i].to(self.dtype), cache.v[i].to(self.dtype)
                o = F.scaled_dot_product_attention(q, keys, vals, attn_mask=mask, scale=1.0 / math.sqrt(hd),
                                                   enable_gqa=True)
            o = o.transpose(1, 2).reshape(B, T, s.q_dim)
            h = h + self._lin(o, lw.wo)
            x = self._norm(h, lw.mlp_norm)
            h = h + self._lin(F.silu(self._lin(x, lw.w_gate)) * self._lin(x, lw.w_up), lw.w_down)
        return self._lin(self._norm(h, self.w.final_norm), self.w.lm_head).float()

    @torch.no_grad()
    def prefill(self, tokens: torch.Tensor, cache: KVCache, chunk: int = 512) -> torch.Tensor:
        """tokens: [B, T] at positions 0..T-1 -> logits of the last position [B, V] fp32."""
        B, T = tokens.shape
        out = None
        for t0 in range(0, T, chunk):
            start = torch.full((B,), t0, dtype=torch.long, device=tokens.device)
            out = self.forward(tokens[:, t0:t0 + chunk], start, cache)[:, -1]
        return out

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """tokens: [B] at positions [B] -> logits [B, V] fp32."""
        return self.forward(tokens[:, None], positions, cache)[:, 0]
