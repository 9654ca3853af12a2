"""Typed configuration: the dataclass schema of every Hydra group, registered in the ConfigStore,
and `validate`, which turns every bad value a user can give into one ConfigError sentence.

YAML files under conf/ fill these schemas; a key that is not in a schema, or a value of the wrong
type, is refused by Hydra itself before `validate` runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from harness.errors import ConfigError
from harness.models import hf_spec
from kernels import MAX_BATCH
from kernels.mega import AUTO as MEGA_AUTO, BACKEND_CHOICES as MEGA_BACKEND_CHOICES, BACKENDS as MEGA_BACKENDS, \
    resolve_backend
from kernels.mega.lower import TileOptions
from kernels.mega.schedule import FUSIONS, POLICIES
from kernels.model import ModelSpec, RopeScaling
from kernels.quant import QUANT_MODES, quant_mode

CACHE_FILLS = ("random", "prefill")
DEVICES = ("auto", "cuda", "cpu")
TELEMETRY_MODES = ("off", "nvml")


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
    rope_scaling: Optional[RopeScaling] = None
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
    # torch.compile builds per point for torch-compile and gemlite, each autotuned afresh; the fastest is kept
    # (Inductor's per-kernel autotuning picks differ from build to build: docs/perf-notes.md)
    compile_builds: int = 3


@dataclass
class MegakernelConfig:
    # auto: per point, the Gluon backend where it runs (Hopper, bf16/fp16/int8, batch <= 16, no megakernel.tiles),
    # else the Triton backend (kernels.mega.resolve_backend); or a kernels.mega.BACKENDS name. Rows record the one
    # that ran (mega_backend), never "auto".
    backend: str = "auto"
    programs_per_sm: int = 2
    schedule: str = "round-robin"  # a kernels.mega.schedule.POLICIES name
    fusions: list[str] = field(default_factory=list)  # non-empty: measure each fusion in the same run
    backends: list[str] = field(default_factory=list)  # non-empty: measure each named backend in the same run
    # Tile options (kernels/mega/lower.TileOptions), e.g. megakernel.tiles.gemv_rows=8; unset: the built-in choice.
    tiles: TileOptions = field(default_factory=TileOptions)


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
    # true: the console shows warnings, errors, the result table and a sweep's summary only (CI); the job's log
    # file (<hydra run dir>/run.log) still holds the progress. harness.run.configure_console.
    quiet: bool = False


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    for group, node in (("model", ModelConfig), ("quant", QuantConfig), ("bench", BenchConfig),
                        ("telemetry", TelemetryConfig), ("impl", ImplConfig)):
        cs.store(group=group, name=f"{group}_schema", node=node)


def _cuda_visible() -> bool:
    import torch

    return torch.cuda.is_available()


def _one_of(key: str, value: Any, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value} is not allowed; choose one of {list(allowed)}")


def model_spec(m: ModelConfig | DictConfig) -> ModelSpec:
    """The architecture of the configured model (reads config.json for model=hf)."""
    if m.name == "hf" or m.path:
        if not m.path or m.path == MISSING:
            raise ConfigError("model=hf needs model.path=DIR, a local Hugging Face checkpoint directory")
        return hf_spec(m.path)
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


def unknown_keys(node: Any, path: str = "") -> list[str]:
    """Keys of a composed configuration that its schema does not declare (Hydra's `+key=value` adds keys even to
    typed groups, so a typo would otherwise pass in silence)."""
    if not isinstance(node, DictConfig):
        return []
    schema = OmegaConf.get_type(node)
    declared = {f.name for f in fields(schema)} if is_dataclass(schema) else None
    out = []
    for key in node.keys():
        name = f"{path}.{key}" if path else str(key)
        if declared is not None and key not in declared:
            out.append(name)
        else:
            out += unknown_keys(node._get_node(key), name)
    return out


def tile_options(cfg: RunConfig | DictConfig) -> TileOptions:
    """megakernel.tiles as the TileOptions the megakernel takes."""
    t = getattr(cfg.megakernel, "tiles", None)
    if t is None or isinstance(t, TileOptions):
        return t or TileOptions()
    return TileOptions(**OmegaConf.to_container(t, resolve=True))


def mega_backend(cfg: RunConfig | DictConfig) -> str:
    """megakernel.backend as configured ("auto" included), with the schema's default for a configuration built
    without it."""
    return getattr(cfg.megakernel, "backend", None) or MegakernelConfig.backend


def resolved_backend(cfg: RunConfig | DictConfig, spec: ModelSpec, quant: str, batch: int, device,
                     backend: Optional[str] = None) -> str:
    """The megakernel backend that runs `backend` (default: megakernel.backend) at this point on `device`: "auto"
    resolved by kernels.mega.resolve_backend (the runtime applies the same rule), a backend name as it is."""
    return resolve_backend(backend or mega_backend(cfg), spec, quant, batch, device,
                           tiles_given=bool(tile_options(cfg).given()))


def validate(cfg: RunConfig | DictConfig, impl_names: Optional[list[str]] = None) -> ModelSpec:
    """Checks every value that Hydra's typing cannot; returns the model spec. Raises ConfigError."""
    unknown = unknown_keys(cfg) if isinstance(cfg, DictConfig) else []
    if unknown:
        raise ConfigError(f"{unknown[0]} is not a configuration key; check its spelling against README.md and conf/ "
                          f"(keys added with + must exist in the schema, harness/config.py)")
    _one_of("quant", cfg.quant.name, QUANT_MODES)
    _one_of("megakernel.schedule", cfg.megakernel.schedule, POLICIES)
    _one_of("megakernel.backend", cfg.megakernel.backend, MEGA_BACKEND_CHOICES)
    _one_of("fusion", cfg.fusion, FUSIONS)
    for f in cfg.megakernel.fusions:
        _one_of("megakernel.fusions entry", f, FUSIONS)
    for b in cfg.megakernel.get("backends") or []:
        if b == MEGA_AUTO:  # a same-run comparison names what it compares; auto would repeat one of them
            raise ConfigError(f"megakernel.backends=[{', '.join(map(str, cfg.megakernel.backends))}] compares named "
                              f"backends in one run; {MEGA_AUTO} is not one (it picks one per point): list some of "
                              f"{list(MEGA_BACKENDS)}, or drop the list and set megakernel.backend={MEGA_AUTO}")
        _one_of("megakernel.backends entry", b, MEGA_BACKENDS)
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
    interpret = cfg.bench.device == "cpu" or (cfg.bench.device == "auto" and not _cuda_visible())
    problem = tile_options(cfg).problem(interpret)
    if problem:
        raise ConfigError(problem)
    if cfg.impl.compile_builds < 1:
        raise ConfigError(f"impl.compile_builds={cfg.impl.compile_builds} must be >= 1 (torch.compile builds per point)")
    if impl_names is not None:
        for name in list(cfg.impl.names) + [cfg.baseline]:
            if name != "*" and name not in impl_names:
                raise ConfigError(f"impl {name!r} is not registered; choose from {sorted(impl_names)}")
    spec = model_spec(cfg.model)
    if b.ctx + 1 > spec.max_seq_len:
        raise ConfigError(f"bench.ctx={b.ctx} exceeds model {spec.name}'s maximum of {spec.max_seq_len - 1} cached positions; "
                          f"lower bench.ctx")
    problem = quant_mode(cfg.quant.name).group_problem(cfg.quant.group_size, spec.input_dims())
    if problem:
        raise ConfigError(problem)
    return spec
