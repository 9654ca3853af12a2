"""What the kernels compute on: the model's shape (`ModelSpec`), its weights as one structure
(`ModelWeights`, every linear a `kernels.quant.QLinear`), the KV-cache layout (`KVCache`) and the
RoPE tables. The harness fills these (random weights, Hugging Face checkpoints); the kernels, the
megakernel and the reference decoder read them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Optional

import torch

from kernels.errors import ConfigError
from kernels.quant import QLinear


@dataclass(unsafe_hash=True)  # not frozen, so the Hydra schema can use it as is; never mutated
class RopeScaling:
    """Llama-3 frequency-dependent RoPE scaling (`rope_type: llama3` in transformers)."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class ModelSpec:
    """A Llama-architecture decoder's dimensions."""

    name: str
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    vocab_size: int
    max_seq_len: int
    head_dim: int = 0  # 0: dim // n_heads
    norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    rope_scaling: Optional[RopeScaling] = None
    tie_embeddings: bool = False

    def __post_init__(self):
        if not self.head_dim:
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)
        for f in ("dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "vocab_size", "max_seq_len"):
            if getattr(self, f) <= 0:
                raise ConfigError(f"model.{f}={getattr(self, f)} must be positive")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"model.n_heads={self.n_heads} must be a multiple of model.n_kv_heads={self.n_kv_heads}")
        if self.head_dim % 2:
            raise ConfigError(f"model head_dim={self.head_dim} must be even for RoPE")

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def qkv_dim(self) -> int:
        return self.q_dim + 2 * self.kv_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(N, K) of each linear layer of one transformer block, as stored (y = x @ W.T)."""
        return {"wqkv": (self.qkv_dim, self.dim), "wo": (self.dim, self.q_dim),
                "w_gate": (self.ffn_dim, self.dim), "w_up": (self.ffn_dim, self.dim),
                "w_down": (self.dim, self.ffn_dim)}

    def input_dims(self) -> dict[str, int]:
        """The distinct input dimensions K of the linear layers, by name (what an int4 group must divide)."""
        return {"model.dim": self.dim, "model.ffn_dim": self.ffn_dim, "attention q_dim": self.q_dim}

    def n_params(self) -> int:
        per_layer = sum(n * k for n, k in self.linear_shapes().values()) + 2 * self.dim
        embed = self.vocab_size * self.dim
        return self.n_layers * per_layer + self.dim + embed * (1 if self.tie_embeddings else 2)

    def rope_tables(self, max_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        return rope_tables(self.head_dim, max_len, self.rope_theta, self.rope_scaling, device)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        d = dict(d)
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"model has unknown field(s) {sorted(unknown)}; allowed: {sorted(names)}")
        rs = d.get("rope_scaling")
        if rs is not None and not isinstance(rs, RopeScaling):
            d["rope_scaling"] = RopeScaling(**dict(rs))
        return cls(**d)


# ----------------------------------------------------------------------------------------------
# RoPE: the one table builder (rotate-half convention, transformers' llama3 scaling)
# ----------------------------------------------------------------------------------------------
def rope_inv_freq(head_dim: int, theta: float, scaling: Optional[RopeScaling] = None) -> torch.Tensor:
    """[hd/2] fp32 inverse frequencies, computed as transformers does (so logits match it bit for bit)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    rs = scaling
    if rs is None:
        return inv_freq
    low_freq_wavelen = rs.original_max_position_embeddings / rs.low_freq_factor
    high_freq_wavelen = rs.original_max_position_embeddings / rs.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / rs.factor, inv_freq)
    smooth = (rs.original_max_position_embeddings / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor)
    smoothed = (1 - smooth) * scaled / rs.factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def rope_tables(head_dim: int, max_len: int, theta: float, scaling: Optional[RopeScaling] = None,
                device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin: [max_len, hd/2] fp32; row p is position p (what the kernels index)."""
    inv_freq = rope_inv_freq(head_dim, theta, scaling).to(device)
    freqs = torch.arange(max_len, device=device, dtype=torch.float32)[:, None] * inv_freq[None, :]
    return freqs.cos(), freqs.sin()


# ----------------------------------------------------------------------------------------------
# KV cache and weights
# ----------------------------------------------------------------------------------------------
@dataclass
class KVCache:
    """Static cache, layout [n_layers, B, KVH, S_max, hd] (per head, positions are contiguous)."""

    k: torch.Tensor
    v: torch.Tensor

    @classmethod
    def empty(cls, spec: ModelSpec, batch: int, max_len: int, dtype, device) -> "KVCache":
        shape = (spec.n_layers, batch, spec.n_kv_heads, max_len, spec.head_dim)
        return cls(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]

    def clone(self) -> "KVCache":
        return KVCache(self.k.clone(), self.v.clone())

    def per_layer(self) -> "KVCache":
        """A copy whose k and v are lists of separate [B, KVH, S_max, hd] tensors, one per layer
        (gpt-fast's layout): torch.compile then updates each layer's buffer in place, instead of
        writing back the whole [n_layers, ...] tensor that every layer's view aliases."""
        return KVCache([t.clone() for t in self.k], [t.clone() for t in self.v])


@dataclass
class LayerWeights:
    attn_norm: torch.Tensor  # [D]
    wqkv: QLinear  # [(H + 2*KVH) * hd, D]: q rows, then k rows, then v rows
    wo: QLinear  # [D, H * hd]
    mlp_norm: torch.Tensor  # [D]
    w_gate: QLinear  # [F, D]
    w_up: QLinear  # [F, D]
    w_down: QLinear  # [D, F]

    def linears(self) -> dict[str, QLinear]:
        return {"wqkv": self.wqkv, "wo": self.wo, "w_gate": self.w_gate, "w_up": self.w_up, "w_down": self.w_down}


@dataclass
class ModelWeights:
    """Every weight of the model in the run's quant mode; norms and the embedding in the activation dtype.
    q/k/v are stored fused as one [(H + 2*KVH)*hd, D] matrix; quantization is row- or group-local, so
    fusing does not change a single quantized number."""

    spec: ModelSpec
    quant: str  # a kernels.quant.QUANT_MODES name
    group_size: int
    dtype: torch.dtype  # activation dtype
    embed: torch.Tensor  # [V, D]
    layers: list[LayerWeights]
    final_norm: torch.Tensor  # [D]
    lm_head: QLinear  # [V, D]; a quantized copy of `embed` when embeddings are tied
    # Per linear type, all layers in one tensor ([L, N, K] weight, [L, N, ...] scale/zero), and the
    # norms as [L, D]; `layers[i]` hold views into these, so a kernel indexes layer i by stride.
    stacked: dict[str, QLinear] = None
    stacked_norms: dict[str, torch.Tensor] = None

    def __post_init__(self):
        if self.stacked is None:
            self.stacked, self.stacked_norms = _stack_layers(self.layers)

    @property
    def device(self) -> torch.device:
        return self.embed.device

    def linear_bytes(self) -> int:
        """Bytes of every linear layer incl. scales and zeros (the LM head too)."""
        return sum(q.nbytes for l in self.layers for q in l.linears().values()) + self.lm_head.nbytes


def _stack_layers(layers: list[LayerWeights]) -> tuple[dict[str, QLinear], dict[str, torch.Tensor]]:
    """Moves each linear type's per-layer tensors into one [L, ...] tensor; layers keep views of it.
    Done one linear type at a time, so the transient extra memory is one type's worth."""
    stacked: dict[str, QLinear] = {}
    for name in layers[0].linears():
        qs = [getattr(l, name) for l in layers]
        cat = lambda attr: None if getattr(qs[0], attr) is None else torch.stack([getattr(q, attr) for q in qs])  # noqa: E731
        big = QLinear(qs[0].kind, cat("weight"), qs[0].out_features, qs[0].in_features, cat("scale"), cat("zero"),
                      qs[0].group_size)
        for i, l in enumerate(layers):
            setattr(l, name, QLinear(big.kind, big.weight[i], big.out_features, big.in_features,
                                     None if big.scale is None else big.scale[i],
                                     None if big.zero is None else big.zero[i], big.group_size))
        del qs
        stacked[name] = big
    norms = {}
    for name in ("attn_norm", "mlp_norm"):
        norms[name] = torch.stack([getattr(l, name) for l in layers])
        for i, l in enumerate(layers):
            setattr(l, name, norms[name][i])
    return stacked, norms
