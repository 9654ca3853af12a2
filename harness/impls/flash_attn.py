"""flash-attn: PyTorch GEMVs (as torch-graph) with FlashAttention decode attention.

`flash_attn_with_kvcache` (per-sequence cache lengths, appends K/V itself) when the flash-attn
package is importable; otherwise PyTorch SDPA forced to its FlashAttention backend. That backend
takes no mask, so it attends over exactly the first `ctx + 1` cache positions, the benchmark
point's length, fixed when the impl is built (every sequence must then be at position ctx). The
row's `attention_backend` column says which one ran."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from harness.impls.base import ImplContext, register
from harness.impls.torch_eager import TorchEager

try:
    from flash_attn import flash_attn_with_kvcache
except ImportError:  # the package is an optional extra (pip install .[flash-attn])
    flash_attn_with_kvcache = None


@register("flash-attn")
class FlashAttn(TorchEager):
    graph_safe = True
    cuda_only = "FlashAttention needs CUDA"

    @classmethod
    def unsupported(cls, ctx: ImplContext) -> Optional[str]:
        reason = super().unsupported(ctx)
        if reason:
            return reason
        if ctx.weights.dtype not in (torch.bfloat16, torch.float16):
            return "FlashAttention needs bf16 or fp16 activations"
        return None

    def __init__(self, ctx: ImplContext):
        super().__init__(ctx)
        spec, cache = ctx.spec, ctx.cache
        self.backend = "flash_attn_with_kvcache" if flash_attn_with_kvcache is not None else "sdpa-flash"
        self.length = ctx.cfg.bench.ctx + 1
        if self.backend == "flash_attn_with_kvcache":
            # flash-attn wants [B, S, KVH, hd] per layer: its own copy of the cache, in its layout.
            self.k = cache.k.permute(0, 1, 3, 2, 4).contiguous()
            self.v = cache.v.permute(0, 1, 3, 2, 4).contiguous()
        self.model.attention = self._attention
        self.scale = 1.0 / math.sqrt(spec.head_dim)

    def _attention(self, layer: int, q, k, v, positions):
        """q: [B, H, 1, hd], k/v: [B, KVH, 1, hd] (roped) -> [B, H, 1, hd]; appends k/v to the cache."""
        if self.backend == "flash_attn_with_kvcache":
            o = flash_attn_with_kvcache(q.transpose(1, 2), self.k[layer], self.v[layer], k=k.transpose(1, 2),
                                        v=v.transpose(1, 2), cache_seqlens=positions.to(torch.int32),
                                        softmax_scale=self.scale, causal=False)
            return o.transpose(1, 2)
        cache = self.ctx.cache
        b_idx = torch.arange(q.shape[0], device=q.device)
        cache.k[layer][b_idx, :, positions] = k[:, :, 0]
        cache.v[layer][b_idx, :, positions] = v[:, :, 0]
        keys, vals = cache.k[layer, :, :, :self.length], cache.v[layer, :, :, :self.length]
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, keys, vals, scale=self.scale, enable_gqa=True)

    def info(self) -> dict:
        return {"attention_backend": self.backend}
