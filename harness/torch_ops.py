"""PyTorch linear layers for the reference impls, gpt-fast style, behind the QLinear seam:
dense -> F.linear (cuBLAS); int8 -> F.linear(x, W_int8.to(x.dtype)) * scale (gpt-fast's
weight-only int8); int4 -> torch's tinygemm `_weight_int4pack_mm` on CUDA. The same quantized
numbers as every other impl (kernels/quant.py), only repacked where a library wants its own layout.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.errors import Unsupported
from kernels.quant import Kind, QLinear, unpack_int4

TINYGEMM_INNER_K_TILES = 8  # gpt-fast's default


class TorchLinear:
    """Callable y = x @ W.T for one QLinear, prepared once (repacking happens here, not per call)."""

    def __init__(self, w: QLinear):
        self.kind, self.n = w.kind, w.out_features
        if w.kind == Kind.DENSE:
            self.weight = w.weight
        elif w.kind == Kind.INT8:
            self.weight, self.scale = w.weight, w.scale
        elif w.kind == Kind.INT4:
            if w.weight.device.type != "cuda":
                raise Unsupported("int4 torch ops need CUDA (tinygemm has no CPU path for this layout)")
            k = w.in_features
            if k % (TINYGEMM_INNER_K_TILES * 16) or w.out_features % 8:
                raise Unsupported(f"tinygemm needs K % {TINYGEMM_INNER_K_TILES * 16} == 0 and N % 8 == 0 (got {w.out_features}x{k})")
            q = unpack_int4(w.weight)  # [N, K] in [0, 15]
            packed = (q[:, 0::2] << 4 | q[:, 1::2]).contiguous()  # tinygemm: high nibble = even column
            self.weight = torch.ops.aten._convert_weight_to_int4pack(packed, TINYGEMM_INNER_K_TILES)
            # scales_and_zeros: [K/G, N, 2]; W = (q - 8) * scale + zero, the arithmetic of kernels/quant.py
            self.scales_and_zeros = torch.stack([w.scale.t(), w.zero.t()], dim=-1).to(torch.bfloat16).contiguous()
            self.group_size = w.group_size
        else:
            raise ValueError(w.kind)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == Kind.DENSE:
            return F.linear(x, self.weight)
        if self.kind == Kind.INT8:
            return F.linear(x, self.weight.to(x.dtype)) * self.scale
        shape = x.shape
        y = torch.ops.aten._weight_int4pack_mm(x.reshape(-1, shape[-1]).to(torch.bfloat16), self.weight,
                                               self.group_size, self.scales_and_zeros)
        return y.reshape(*shape[:-1], self.n).to(x.dtype)


def torch_linear_fn(weights) -> "callable":
    """A `linear(x, qlinear)` for LlamaDecoder that dispatches to prepared TorchLinear objects."""
    table: dict[int, TorchLinear] = {}
    for lw in weights.layers:
        for q in lw.linears().values():
            table[id(q)] = TorchLinear(q)
    table[id(weights.lm_head)] = TorchLinear(weights.lm_head)

    def linear(x: torch.Tensor, w: QLinear) -> torch.Tensor:
        return table[id(w)](x)
    return linear
