"""torch-graph: the torch-eager step (cuBLAS GEMV, SDPA, gpt-fast int8, tinygemm int4) replayed
from one CUDA graph, which removes the host launch overhead and nothing else."""
from __future__ import annotations

from harness.impls.base import register
from harness.impls.torch_eager import TorchEager


@register("torch-graph")
class TorchGraph(TorchEager):
    graph_safe = True  # the timer captures decode() once and replays it
