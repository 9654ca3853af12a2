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


# What hf_spec needs from a Llama config.json; the other keys it reads have defaults.
HF_REQUIRED_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
HF_OPTIONAL_INT_KEYS = ("num_key_value_heads", "head_dim", "max_position_embeddings")
LLAMA3_ROPE_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def read_hf_config(path: str | Path) -> dict:
    """<path>/config.json as a dict, every value hf_spec reads checked: each problem is one ConfigError sentence
    naming the file and the key, raised before any tensor is read (a bad config.json otherwise surfaces as a
    KeyError or a shape mismatch deep inside weight loading)."""
    cfg_file = Path(path).expanduser() / "config.json"
    if not cfg_file.is_file():
        raise ConfigError(f"model.path={path} has no config.json; "
                          f"point model.path at a local Hugging Face checkpoint directory")
    try:
        c = json.loads(cfg_file.read_text())
    except OSError as e:
        raise ConfigError(f"{cfg_file} cannot be read ({e.strerror}); "
                          f"make it readable or point model.path elsewhere") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{cfg_file} is not valid JSON ({e}); "
                          f"repair it or copy the checkpoint's config.json again") from None
    if not isinstance(c, dict):
        raise ConfigError(f"{cfg_file} holds a JSON {type(c).__name__}, not an object of settings; "
                          f"copy the checkpoint's config.json again")
    if "model_type" not in c:
        raise ConfigError(f"{cfg_file} lacks 'model_type'; only Llama checkpoints (model_type 'llama') are supported")
    arch = c["model_type"]
    if arch != "llama":
        raise ConfigError(f"model.path={path} holds a {arch!r} model ({cfg_file} model_type); "
                          f"only model_type 'llama' is supported")
    for key in HF_REQUIRED_KEYS:
        if key not in c:
            raise ConfigError(f"{cfg_file} lacks {key!r}; a Llama config.json sets {', '.join(HF_REQUIRED_KEYS)}")
    for key in HF_REQUIRED_KEYS + HF_OPTIONAL_INT_KEYS:
        v = c.get(key)
        if (key in HF_REQUIRED_KEYS or v is not None) and not (_is_int(v) and v > 0):
            raise ConfigError(f"{cfg_file} sets {key}={v!r}; it must be a positive integer")
    heads, kv_heads = c["num_attention_heads"], c.get("num_key_value_heads") or c["num_attention_heads"]
    if heads % kv_heads:
        raise ConfigError(f"{cfg_file} sets num_attention_heads={heads}, not a multiple of "
                          f"num_key_value_heads={kv_heads}; fix one of them")
    if not c.get("head_dim") and c["hidden_size"] % heads:
        raise ConfigError(f"{cfg_file} sets hidden_size={c['hidden_size']}, not a multiple of "
                          f"num_attention_heads={heads}, and no head_dim; set head_dim")
    # transformers >= 5 writes rope_parameters (rope_theta inside it) where older versions wrote rope_scaling
    rope_key = "rope_scaling" if c.get("rope_scaling") else "rope_parameters"
    rs = c.get(rope_key)
    if rs is not None and not isinstance(rs, dict):
        raise ConfigError(f"{cfg_file} sets {rope_key}={rs!r}; it must be an object (or null)")
    if rs and rs.get("rope_type", rs.get("type")) == "llama3":
        for key in LLAMA3_ROPE_KEYS:
            if not _is_number(rs.get(key)):
                what = "lacks" if key not in rs else f"has a non-numeric {rs.get(key)!r} for"
                raise ConfigError(f"{cfg_file}: {rope_key} (llama3) {what} {key!r}; llama3 RoPE scaling needs "
                                  f"{', '.join(LLAMA3_ROPE_KEYS)}")
    for key, v in (("rope_theta", c.get("rope_theta")), (f"{rope_key}.rope_theta", (rs or {}).get("rope_theta")),
                   ("rms_norm_eps", c.get("rms_norm_eps"))):
        if v is not None and not (_is_number(v) and v > 0):
            raise ConfigError(f"{cfg_file} sets {key}={v!r}; it must be a positive number")
    return c


def hf_spec(path: str | Path) -> ModelSpec:
    """The ModelSpec of <path>/config.json, a Llama-architecture Hugging Face checkpoint (checked by read_hf_config;
    the tensors are checked against it by harness.weights.check_hf_checkpoint)."""
    c = read_hf_config(path)
    rs = c.get("rope_scaling") or c.get("rope_parameters")
    scaling = None
    if rs:
        kind = rs.get("rope_type", rs.get("type"))
        if kind == "llama3":
            scaling = RopeScaling(float(rs["factor"]), float(rs["low_freq_factor"]), float(rs["high_freq_factor"]),
                                  int(rs["original_max_position_embeddings"]))
        elif kind not in (None, "default"):
            raise ConfigError(f"model.path={path}: rope_scaling type {kind!r} is not supported (only 'llama3')")
    rope_theta = c.get("rope_theta", (c.get("rope_parameters") or {}).get("rope_theta", 10000.0))
    heads = c["num_attention_heads"]
    try:
        return ModelSpec(name=Path(path).name, dim=c["hidden_size"], n_layers=c["num_hidden_layers"],
                         n_heads=heads, n_kv_heads=c.get("num_key_value_heads") or heads,
                         ffn_dim=c["intermediate_size"], vocab_size=c["vocab_size"],
                         max_seq_len=c.get("max_position_embeddings") or 8192,
                         head_dim=c.get("head_dim") or c["hidden_size"] // heads,
                         norm_eps=c.get("rms_norm_eps", 1e-5), rope_theta=float(rope_theta), rope_scaling=scaling,
                         tie_embeddings=bool(c.get("tie_word_embeddings", False)))
    except ValueError as e:  # kernels' ConfigError (a ValueError) names ModelSpec fields: say which file they came from
        raise ConfigError(f"model.path={path}: config.json gives {e}") from None


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
