"""The one interface every decode implementation exposes, and the registry that names them.

An impl is built from the run's weights and a KV cache already holding the context (reference
layout [n_layers, B, KVH, S_max, hd]); it may use that cache in place or copy it into its own
layout. `decode(tokens [B], positions [B]) -> logits [B, vocab] fp32` runs one step and appends
the step's K/V to its cache. Adding an impl: one module in harness/impls/ that defines a
`DecodeImpl` subclass decorated with `@register("name")`, plus conf/impl/<name>.yaml.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

from harness.config import RunConfig
from kernels.model import ModelSpec
from kernels.model import KVCache
from kernels.model import ModelWeights

REGISTRY: dict[str, type["DecodeImpl"]] = {}


def register(name: str):
    def deco(cls):
        if name in REGISTRY:
            raise RuntimeError(f"impl {name!r} registered twice ({REGISTRY[name].__module__}, {cls.__module__})")
        cls.name = name
        REGISTRY[name] = cls
        return cls
    return deco


@dataclass
class ImplContext:
    cfg: RunConfig
    spec: ModelSpec
    weights: ModelWeights
    cache: KVCache
    device: torch.device

    @property
    def batch(self) -> int:
        return self.cache.k.shape[1]


class DecodeImpl:
    name: ClassVar[str] = ""
    fusion: ClassVar[str] = "none"  # launch granularity, for impls that have one (the megakernel)
    graph_safe: ClassVar[bool] = True  # decode() may be captured in a CUDA graph by the timer
    cuda_only: ClassVar[str] = ""  # non-empty: why this impl cannot run without CUDA

    @classmethod
    def unsupported(cls, ctx: ImplContext) -> Optional[str]:
        """Why this impl cannot run `ctx` here (one sentence), or None. Subclasses call super() first."""
        if cls.cuda_only and ctx.device.type != "cuda":
            return cls.cuda_only
        return None

    def __init__(self, ctx: ImplContext):
        self.ctx = ctx

    def decode(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def check(self) -> None:
        """Raises if the device reported an error in an earlier step (e.g. a bounded wait timed out).
        Called by the runner after the correctness step and after timing; may synchronise."""

    def info(self) -> dict:
        """Extra columns for this impl's result row (e.g. which attention backend ran)."""
        return {}

    def close(self) -> None:
        """Frees what this impl added to the shared weights (called by the runner when its measurement ends)."""
