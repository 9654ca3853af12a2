"""layerwise: our Triton kernels, one launch per operation (residual adds fused into the GEMV before them; the
ablation's baseline), replayed from
one CUDA graph by the timer. Per layer: RMSNorm, QKV GEMV, RoPE + KV append, attention (partial +
reduce), O GEMV with the residual added in its epilogue, RMSNorm, gate GEMV, up GEMV, SiLU*up, down GEMV with
the residual added in its epilogue (each GEMV kernel takes a residual: no separate add launch).

int4 weights at batch <= 16 and int8 at batch <= 8 (kernels.qgemv.preferred), on a GPU with mma.sync (sm_80+): the GEMVs, the LM head's too, run on the
tensor cores (kernels/qgemv.py), reading a copy of the weights in the MMA fragment layout (kernels/fragments.py,
as many bytes as the packed weights), made when the impl is built and freed when its measurement ends. Where
that copy does not fit in free GPU memory, the Triton FMA GEMV reads the packed weights; the row's `gemv_path`
column says which ran."""
from __future__ import annotations

import math

import torch

from harness.impls.base import DecodeImpl, ImplContext, register
from kernels.attention import decode_attention
from kernels.elementwise import silu_mul
from kernels.embedding import embedding
from kernels.gemv import gemv
from kernels.lm_head import lm_head_argmax
from kernels.norm import rmsnorm
from kernels.rope import rope_kv_append

_FRAGMENT_HEADROOM = 2 << 30  # free memory the fragment copy must leave (activations, the timer's graph)


@register("layerwise")
class Layerwise(DecodeImpl):
    graph_safe = True

    def __init__(self, ctx: ImplContext):
        super().__init__(ctx)
        self.cos, self.sin = ctx.spec.rope_tables(ctx.cache.max_len, ctx.device)
        self.scale = 1.0 / math.sqrt(ctx.spec.head_dim)
        self.gemv_path = self._fragments() if self._tensor_core_gemv(ctx) else "fma"

    @staticmethod
    def _tensor_core_gemv(ctx: ImplContext) -> bool:
        """A GPU with mma.sync; which weights and batches go to qgemv is kernels.qgemv.preferred's to say."""
        return ctx.device.type == "cuda" and torch.cuda.get_device_capability(ctx.device) >= (8, 0)

    def _linears(self):
        """Every linear the step runs: each layer's and the LM head."""
        w = self.ctx.weights
        return [q for lw in w.layers for q in lw.linears().values()] + [w.lm_head]

    def _fragments(self) -> str:
        """Makes the fragment copies of every layer's linears (kernels.gemv then routes them to qgemv); "fma" if
        they would not fit."""
        from kernels.qgemv import fragments_of, preferred

        linears = [q for q in self._linears() if preferred(q, self.ctx.batch)]
        need = sum(q.weight.numel() * q.weight.element_size() for q in linears)
        if not linears or need + _FRAGMENT_HEADROOM > torch.cuda.mem_get_info(self.ctx.device)[0]:
            return "fma"
        for q in linears:
            fragments_of(q)
        return "qgemv"

    def close(self) -> None:
        for q in self._linears():
            q.frag = None

    def info(self) -> dict:
        return {"gemv_path": self.gemv_path}

    def decode(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        s, w, cache, eps = self.ctx.spec, self.ctx.weights, self.ctx.cache, self.ctx.spec.norm_eps
        seq_lens = positions + 1
        h = embedding(tokens, w.embed)  # [B, D]
        for i, lw in enumerate(w.layers):
            qkv = gemv(rmsnorm(h, lw.attn_norm, eps), lw.wqkv)  # [B, (H + 2 KVH) hd]
            q = rope_kv_append(qkv, positions, self.cos, self.sin, cache.k[i], cache.v[i],
                               s.n_heads, s.n_kv_heads, s.head_dim)  # [B, H, hd]
            attn = decode_attention(q, cache.k[i], cache.v[i], seq_lens, self.scale)  # [B, H hd]
            h = gemv(attn, lw.wo, h)
            x = rmsnorm(h, lw.mlp_norm, eps)
            h = gemv(silu_mul(gemv(x, lw.w_gate), gemv(x, lw.w_up)), lw.w_down, h)
        if w.lm_head.frag is not None:  # the tensor-core GEMV writes fp32 logits; decode returns no tokens
            logits = torch.empty(h.shape[0], s.vocab_size, dtype=torch.float32, device=h.device)
            return gemv(rmsnorm(h, w.final_norm, eps), w.lm_head, out=logits)
        logits, _ = lm_head_argmax(h, w.lm_head, w.final_norm, eps)
        return logits
