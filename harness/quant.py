"""Weight-only quantization: the one seam every implementation shares.

Every linear layer of the model is a `QLinear` holding `W: [N, K]` (y = x @ W.T) in one of three
layouts. All impls read the same quantized numbers, so their logits are comparable.

dense  (quant=bf16|fp16)
    weight: [N, K] in the activation dtype.

int8   (per output channel, symmetric)
    weight: [N, K] int8, q in [-127, 127];  scale: [N] activation dtype
    W[n, k] = q[n, k] * scale[n]

int4   (group-wise, asymmetric, group size G along K; G divides K and is even)
    weight: [N, K // 2] uint8. Byte j of row n holds two columns of that row:
            low nibble  = q[n, 2j],  high nibble = q[n, 2j + 1],  q in [0, 15]
    scale:  [N, K // G] activation dtype
    zero:   [N, K // G] activation dtype
    W[n, k] = (q[n, k] - 8) * scale[n, k // G] + zero[n, k // G]
    This is exactly the arithmetic of torch's tinygemm int4 kernels (`_weight_int4pack_mm`), so the
    same numbers feed our kernels and the torch references.

How a kernel reads one group (row n, group g): the G / 2 contiguous bytes
weight[n, g*G/2 : (g+1)*G/2] (64 bytes for G = 128: four 16-byte vectors), plus scale[n, g] and
zero[n, g]. Unpack with `lo = b & 0xF`, `hi = b >> 4`; lo multiplies the even input columns and
hi the odd ones, so no interleaving is needed: acc += sum(lo * x[0::2]) + sum(hi * x[1::2]).
The dequantized value is fp32 arithmetic on (q - 8) * s + z; accumulate in fp32.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

QUANT_MODES = ("bf16", "fp16", "fp32", "int8", "int4")  # fp32: dense, for exact CPU checks
ACT_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class QLinear:
    """One linear layer's weight in one of the layouts above. y = x @ W.T, W: [N, K]."""

    kind: str  # "dense" | "int8" | "int4"
    weight: torch.Tensor
    out_features: int
    in_features: int
    scale: Optional[torch.Tensor] = None
    zero: Optional[torch.Tensor] = None
    group_size: int = 0

    @property
    def dtype(self) -> torch.dtype:
        """Activation dtype the layer was built for."""
        return self.weight.dtype if self.kind == "dense" else self.scale.dtype

    @property
    def nbytes(self) -> int:
        """Bytes a kernel must read to apply the layer once (weights, scales, zeros)."""
        return sum(t.numel() * t.element_size() for t in (self.weight, self.scale, self.zero) if t is not None)

    def dequantize(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """W: [N, K] in `dtype` (default: the activation dtype), computed in fp32."""
        dtype = dtype or self.dtype
        if self.kind == "dense":
            return self.weight.to(dtype)
        if self.kind == "int8":
            return (self.weight.float() * self.scale.float()[:, None]).to(dtype)
        return dequantize_int4(self.weight, self.scale, self.zero, self.group_size).to(dtype)

    def to(self, device) -> "QLinear":
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return QLinear(self.kind, mv(self.weight), self.out_features, self.in_features,
                       mv(self.scale), mv(self.zero), self.group_size)


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w: [N, K] -> (q [N, K] int8, scale [N] in w.dtype); symmetric per output channel."""
    wf = w.float()
    scale = wf.abs().amax(dim=1).clamp(min=1e-8) / 127.0
    scale = scale.to(w.dtype)  # round the scale first, so q is chosen for the scale kernels will read
    q = torch.round(wf / scale.float()[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def quantize_int4(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w: [N, K] -> (packed [N, K//2] uint8, scale [N, K//G], zero [N, K//G]) in the layout above."""
    n, k = w.shape
    if group_size <= 0 or group_size % 2 or k % group_size:
        raise ValueError(f"int4 group_size={group_size} must be even and divide the input dimension {k}")
    wg = w.float().reshape(n, k // group_size, group_size)
    lo, hi = wg.amin(dim=2), wg.amax(dim=2)
    scale = ((hi - lo).clamp(min=1e-8) / 15.0).to(w.dtype)
    zero = (lo + 8.0 * scale.float()).to(w.dtype)  # so that q = 0 maps to the group minimum
    q = torch.round((wg - zero.float()[..., None]) / scale.float()[..., None] + 8.0).clamp(0, 15)
    q = q.to(torch.uint8).reshape(n, k)
    packed = q[:, 0::2] | (q[:, 1::2] << 4)
    return packed.contiguous(), scale, zero


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """packed: [N, K//2] uint8 -> q: [N, K] uint8 in [0, 15]."""
    n, kh = packed.shape
    q = torch.empty(n, kh * 2, dtype=torch.uint8, device=packed.device)
    q[:, 0::2] = packed & 0xF
    q[:, 1::2] = packed >> 4
    return q


def dequantize_int4(packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int) -> torch.Tensor:
    """-> W: [N, K] fp32."""
    q = unpack_int4(packed).float()
    n, k = q.shape
    qg = q.reshape(n, k // group_size, group_size)
    w = (qg - 8.0) * scale.float()[..., None] + zero.float()[..., None]
    return w.reshape(n, k)


def quantize_linear(w: torch.Tensor, mode: str, group_size: int = 128) -> QLinear:
    """w: [N, K] in the activation dtype -> QLinear for quant `mode`."""
    n, k = w.shape
    if mode in ("bf16", "fp16", "fp32"):
        return QLinear("dense", w.contiguous(), n, k)
    if mode == "int8":
        q, s = quantize_int8(w)
        return QLinear("int8", q, n, k, scale=s)
    if mode == "int4":
        q, s, z = quantize_int4(w, group_size)
        return QLinear("int4", q, n, k, scale=s, zero=z, group_size=group_size)
    raise ValueError(f"quant mode {mode!r} is not one of {QUANT_MODES}")
