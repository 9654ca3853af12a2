"""megakernel: the whole decode step as ONE persistent kernel walking per-SM instruction queues (kernels/mega/),
cut into launches by `fusion` (model | layer | block | op), with the queue policy `megakernel.schedule` and
`megakernel.programs_per_sm` programs per SM. `megakernel.backend`: triton, gluon, or auto (the default: gluon where
it runs, else triton; kernels.mega.resolve_backend). Uses the shared KV cache in place."""
from __future__ import annotations

import os
from typing import Optional

import torch

from harness.config import mega_backend, tile_options
from harness.impls.base import DecodeImpl, ImplContext, register


def runtime_from_config(cfg, weights, cache, **kwargs):
    """kernels.mega.runtime.Megakernel for cfg's fusion and megakernel.{schedule, programs_per_sm, tiles, backend}
    (the runtime resolves "auto" by the same rule as resolved_backend)."""
    from kernels.mega.runtime import Megakernel

    mk = cfg.megakernel
    return Megakernel(weights, cache, fusion=cfg.fusion, policy=mk.schedule, programs_per_sm=mk.programs_per_sm,
                      tiles=tile_options(cfg), backend=mega_backend(cfg), **kwargs)


@register("megakernel")
class MegakernelImpl(DecodeImpl):
    fusion = "model"  # the runner records cfg.fusion for this impl
    graph_safe = True

    @classmethod
    def unsupported(cls, ctx: ImplContext) -> Optional[str]:
        from kernels.mega.lower import check_config

        why = check_config(ctx.spec, ctx.weights.quant, ctx.weights.group_size, ctx.batch)
        if why:
            return f"megakernel: {why}"
        interpret = os.environ.get("TRITON_INTERPRET") == "1"
        if ctx.device.type == "cpu" and not interpret:
            return "megakernel on the CPU needs TRITON_INTERPRET=1 set before kernels are imported"
        if ctx.device.type == "cuda" and interpret:
            return "TRITON_INTERPRET=1 runs Triton on the CPU; unset it to run the megakernel on CUDA"
        # "auto" picks gluon only where gluon_problem is None, so it never refuses for the backend's sake; an explicit
        # gluon that cannot run here is refused with the reason.
        if mega_backend(ctx.cfg) == "gluon":
            from kernels.mega import gluon_problem

            return gluon_problem(ctx.spec, ctx.weights.quant, ctx.batch, ctx.device,
                                 tiles_given=bool(tile_options(ctx.cfg).given()))
        return None

    def __init__(self, ctx: ImplContext):
        super().__init__(ctx)
        self.mk = runtime_from_config(ctx.cfg, ctx.weights, ctx.cache)

    def decode(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """No host sync (CUDA-graph capturable); returns the runtime's persistent logits buffer [B, V] fp32."""
        return self.mk.decode(tokens, positions)

    def check(self) -> None:
        """Synchronises and raises kernels.mega.runtime.MegakernelError if a launch timed out on a wait."""
        self.mk.check()

    def info(self) -> dict:
        return self.mk.info()
