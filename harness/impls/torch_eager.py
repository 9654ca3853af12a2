"""torch-eager: the reference decoder run op by op with PyTorch (cuBLAS GEMV, SDPA attention,
gpt-fast-style int8, tinygemm int4), directly on the shared KV cache."""
from __future__ import annotations

from typing import Optional

from harness.errors import Unsupported
from harness.impls.base import DecodeImpl, ImplContext, register
from harness.reference import LlamaDecoder
from harness.torch_ops import TorchLinear, torch_linear_fn


@register("torch-eager")
class TorchEager(DecodeImpl):
    graph_safe = False  # timed as launched op by op from Python; torch-graph is the same step captured
    linear_layer = TorchLinear  # QLinear -> prepared callable layer (the gemlite impl swaps in GemLite's)

    @classmethod
    def unsupported(cls, ctx: ImplContext) -> Optional[str]:
        reason = super().unsupported(ctx)
        if reason:
            return reason
        if ctx.weights.quant == "int4" and ctx.device.type != "cuda":
            return "int4 through torch needs tinygemm on CUDA"
        return None

    def __init__(self, ctx: ImplContext):
        super().__init__(ctx)
        self.model = LlamaDecoder(ctx.weights, linear=torch_linear_fn(ctx.weights, self.linear_layer), max_len=ctx.cache.max_len)

    def decode(self, tokens, positions):
        return self.model.decode(tokens, positions, self.ctx.cache)
