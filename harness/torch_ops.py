"""Library linear layers for the reference impls, behind the QLinear seam. gpt-fast style (TorchLinear):
dense -> F.linear (cuBLAS); int8 -> F.linear(x, W_int8.to(x.dtype)) * scale (gpt-fast's weight-only int8);
int4 -> torch's tinygemm `_weight_int4pack_mm` on CUDA. GemLite (gemlite_layer): its Triton GEMV / GEMM
kernels for int8 and int4 weights. The same quantized numbers as every other impl (kernels/quant.py), only
repacked where a library wants its own layout.
"""
from __future__ import annotations

import os
from typing import Optional

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


def gemlite_layer(w: QLinear):
    """A GemLite layer (callable x -> y) holding the same quantized numbers as `w`. int4: GemLite's asymmetric
    group mode computes W = q * scale + zero' per group (its "fma mode"), so zero' = z - 8 s for the project's
    W = (q - 8) s + z, computed here in fp32 and rounded once to the scale dtype (handing GemLite a rounded
    8 - z / s instead cost ~4e-3 relative error at K = 14336). int8: one scale per row, no zero (GemLite's own
    int8 weight-only setting). Raises Unsupported without CUDA, GemLite, or an int8 / int4 weight."""
    if w.kind not in (Kind.INT8, Kind.INT4):
        raise Unsupported("GemLite takes int8 / int4 weights here (dense weights are cuBLAS's)")
    if w.weight.device.type != "cuda":
        raise Unsupported("GemLite's kernels need CUDA")
    try:
        import gemlite
        from gemlite import DType, GemLiteLinear
    except ImportError as e:
        raise Unsupported(f"GemLite is not importable ({e}); pip install gemlite==0.6.0.post2") from None
    cfg = gemlite_config_file(w.weight.device)
    if cfg:
        GemLiteLinear.load_config(cfg)
    n, k = w.out_features, w.in_features
    if w.kind == Kind.INT4:
        layer = GemLiteLinear(4, group_size=w.group_size, in_features=k, out_features=n, input_dtype=DType.BF16,
                              output_dtype=DType.BF16)
        layer.pack(unpack_int4(w.weight), w.scale, torch.zeros_like(w.zero), None)  # picks the fma group mode
        exact = (w.zero.float() - 8.0 * w.scale.float()).to(layer.zeros.dtype)  # zero' = z - 8 s
        with torch.no_grad():  # into GemLite's registered parameter, in its layout [K / G, N]
            layer.zeros.copy_(exact.view(n, -1).t())
    else:
        layer = GemLiteLinear(8, group_size=k, in_features=k, out_features=n, input_dtype=DType.BF16,
                              output_dtype=DType.BF16)
        layer.pack(w.weight, w.scale[:, None], None, None)
    return layer


def gemlite_config_file(device: torch.device) -> Optional[str]:
    """GemLite's shipped kernel configs for the H100, its published choice for Hopper: the file on a Hopper GPU (sm_90)
    where the install has it; None elsewhere (GemLite then autotunes on first use and caches the result itself)."""
    import gemlite

    path = os.path.join(os.path.dirname(gemlite.__file__), "configs", "h100.json")
    hopper = device.type == "cuda" and torch.cuda.get_device_capability(device) == (9, 0)
    return path if hopper and os.path.isfile(path) else None


def gemlite_run_info(bits: int, batch: int, device: torch.device) -> dict:
    """The row's account of GemLite: its version, the kernel its dispatcher picks for this batch (GEMV_REVSPLITK,
    GEMV_SPLITK, GEMM_SPLITK or GEMM) and where its kernel configs came from."""
    import gemlite
    from gemlite.core import get_matmul_type

    cfg = gemlite_config_file(device)
    return {"gemlite_version": gemlite.__version__, "gemlite_kernel": get_matmul_type(batch, bits),
            "gemlite_configs": os.path.basename(cfg) if cfg else "autotuned"}


def torch_linear_fn(weights, make=TorchLinear) -> "callable":
    """A `linear(x, qlinear)` for LlamaDecoder that dispatches to layers prepared once by `make(qlinear)`
    (TorchLinear, or gemlite_layer)."""
    table: dict[int, "callable"] = {}
    for lw in weights.layers:
        for q in lw.linears().values():
            table[id(q)] = make(q)
    table[id(weights.lm_head)] = make(weights.lm_head)

    def linear(x: torch.Tensor, w: QLinear) -> torch.Tensor:
        return table[id(w)](x)
    return linear
