"""Model weights (`kernels.model.ModelWeights`, one structure every impl reads), filled with seeded
random numbers on the target device or loaded from a local Hugging Face checkpoint (never downloaded),
and the sizes a configuration needs before anything is allocated.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Iterator, Optional

import torch

from harness.errors import ConfigError, TooLargeForDevice
from kernels.model import LayerWeights, ModelSpec, ModelWeights
from kernels.quant import QLinear, quant_mode, quantize_linear


# --------------------------------------------------------------------------------------------
# Sizes, before anything is allocated
# --------------------------------------------------------------------------------------------
def weight_nbytes(spec: ModelSpec, quant: str, group_size: int) -> int:
    """Bytes the model's weights occupy on the device (embedding + linears + norms)."""
    mode = quant_mode(quant)
    per_layer = sum(mode.linear_nbytes(n, k, group_size) for n, k in spec.linear_shapes().values())
    lm_head = mode.linear_nbytes(spec.vocab_size, spec.dim, group_size)
    embed_and_norms = (spec.vocab_size + 2 * spec.n_layers + 1) * spec.dim * mode.act_bytes
    return spec.n_layers * per_layer + lm_head + embed_and_norms


def kv_cache_nbytes(spec: ModelSpec, batch: int, max_len: int) -> int:
    return 2 * spec.n_layers * batch * spec.n_kv_heads * max_len * spec.head_dim * 2


def available_bytes(device: torch.device, total: bool = False) -> int:
    """Memory free on `device` now, or (total=True) its whole memory (a GPU's size; the CPU's MemTotal)."""
    if device.type == "cuda":
        free, size = torch.cuda.mem_get_info(device)
        return int(size if total else free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:" if total else "MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def check_fits(spec: ModelSpec, quant: str, group_size: int, batch: int, max_len: int, device: torch.device,
               n_cache_copies: int = 2) -> None:
    """Refuses, before allocating, a configuration whose weights + KV caches do not fit `device` (now): ConfigError,
    or TooLargeForDevice where they exceed its whole memory."""
    w = weight_nbytes(spec, quant, group_size)
    kv = kv_cache_nbytes(spec, batch, max_len) * n_cache_copies
    # Largest temporary: one dense [V, D] (or [F, D]) matrix while quantizing, plus activations.
    scratch = max(spec.vocab_size, spec.ffn_dim, spec.qkv_dim) * spec.dim * 4 + (256 << 20)
    need, have = w + kv + scratch, available_bytes(device)
    if need > have:
        gb = lambda b: f"{b / 1e9:.1f} GB"  # noqa: E731
        # more than the whole device: no later run fits either (a sweep records it); else memory is only busy now
        error = TooLargeForDevice if need > available_bytes(device, total=True) else ConfigError
        raise error(
            f"model={spec.name} quant={quant} batch={batch} ctx={max_len} needs {gb(need)} (weights {gb(w)}, "
            f"KV caches {gb(kv)}, scratch {gb(scratch)}) but {device} has {gb(have)} available; "
            f"choose a smaller model, a smaller quant (int8/int4), or a smaller bench.batch / bench.ctx")


# --------------------------------------------------------------------------------------------
# Random weights, generated directly on the device
# --------------------------------------------------------------------------------------------
def random_weights(spec: ModelSpec, quant: str, group_size: int, device: torch.device | str,
                   seed: int = 0) -> ModelWeights:
    """Deterministic (per device type) random weights, scaled so activations stay O(1) through all layers:
    input projections ~ N(0, 1/K), output projections (wo, w_down) further / sqrt(2 * n_layers)
    so the residual stream grows by O(1) over the whole model; norms ~ 1 + N(0, 0.1^2)."""
    device = torch.device(device)
    dtype = quant_mode(quant).act_dtype
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)

    def randn(*shape, std: float) -> torch.Tensor:
        t = torch.empty(*shape, device=device, dtype=dtype)
        return t.normal_(0.0, std, generator=gen)

    def linear(n: int, k: int, out_proj: bool = False) -> QLinear:
        std = 1.0 / math.sqrt(k) / (math.sqrt(2 * spec.n_layers) if out_proj else 1.0)
        return quantize_linear(randn(n, k, std=std), quant, group_size)

    def norm() -> torch.Tensor:
        return 1.0 + randn(spec.dim, std=0.1)

    D, F = spec.dim, spec.ffn_dim
    embed = randn(spec.vocab_size, D, std=1.0)
    layers = [LayerWeights(attn_norm=norm(), wqkv=linear(spec.qkv_dim, D), wo=linear(D, spec.q_dim, out_proj=True),
                           mlp_norm=norm(), w_gate=linear(F, D), w_up=linear(F, D), w_down=linear(D, F, out_proj=True))
              for _ in range(spec.n_layers)]
    final_norm = norm()
    # Tied: the LM head is the embedding table itself, quantized like every other linear layer.
    lm_head = quantize_linear(embed, quant, group_size) if spec.tie_embeddings else linear(spec.vocab_size, D)
    return ModelWeights(spec, quant, group_size, dtype, embed, layers, final_norm, lm_head)


# --------------------------------------------------------------------------------------------
# Local Hugging Face checkpoints (config.json + *.safetensors, sharded or not)
# --------------------------------------------------------------------------------------------
def _safetensor_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            names = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ConfigError(f"{index} is not a readable safetensors index ({type(e).__name__}: {e}); "
                              f"repair it or copy the checkpoint again") from None
        files = [path / n for n in names]
    else:
        files = sorted(path.glob("*.safetensors"))
    missing = [f for f in files if not f.is_file()]
    if not files or missing:
        raise ConfigError(f"model.path={path} has no readable *.safetensors files"
                          + (f" (missing {missing[0].name})" if missing else "")
                          + "; point model.path at a complete local Hugging Face checkpoint")
    return files


# Tensor dtypes load_hf_weights can cast to the run's activation dtype (quantized or integer checkpoints cannot be).
_FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


def expected_hf_tensors(spec: ModelSpec) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every tensor a Llama checkpoint of `spec` holds: name -> (shape, that shape in config.json's keys)."""
    D, F, V = spec.dim, spec.ffn_dim, spec.vocab_size
    # head_dim: config.json's head_dim, else hidden_size / num_attention_heads
    q, kv = "num_attention_heads * head_dim", "num_key_value_heads * head_dim"
    out = {"model.embed_tokens.weight": ((V, D), "[vocab_size, hidden_size]"),
           "model.norm.weight": ((D,), "[hidden_size]")}
    if not spec.tie_embeddings:
        out["lm_head.weight"] = ((V, D), "[vocab_size, hidden_size]")
    for i in range(spec.n_layers):
        p = f"model.layers.{i}."
        out.update({
            p + "input_layernorm.weight": ((D,), "[hidden_size]"),
            p + "post_attention_layernorm.weight": ((D,), "[hidden_size]"),
            p + "self_attn.q_proj.weight": ((spec.q_dim, D), f"[{q}, hidden_size]"),
            p + "self_attn.k_proj.weight": ((spec.kv_dim, D), f"[{kv}, hidden_size]"),
            p + "self_attn.v_proj.weight": ((spec.kv_dim, D), f"[{kv}, hidden_size]"),
            p + "self_attn.o_proj.weight": ((D, spec.q_dim), f"[hidden_size, {q}]"),
            p + "mlp.gate_proj.weight": ((F, D), "[intermediate_size, hidden_size]"),
            p + "mlp.up_proj.weight": ((F, D), "[intermediate_size, hidden_size]"),
            p + "mlp.down_proj.weight": ((D, F), "[hidden_size, intermediate_size]"),
        })
    return out


def _headers(f: Path) -> list[tuple[str, list[int], str]]:
    """(name, shape, dtype) of every tensor in one .safetensors file, from its header alone (no tensor data is read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(f), framework="pt", device="cpu") as sf:
            out = []
            for name in sf.keys():
                sl = sf.get_slice(name)
                out.append((name, list(sl.get_shape()), sl.get_dtype()))
            return out
    except OSError as e:
        raise ConfigError(f"{f} cannot be read ({e.strerror or e}); "
                          f"make it readable or copy the checkpoint again") from None
    except Exception as e:  # noqa: BLE001 - safetensors raises its own SafetensorError (not exported) on a bad header
        why = str(e).splitlines()[0].removeprefix("Error while deserializing header: ") if str(e) else type(e).__name__
        raise ConfigError(f"{f} is not a readable safetensors file ({why}); it is truncated or corrupt: "
                          f"copy it from the checkpoint again") from None


def check_hf_checkpoint(path: str | os.PathLike, spec: ModelSpec) -> list[Path]:
    """Checks, from the safetensors headers alone, that the checkpoint at `path` holds exactly the tensors `spec`
    (its config.json) implies, with those shapes and a float dtype; returns its files. Each problem is one
    ConfigError sentence naming the file, the tensor and what was expected, raised before any weight is read
    (a mismatch otherwise shows up as a shape error, or silently wrong logits, after minutes of loading)."""
    path = Path(path).expanduser()
    files = _safetensor_files(path)
    cfg = path / "config.json"
    expected = expected_hf_tensors(spec)
    seen: dict[str, Path] = {}
    layer_re = re.compile(r"model\.layers\.(\d+)\.")
    for f in files:
        for name, shape, dtype in _headers(f):
            if name in seen:
                raise ConfigError(f"{f} repeats tensor {name}, already in {seen[name].name}; "
                                  f"remove the duplicate or copy the checkpoint again")
            seen[name] = f
            if name.endswith("rotary_emb.inv_freq"):  # a buffer older transformers saved; recomputed from config
                continue
            if name.endswith(".bias"):
                raise ConfigError(f"{f} holds bias tensor {name}; only bias-free Llama checkpoints are supported")
            want = expected.get(name)
            if want is None and name == "lm_head.weight":  # tied checkpoints may still store the head: it is unused
                want = ((spec.vocab_size, spec.dim), "[vocab_size, hidden_size]")
            if want is None:
                m = layer_re.match(name)
                if m and int(m.group(1)) >= spec.n_layers:
                    raise ConfigError(f"{f} holds {name} of layer {m.group(1)}, but {cfg} says num_hidden_layers="
                                      f"{spec.n_layers}; make num_hidden_layers and the checkpoint's layers agree")
                raise ConfigError(f"{f} holds unexpected tensor {name} (shape {shape}); a Llama checkpoint of {cfg} "
                                  f"holds only model.embed_tokens, model.layers.*, model.norm and lm_head weights")
            if tuple(shape) != want[0]:
                raise ConfigError(f"{f} holds {name} of shape {shape}, but {cfg} implies {list(want[0])} {want[1]}; "
                                  f"make config.json and the weights agree")
            if dtype not in _FLOAT_DTYPES:
                raise ConfigError(f"{f} holds {name} as {dtype}; only float checkpoints ({', '.join(_FLOAT_DTYPES)}) "
                                  f"are supported, not quantized ones")
    missing = [n for n in expected if n not in seen]
    if missing:
        name, (shape, dims) = missing[0], expected[missing[0]]
        where = ", ".join(f.name for f in files)
        hint = (" (or set tie_word_embeddings: true in config.json if the head is the embedding)"
                if name == "lm_head.weight" else "")
        raise ConfigError(f"model.path={path} lacks tensor {name} {list(shape)} {dims} in {where}{hint}; "
                          f"{len(missing)} expected tensor(s) are missing: copy the complete checkpoint")
    return files


def _tensors(files: list[Path], device: torch.device) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    dev = str(device) if device.type == "cuda" else "cpu"
    for f in files:
        with safe_open(str(f), framework="pt", device=dev) as sf:
            for name in sf.keys():
                yield name, sf.get_tensor(name)


def load_hf_weights(path: str | os.PathLike, spec: ModelSpec, quant: str, group_size: int,
                    device: torch.device | str) -> ModelWeights:
    """Maps a Llama checkpoint's tensor names onto ModelWeights, quantizing each linear on the device."""
    path, device, dtype = Path(path).expanduser(), torch.device(device), quant_mode(quant).act_dtype
    files = check_hf_checkpoint(path, spec)  # headers only: every bad tensor is refused before any is loaded
    raw: dict[str, torch.Tensor] = {}
    for name, t in _tensors(files, device):
        if name.endswith("rotary_emb.inv_freq"):
            continue
        raw[name] = t.to(device=device, dtype=dtype)

    def take(name: str) -> torch.Tensor:
        if name not in raw:
            raise ConfigError(f"model.path={path} lacks tensor {name!r}; is it a complete Llama checkpoint?")
        return raw.pop(name)

    q = lambda t: quantize_linear(t, quant, group_size)  # noqa: E731
    layers = []
    for i in range(spec.n_layers):
        p = f"model.layers.{i}."
        qkv = torch.cat([take(p + "self_attn.q_proj.weight"), take(p + "self_attn.k_proj.weight"),
                         take(p + "self_attn.v_proj.weight")], dim=0)
        layers.append(LayerWeights(
            attn_norm=take(p + "input_layernorm.weight"), wqkv=q(qkv), wo=q(take(p + "self_attn.o_proj.weight")),
            mlp_norm=take(p + "post_attention_layernorm.weight"), w_gate=q(take(p + "mlp.gate_proj.weight")),
            w_up=q(take(p + "mlp.up_proj.weight")), w_down=q(take(p + "mlp.down_proj.weight"))))
    embed = take("model.embed_tokens.weight")
    final_norm = take("model.norm.weight")
    head = raw.pop("lm_head.weight", None)
    if head is None and not spec.tie_embeddings:
        raise ConfigError(f"model.path={path} lacks lm_head.weight and its config does not tie embeddings")
    lm_head = q(embed if spec.tie_embeddings or head is None else head)
    return ModelWeights(spec, quant, group_size, dtype, embed, layers, final_norm, lm_head)


def build_weights(spec: ModelSpec, quant: str, group_size: int, device: torch.device | str, seed: int = 0,
                  path: Optional[str] = None) -> ModelWeights:
    """Random weights, or the checkpoint at `path` when given."""
    if path:
        return load_hf_weights(path, spec, quant, group_size, device)
    return random_weights(spec, quant, group_size, device, seed)
