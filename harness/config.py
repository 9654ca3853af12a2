"""Typed configuration: the dataclass schema of every Hydra group, registered in the ConfigStore,
and `validate`, which turns every bad value a user can give into one ConfigError sentence.

YAML files under conf/ fill these schemas; a key that is not in a schema, or a value of the wrong
type, is refused by Hydra itself before `validate` runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from harness.errors import ConfigError
from harness.models import ModelSpec, RopeScaling

FUSIONS = ("op", "block", "layer", "model")
CACHE_FILLS = ("random", "prefill")
DEVICES = ("auto", "cuda", "cpu")
TELEMETRY_MODES = ("off", "nvml")
MAX_BATCH = 16


@dataclass
class RopeScalingConfig:
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass
class ModelConfig:
    """A named architecture (all dims given) or `name: hf` with `path` to a local checkpoint."""

    name: str = MISSING
    path: Optional[str] = None
    dim: Optional[int] = None
    n_layers: Optional[int] = None
    n_heads: Optional[int] = None
    n_kv_heads: Optional[int] = None
    ffn_dim: Optional[int] = None
    vocab_size: Optional[int] = None
    max_seq_len: Optional[int] = None
    head_dim: Optional[int] = None
    norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    rope_scaling: Optional[RopeScalingConfig] = None
    tie_embeddings: bool = False


@dataclass
class QuantConfig:
    name: str = "bf16"  # bf16 | fp16 | fp32 | int8 | int4
    group_size: int = 128  # int4 only: columns per scale/zero group


@dataclass
class BenchConfig:
    batch: int = 1
    ctx: int = 1024  # positions already in the KV cache when the measured step runs
    warmup: int = 10
    repeats: int = 100
    cuda_graphs: bool = True
    seed: int = 0
    cache_fill: str = "random"  # random: seeded random K/V; prefill: reference prefill of a random prompt
    device: str = "auto"  # auto | cuda | cpu


@dataclass
class TelemetryConfig:
    mode: str = "off"  # off | nvml
    interval_ms: int = 20


@dataclass
class ImplConfig:
    names: list[str] = field(default_factory=lambda: ["*"])  # "*": every registered impl


@dataclass
class MegakernelConfig:
    programs_per_sm: int = 2
    schedule: str = "round-robin"
    fusions: list[str] = field(default_factory=list)  # non-empty: measure each fusion in the same run
    # Tile overrides (kernels/mega/lower.py TileConfig fields, or gemv_rows / gemv_elems), e.g.
    # megakernel.tiles.prefetch=true or +megakernel.tiles.num_warps=4; empty: the built-in choice.
    tiles: dict[str, Any] = field(default_factory=dict)


@dataclass
class ResultsConfig:
    dir: str = "results"
    tag: str = "default"  # points are resumed (skipped) when already measured under the same tag
    resume: bool = True


@dataclass
class LaunchConfig:
    pin_gpu: str = "auto"  # auto (pin one GPU per job under the joblib launcher) | true | false (harness.launch)


@dataclass
class RunConfig:
    model: ModelConfig = MISSING
    quant: QuantConfig = MISSING
    bench: BenchConfig = MISSING
    telemetry: TelemetryConfig = MISSING
    impl: ImplConfig = MISSING
    fusion: str = "model"  # megakernel launch granularity: op | block | layer | model
    megakernel: MegakernelConfig = field(default_factory=MegakernelConfig)
    baseline: str = "torch-eager"  # speedups are over this impl, measured in the same run
    check: bool = True  # compare every impl's logits with the fp32 reference
    results: ResultsConfig = field(default_factory=ResultsConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    for group, node in (("model", ModelConfig), ("quant", QuantConfig), ("bench", BenchConfig),
                        ("telemetry", TelemetryConfig), ("impl", ImplConfig)):
        cs.store(group=group, name=f"{group}_schema", node=node)


def _one_of(key: str, value: Any, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value} is not allowed; choose one of {list(allowed)}")


def model_spec(m: ModelConfig | DictConfig) -> ModelSpec:
    """The architecture of the configured model (reads config.json for model=hf)."""
    if m.name == "hf" or m.path:
        if not m.path or m.path == MISSING:
            raise ConfigError("model=hf needs model.path=DIR, a local Hugging Face checkpoint directory")
        return ModelSpec.from_hf_dir(m.path)
    d = OmegaConf.to_container(m, resolve=True) if isinstance(m, DictConfig) else dict(m.__dict__)
    d.pop("path", None)
    missing = [k for k, v in d.items() if v is None and k not in ("head_dim", "rope_scaling")]
    if missing:
        raise ConfigError(f"model={m.name} does not set {missing}; give every dimension in conf/model/{m.name}.yaml")
    if d.get("head_dim") is None:
        d["head_dim"] = 0
    if d.get("rope_scaling") is not None:
        d["rope_scaling"] = RopeScaling(**dict(d["rope_scaling"]))
    return ModelSpec.from_dict(d)


def validate(cfg: RunConfig | DictConfig, impl_names: Optional[list[str]] = None) -> ModelSpec:
    """Checks every value that Hydra's typing cannot; returns the model spec. Raises ConfigError."""
    from harness.quant import QUANT_MODES

    _one_of("quant", cfg.quant.name, QUANT_MODES)
    _one_of("fusion", cfg.fusion, FUSIONS)
    for f in cfg.megakernel.fusions:
        _one_of("megakernel.fusions entry", f, FUSIONS)
    _one_of("bench.cache_fill", cfg.bench.cache_fill, CACHE_FILLS)
    _one_of("bench.device", cfg.bench.device, DEVICES)
    _one_of("telemetry", cfg.telemetry.mode, TELEMETRY_MODES)
    b = cfg.bench
    if not 1 <= b.batch <= MAX_BATCH:
        raise ConfigError(f"bench.batch={b.batch} is out of range; use a batch from 1 to {MAX_BATCH}")
    if b.ctx < 0:
        raise ConfigError(f"bench.ctx={b.ctx} must be >= 0")
    if b.repeats < 1 or b.warmup < 0:
        raise ConfigError(f"bench.repeats={b.repeats} must be >= 1 and bench.warmup={b.warmup} >= 0")
    if cfg.megakernel.programs_per_sm < 1:
        raise ConfigError(f"megakernel.programs_per_sm={cfg.megakernel.programs_per_sm} must be >= 1")
    tile_keys = ("gemv_rows", "gemv_elems", "dot_block_k", "num_warps", "kv_block", "n_splits", "argmax_block", "embed_block",
                 "prefetch", "max_regs", "l2_prefetch", "int4_dot", "dot", "int8_unit_floats", "k_fold")
    flags = ("prefetch", "int4_dot", "dot", "int8_unit_floats")
    for key, val in (cfg.megakernel.get("tiles") or {}).items():
        if key not in tile_keys:
            raise ConfigError(f"megakernel.tiles.{key} is not a tile option; use one of {', '.join(tile_keys)}")
        if key not in flags and (not isinstance(val, int) or isinstance(val, bool) or val < 0):
            raise ConfigError(f"megakernel.tiles.{key}={val!r} must be a non-negative integer")
        if key in flags and not isinstance(val, bool):
            raise ConfigError(f"megakernel.tiles.{key}={val!r} must be true or false")
    if impl_names is not None:
        for name in list(cfg.impl.names) + [cfg.baseline]:
            if name != "*" and name not in impl_names:
                raise ConfigError(f"impl {name!r} is not registered; choose from {sorted(impl_names)}")
    spec = model_spec(cfg.model)
    if b.ctx + 1 > spec.max_seq_len:
        raise ConfigError(f"bench.ctx={b.ctx} exceeds model {spec.name}'s maximum of {spec.max_seq_len - 1} cached positions; "
                          f"lower bench.ctx")
    if cfg.quant.name == "int4":
        g = cfg.quant.group_size
        dims = {"model.dim": spec.dim, "model.ffn_dim": spec.ffn_dim, "attention q_dim": spec.q_dim}
        bad = {k: v for k, v in dims.items() if g <= 0 or g % 2 or v % g}
        if bad:
            k, v = next(iter(bad.items()))
            raise ConfigError(f"quant.group_size={g} does not divide {k}={v}; choose an even group size that divides "
                              f"{sorted(set(dims.values()))}, e.g. 32, 64 or 128")
    return spec
