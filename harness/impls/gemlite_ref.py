"""gemlite: the torch-compile recipe (same decoder, compiled with fullgraph, replayed from the timer's CUDA graph)
with every linear, the LM head's too, run by GemLite's Triton kernels (its GEMV at batch 1, chosen by GemLite per
batch). GemLite is the quantized-GEMV library the project's int8 / int4 kernels are measured against; it reads the
same quantized numbers, repacked into its own layout when the impl is built."""
from __future__ import annotations

from typing import Optional

from harness.impls.base import ImplContext, register
from harness.impls.torch_compile import TorchCompile
from harness.torch_ops import gemlite_layer, gemlite_run_info


@register("gemlite")
class GemLite(TorchCompile):
    linear_layer = staticmethod(gemlite_layer)
    cuda_only = "GemLite's kernels need CUDA"

    @classmethod
    def unsupported(cls, ctx: ImplContext) -> Optional[str]:
        reason = super().unsupported(ctx)
        if reason:
            return reason
        if ctx.weights.quant not in ("int8", "int4"):
            return "GemLite runs int8 / int4 weights here; dense weights are torch-compile's (cuBLAS)"
        try:
            import gemlite  # noqa: F401
        except ImportError as e:
            return f"GemLite is not importable ({e}); pip install gemlite==0.6.0.post2"
        return None

    def info(self) -> dict:
        bits = 4 if self.ctx.weights.quant == "int4" else 8
        return {**super().info(), **gemlite_run_info(bits, self.ctx.batch, self.ctx.device)}
