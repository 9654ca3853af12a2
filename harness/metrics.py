"""Bytes a decode step must move and the ratios derived from them; defined once, here.

bytes_per_step counts the fewest bytes one decode step of B sequences at context `ctx` must move
through device memory:
  - every linear layer's weights once (incl. int8/int4 scales and zeros), the LM head included;
  - the norm weights once;
  - B embedding rows (the tokens' rows of the table);
  - the KV cache read for the context: B * ctx positions * n_layers * 2 (K and V) * KVH * hd;
  - the KV append: B new positions, same per-position size;
  - the logits written: B * vocab fp32.
Activations between layers are a few KB and are not counted.
"""
from __future__ import annotations

from kernels.model import ModelSpec
from kernels.quant import quant_mode

LOGIT_BYTES = 4  # logits are returned in fp32


def bytes_per_step(spec: ModelSpec, quant: str, group_size: int, batch: int, ctx: int) -> dict[str, int]:
    """Bytes by component and their total ("total"). `ctx` = positions already in the cache."""
    mode = quant_mode(quant)
    act = mode.act_bytes  # activations, KV cache, embedding table and norms
    linears = spec.n_layers * sum(mode.linear_nbytes(n, k, group_size) for n, k in spec.linear_shapes().values())
    lm_head = mode.linear_nbytes(spec.vocab_size, spec.dim, group_size)
    per_position = spec.n_layers * 2 * spec.n_kv_heads * spec.head_dim * act
    parts = {
        "weights": linears,
        "lm_head": lm_head,
        "norms": (2 * spec.n_layers + 1) * spec.dim * act,
        "embedding_rows": batch * spec.dim * act,
        "kv_read": batch * ctx * per_position,
        "kv_append": batch * per_position,
        "logits": batch * spec.vocab_size * LOGIT_BYTES,
    }
    parts["total"] = sum(parts.values())
    return parts


def achieved_gbps(nbytes: int, latency_us: float) -> float:
    return nbytes / (latency_us * 1e-6) / 1e9


def pct_of_copy_bw(nbytes: int, latency_us: float, copy_tbps: float) -> float:
    """Achieved bandwidth as % of the device copy bandwidth measured in the same process."""
    return 100.0 * achieved_gbps(nbytes, latency_us) / (copy_tbps * 1e3)
