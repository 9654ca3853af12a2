"""torch-compile: the gpt-fast recipe. The decode step (same decoder, same quantized linears: int8
weight-only as gpt-fast, int4 through tinygemm) compiled with torch.compile(fullgraph=True) and
Inductor's coordinate-descent tuning, then replayed from a CUDA graph by the timer."""
from __future__ import annotations

import torch

from harness.impls.base import ImplContext, register
from harness.impls.torch_eager import TorchEager


@register("torch-compile")
class TorchCompile(TorchEager):
    graph_safe = True
    cuda_only = "torch.compile's reference recipe is CUDA-only here (Inductor on the CPU is not the reference)"

    def __init__(self, ctx: ImplContext):
        super().__init__(ctx)
        import torch._inductor.config as inductor_config

        inductor_config.coordinate_descent_tuning = True
        inductor_config.triton.unique_kernel_names = True
        inductor_config.fx_graph_cache = True
        cache = ctx.cache.per_layer()  # separate per-layer buffers, as gpt-fast keeps them
        model = self.model

        def step(tokens, positions):
            return model.decode(tokens, positions, cache)

        # CUDA graphs come from the timer's capture (as for every graph-safe impl), not from
        # mode="reduce-overhead", so that all impls are replayed the same way.
        self._step = torch.compile(step, fullgraph=True, dynamic=False)

    def decode(self, tokens, positions):
        return self._step(tokens, positions)
