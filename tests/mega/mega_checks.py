"""Shared helpers of the megakernel tests: cases (weights, NaN-poisoned KV cache, inputs, fp32 reference),
and the comparisons."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import pytest
import torch

from harness.models import named_spec
from kernels.model import ModelSpec
from harness.reference import LlamaDecoder
from kernels.model import KVCache
from harness.weights import random_weights
from kernels.model import ModelWeights

QUANTS = ["fp32", "fp16", "bf16", "int8", "int4"]
FUSIONS = ["model", "layer", "block", "op"]
POLICIES = ["round-robin", "cost-balanced"]
GROUP_SIZE = 32  # int4 group: divides every dim of the test models
CACHE_LEN = 40  # KV-cache capacity of the CPU cases
POSITIONS = [37, 5, 0, 16]  # per sequence: a long context, a short one, an empty one, a middle one
# A model with ragged sizes: D, F, V are no multiple of the row tiles; hd/2 = 8 pairs; GQA group 3.
ODD = ModelSpec(name="odd", dim=96, n_layers=2, n_heads=6, n_kv_heads=2, ffn_dim=160, vocab_size=300,
                max_seq_len=2048, head_dim=16)


# The Gluon backend's ragged case (its tiles are GPU-sized): K an odd multiple of 256 into O and down (q_dim 1280,
# ffn 1792), so with two column groups per chunk their last chunk's second box lies past K; a vocabulary that ends
# inside a 64-row LM-head tile; head_dim 128 (two RmsQkvRope instructions per head); GQA group 5.
GLUON_ODD = ModelSpec(name="gluon-odd", dim=2048, n_layers=2, n_heads=10, n_kv_heads=2, ffn_dim=1792,
                      vocab_size=4000, max_seq_len=8192, head_dim=128)


def spec_of(name: str) -> ModelSpec:
    return {"odd": ODD, "gluon-odd": GLUON_ODD}.get(name) or named_spec(name)


@lru_cache(maxsize=None)
def weights(model: str, quant: str, device: str = "cpu") -> ModelWeights:
    return random_weights(spec_of(model), quant, GROUP_SIZE, device, seed=0)


@dataclass
class Case:
    w: ModelWeights
    cache: KVCache  # context filled, positions >= positions[b] poisoned with NaN (for the impl under test)
    tokens: torch.Tensor  # [B] int64
    positions: torch.Tensor  # [B] int64
    ref_logits: torch.Tensor  # [B, V] fp32, LlamaDecoder(compute_dtype=fp32)
    ref_cache: KVCache  # the reference's cache after its step

    @property
    def batch(self) -> int:
        return self.tokens.shape[0]


def make_case(model: str, quant: str, batch: int, max_len: int = CACHE_LEN, seed: int = 1, device: str = "cpu",
              positions=None, w: ModelWeights | None = None) -> Case:
    """w: weights to use instead of the shared cached ones (a test that edits weights builds its own copy)."""
    w = w if w is not None else weights(model, quant, device)
    spec = w.spec
    gen = torch.Generator(device=device).manual_seed(seed)
    cache = KVCache.empty(spec, batch, max_len, w.dtype, device)
    cache.k.normal_(generator=gen)
    cache.v.normal_(generator=gen)
    pos = positions if positions is not None else [p % max_len for p in (POSITIONS * 4)[:batch]]
    positions = torch.tensor(pos, dtype=torch.long, device=device)
    tokens = torch.randint(0, spec.vocab_size, (batch,), generator=gen, device=device)
    ref_cache = cache.clone()
    ref = LlamaDecoder(w, compute_dtype=torch.float32, max_len=max_len).decode(tokens, positions, ref_cache)
    for b, p in enumerate(pos):  # the step must write position p and never read beyond it
        cache.k[:, b, :, p:] = float("nan")
        cache.v[:, b, :, p:] = float("nan")
    return Case(w, cache, tokens, positions, ref, ref_cache)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def assert_logits_close(out: torch.Tensor, ref: torch.Tensor, tol: float, what: str) -> None:
    assert torch.isfinite(out).all(), f"{what}: non-finite logits (a NaN-poisoned KV position was read?)"
    e = rel_err(out, ref)
    assert e <= tol, f"{what}: relative logits error {e:.3g} > {tol}"


def assert_cache_written(case: Case, cache: KVCache, what: str) -> None:
    """Position p of every sequence holds the reference's K/V; positions after p are untouched (NaN)."""
    for b, p in enumerate(case.positions.tolist()):
        for name in ("k", "v"):
            got, want = getattr(cache, name)[:, b, :, p].float(), getattr(case.ref_cache, name)[:, b, :, p].float()
            assert torch.isfinite(got).all(), f"{what}: {name} cache position {p} of sequence {b} not written"
            torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3 * float(want.abs().max()),
                                       msg=lambda m: f"{what}: {name} cache at position {p}, sequence {b}: {m}")
            assert torch.isnan(getattr(cache, name)[:, b, :, p + 1:]).all(), f"{what}: wrote past position {p}"


# The Triton interpreter itself trips a numpy deprecation over `range` of runtime ints; not our code.
INTERPRETER_WARNINGS = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")
