"""Model architectures: one dataclass, filled from conf/model/<name>.yaml or a Hugging Face config.json.

The YAML files under conf/model/ are the table of model sizes (exact names, no guessing from
file names); `ModelSpec.from_hf_dir` reads a local checkpoint's config.json.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Optional

from harness.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


@dataclass(frozen=True)
class RopeScaling:
    """Llama-3 frequency-dependent RoPE scaling (`rope_type: llama3` in transformers)."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class ModelSpec:
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

    # Derived sizes used by kernels and byte counts.
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

    def n_params(self) -> int:
        per_layer = sum(n * k for n, k in self.linear_shapes().values()) + 2 * self.dim
        embed = self.vocab_size * self.dim
        return self.n_layers * per_layer + self.dim + embed * (1 if self.tie_embeddings else 2)

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

    @classmethod
    def from_hf_dir(cls, path: str | Path) -> "ModelSpec":
        """Reads <path>/config.json of a Llama-architecture Hugging Face checkpoint."""
        cfg_file = Path(path).expanduser() / "config.json"
        if not cfg_file.is_file():
            raise ConfigError(f"model.path={path} has no config.json; point model.path at a local Hugging Face checkpoint directory")
        c = json.loads(cfg_file.read_text())
        arch = c.get("model_type", "")
        if arch != "llama":
            raise ConfigError(f"model.path={path} holds a {arch!r} model; only model_type 'llama' is supported")
        rs = c.get("rope_scaling") or c.get("rope_parameters")  # transformers >= 5 writes rope_parameters
        scaling = None
        if rs:
            kind = rs.get("rope_type", rs.get("type"))
            if kind == "llama3":
                scaling = RopeScaling(float(rs["factor"]), float(rs["low_freq_factor"]), float(rs["high_freq_factor"]),
                                      int(rs["original_max_position_embeddings"]))
            elif kind not in (None, "default"):
                raise ConfigError(f"model.path={path}: rope_scaling type {kind!r} is not supported (only 'llama3')")
        rope_theta = c.get("rope_theta", (c.get("rope_parameters") or {}).get("rope_theta", 10000.0))
        return cls(name=Path(path).name, dim=c["hidden_size"], n_layers=c["num_hidden_layers"],
                   n_heads=c["num_attention_heads"], n_kv_heads=c.get("num_key_value_heads", c["num_attention_heads"]),
                   ffn_dim=c["intermediate_size"], vocab_size=c["vocab_size"],
                   max_seq_len=c.get("max_position_embeddings", 8192),
                   head_dim=c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"],
                   norm_eps=c.get("rms_norm_eps", 1e-5), rope_theta=float(rope_theta), rope_scaling=scaling,
                   tie_embeddings=bool(c.get("tie_word_embeddings", False)))


def named_spec(name: str) -> ModelSpec:
    """The spec of a model from conf/model/<name>.yaml, without Hydra (tests, notebooks, kernels)."""
    import yaml

    f = CONF_DIR / "model" / f"{name}.yaml"
    if not f.is_file() or name == "hf":
        allowed = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml") if p.stem != "hf")
        raise ConfigError(f"model={name} is not a known model; choose one of {allowed} or model=hf model.path=DIR")
    d = yaml.safe_load(f.read_text())
    d.pop("path", None)
    d.pop("defaults", None)
    return ModelSpec.from_dict(d)
