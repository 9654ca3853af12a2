"""Model architectures by name or checkpoint: `kernels.model.ModelSpec` filled from conf/model/<name>.yaml
or from a Hugging Face config.json.

The YAML files under conf/model/ are the table of model sizes (exact names, no guessing from
file names); `hf_spec` reads a local checkpoint's config.json.
"""
from __future__ import annotations

import json
from pathlib import Path

from harness.errors import ConfigError
from kernels.model import ModelSpec, RopeScaling

# The Hydra configuration directory: conf/ of the repository, or harness/conf/ where the package is installed
# (pyproject.toml ships conf/ as that package data).
_PACKAGED_CONF = Path(__file__).resolve().parent / "conf"
CONF_DIR = _PACKAGED_CONF if _PACKAGED_CONF.is_dir() else Path(__file__).resolve().parent.parent / "conf"


def hf_spec(path: str | Path) -> ModelSpec:
    """The ModelSpec of <path>/config.json, a Llama-architecture Hugging Face checkpoint."""
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
    return ModelSpec(name=Path(path).name, dim=c["hidden_size"], n_layers=c["num_hidden_layers"],
                     n_heads=c["num_attention_heads"], n_kv_heads=c.get("num_key_value_heads", c["num_attention_heads"]),
                     ffn_dim=c["intermediate_size"], vocab_size=c["vocab_size"],
                     max_seq_len=c.get("max_position_embeddings", 8192),
                     head_dim=c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"],
                     norm_eps=c.get("rms_norm_eps", 1e-5), rope_theta=float(rope_theta), rope_scaling=scaling,
                     tie_embeddings=bool(c.get("tie_word_embeddings", False)))


def named_spec(name: str) -> ModelSpec:
    """The spec of a model from conf/model/<name>.yaml, without Hydra (tests, notebooks, tools)."""
    import yaml

    f = CONF_DIR / "model" / f"{name}.yaml"
    if not f.is_file() or name == "hf":
        allowed = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml") if p.stem != "hf")
        raise ConfigError(f"model={name} is not a known model; choose one of {allowed} or model=hf model.path=DIR")
    d = yaml.safe_load(f.read_text())
    d.pop("path", None)
    d.pop("defaults", None)
    return ModelSpec.from_dict(d)
