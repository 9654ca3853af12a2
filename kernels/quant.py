"""Weight quantization: the quant-mode table, the `QLinear` layouts the kernels read, and their
PyTorch (de)quantisers. Every package reads the facts of a quant mode from QUANT_MODES; nothing
else translates between mode names, storage kinds and bytes.

Every linear layer is a `QLinear` holding `W: [N, K]` (y = x @ W.T) in one of three kinds. All
impls read the same quantized numbers, so their logits are comparable.

Kind.DENSE  (quant=bf16 | fp16 | fp32)
    weight: [N, K] in the activation dtype.

Kind.INT8   (quant=int8: per output channel, symmetric)
    weight: [N, K] int8, q in [-127, 127];  scale: [N] activation dtype
    W[n, k] = q[n, k] * scale[n]

Kind.INT4   (quant=int4: group-wise, asymmetric, group size G along K; G divides K and is even)
    weight: [N, K // 2] uint8. Byte j of row n holds two columns of that row:
            low nibble  = q[n, 2j],  high nibble = q[n, 2j + 1],  q in [0, 15]
    scale:  [N, K // G] activation dtype
    zero:   [N, K // G] activation dtype
    W[n, k] = (q[n, k] - 8) * scale[n, k // G] + zero[n, k // G]
    This is exactly the arithmetic of torch's tinygemm int4 kernels (`_weight_int4pack_mm`), so the
    same numbers feed our kernels and the torch references.

How a kernel reads one int4 group (row n, group g): the G / 2 contiguous bytes
weight[n, g*G/2 : (g+1)*G/2] (64 bytes for G = 128: four 16-byte vectors), plus scale[n, g] and
zero[n, g]. The dequantized value is fp32 arithmetic on (q - 8) * s + z; accumulate in fp32.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Optional

import torch

from kernels.errors import ConfigError


class Kind(IntEnum):
    """How a linear layer's weights are stored; its value is the constexpr KIND of every GEMV kernel."""

    DENSE = 0
    INT8 = 1
    INT4 = 2


@dataclass(frozen=True)
class QuantMode:
    """One row of the quant-mode table."""

    name: str
    kind: Kind
    act_dtype: torch.dtype  # activations, norms, embedding table, KV cache, scales and zeros
    storage_dtype: torch.dtype  # element type of QLinear.weight (int4: two weights per uint8)
    weight_bits: int  # stored bits per weight (scales and zeros not included)
    grouped: bool  # a scale and a zero per group of `group_size` input columns

    @property
    def act_bytes(self) -> int:
        return torch.empty(0, dtype=self.act_dtype).element_size()

    def group_size(self, requested: int) -> int:
        """The group size a layer of this mode uses: `requested` when grouped, else 0."""
        return requested if self.grouped else 0

    def linear_nbytes(self, n: int, k: int, group_size: int) -> int:
        """Bytes of one [N, K] linear layer (weights + scales + zeros), without building it."""
        weights = n * k * self.weight_bits // 8
        if self.kind == Kind.INT8:
            return weights + n * self.act_bytes
        if self.kind == Kind.INT4:
            return weights + 2 * n * (k // group_size) * self.act_bytes
        return weights

    def group_problem(self, group_size: int, dims: dict[str, int]) -> Optional[str]:
        """Why `group_size` cannot quantize matrices with these input dimensions (one sentence), or None."""
        if not self.grouped:
            return None
        bad = {name: k for name, k in dims.items() if group_size <= 0 or group_size % 2 or k % group_size}
        if not bad:
            return None
        name, k = next(iter(bad.items()))
        return (f"quant.group_size={group_size} does not divide {name}={k}; choose an even group size that divides "
                f"{sorted(set(dims.values()))}, e.g. 32, 64 or 128")


QUANT_MODES: dict[str, QuantMode] = {m.name: m for m in (
    QuantMode("bf16", Kind.DENSE, torch.bfloat16, torch.bfloat16, 16, False),
    QuantMode("fp16", Kind.DENSE, torch.float16, torch.float16, 16, False),
    QuantMode("fp32", Kind.DENSE, torch.float32, torch.float32, 32, False),  # exact CPU checks
    QuantMode("int8", Kind.INT8, torch.bfloat16, torch.int8, 8, False),
    QuantMode("int4", Kind.INT4, torch.bfloat16, torch.uint8, 4, True),
)}


def quant_mode(name: str) -> QuantMode:
    """The table row of quant mode `name` (ConfigError naming the choices otherwise)."""
    if name not in QUANT_MODES:
        raise ConfigError(f"quant={name} is not a quant mode; choose one of {list(QUANT_MODES)}")
    return QUANT_MODES[name]


@dataclass
class QLinear:
    """One linear layer's weight in one of the layouts above. y = x @ W.T, W: [N, K]."""

    kind: Kind
    weight: torch.Tensor
    out_features: int
    in_features: int
    scale: Optional[torch.Tensor] = None
    zero: Optional[torch.Tensor] = None
    group_size: int = 0
    # The weight again in the tensor cores' fragment order (kernels/fragments.py), made on first use by the
    # kernels that read it (kernels/qgemv.py); None until then.
    frag: Optional[torch.Tensor] = field(default=None, repr=False, compare=False)

    @property
    def dtype(self) -> torch.dtype:
        """Activation dtype the layer was built for."""
        return self.weight.dtype if self.kind == Kind.DENSE else self.scale.dtype

    @property
    def nbytes(self) -> int:
        """Bytes a kernel must read to apply the layer once (weights, scales, zeros)."""
        return sum(t.numel() * t.element_size() for t in (self.weight, self.scale, self.zero) if t is not None)

    def dequantize(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """W: [N, K] in `dtype` (default: the activation dtype), computed in fp32."""
        dtype = dtype or self.dtype
        if self.kind == Kind.DENSE:
            return self.weight.to(dtype)
        if self.kind == Kind.INT8:
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
    problem = QUANT_MODES["int4"].group_problem(group_size, {"the input dimension": k})
    if problem:
        raise ConfigError(problem)
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
    kind = quant_mode(mode).kind
    if kind == Kind.DENSE:
        return QLinear(Kind.DENSE, w.contiguous(), n, k)
    if kind == Kind.INT8:
        q, s = quantize_int8(w)
        return QLinear(Kind.INT8, q, n, k, scale=s)
    q, s, z = quantize_int4(w, group_size)
    return QLinear(Kind.INT4, q, n, k, scale=s, zero=z, group_size=group_size)
