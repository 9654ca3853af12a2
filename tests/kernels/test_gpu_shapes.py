"""Every kernel at the real shapes of Llama-3.2-1B and Llama-3.1-8B, every quant, batch 1 / 4 / 16
(FMA and tl.dot GEMV paths), compiled on the GPU, against the fp32 reference. Run: pytest -m gpu."""
import functools
import zlib

import pytest
import torch

from harness.models import named_spec
from kernels.quant import quantize_linear
from kernel_checks import assert_close, nan_full
from kernels import reference as ref
from kernels.model import rope_tables
from kernels.attention import decode_attention
from kernels.elementwise import add, silu_mul
from kernels.embedding import embedding
from kernels.gemv import gemv, gemv_silu_mul
from kernels.lm_head import lm_head_argmax
from kernels.norm import rmsnorm
from kernels.rope import rope_kv_append

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

MODELS = ["llama1b", "llama8b"]
QUANT_ACT = {"bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.bfloat16, "int4": torch.bfloat16}
BATCHES = [1, 4, 16]
EPS = 1e-5


def _gen(*key) -> torch.Generator:
    """A generator seeded from the test's parameters (reproducible across runs)."""
    return torch.Generator(device="cuda").manual_seed(zlib.crc32(repr(key).encode()))


def _randn(gen, *shape, dtype, scale=1.0):
    return (torch.randn(*shape, generator=gen, device="cuda") * scale).to(dtype)


@functools.lru_cache(maxsize=4)
def _weight(model: str, quant: str, name: str):
    """One layer's weight (cached: the 8B LM head is 1 GB), N(0, 1/K) before quantization."""
    spec = named_spec(model)
    n, k = {**spec.linear_shapes(), "lm_head": (spec.vocab_size, spec.dim)}[name]
    w = _randn(_gen(model, quant, name), n, k, dtype=QUANT_ACT[quant], scale=k ** -0.5)
    return quantize_linear(w, quant, 128)


@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"B{b}")
@pytest.mark.parametrize("quant", list(QUANT_ACT))
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("layer", ["wqkv+norm", "wo+residual", "gate_up_silu", "w_down+residual", "lm_head"])
def test_gemv_real_shapes(layer, model, quant, batch):
    dtype = QUANT_ACT[quant]
    spec = named_spec(model)
    gen = _gen(layer, model, quant, batch)
    if layer == "gate_up_silu":
        wg, wu = _weight(model, quant, "w_gate"), _weight(model, quant, "w_up")
        x, nw = _randn(gen, batch, spec.dim, dtype=dtype), _randn(gen, spec.dim, dtype=dtype)
        y = gemv_silu_mul(x, wg, wu, norm_weight=nw, eps=EPS, out=nan_full(batch, spec.ffn_dim, dtype=dtype))
        assert_close(y, ref.gemv_silu_mul(x, wg, wu, nw, EPS), dtype, layer)
        return
    name = layer.split("+")[0]
    w = _weight(model, quant, name)
    x = _randn(gen, batch, w.in_features, dtype=dtype)
    if layer == "lm_head":
        nw = _randn(gen, spec.dim, dtype=dtype)
        logits, tokens = lm_head_argmax(x, w, nw, EPS, out=nan_full(batch, w.out_features, dtype=torch.float32))
        logits_ref, _ = ref.lm_head_argmax(x, w, nw, EPS)
        assert_close(logits, logits_ref, dtype, layer)
        assert torch.equal(tokens, logits.argmax(dim=-1))
        return
    nw = _randn(gen, w.in_features, dtype=dtype) if "norm" in layer else None
    res = _randn(gen, batch, w.out_features, dtype=dtype) if "residual" in layer else None
    y = gemv(x, w, residual=res, norm_weight=nw, eps=EPS, out=nan_full(batch, w.out_features, dtype=dtype))
    assert_close(y, ref.gemv(x, w, res, nw, EPS), dtype, layer)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("batch", [1, 16], ids=lambda b: f"B{b}")
def test_small_ops_real_shapes(batch, model, dtype):
    spec = named_spec(model)
    gen = _gen("small", model, batch)
    x, nw = _randn(gen, batch, spec.dim, dtype=dtype, scale=3.0), _randn(gen, spec.dim, dtype=dtype)
    assert_close(rmsnorm(x, nw, EPS, out=nan_full(batch, spec.dim, dtype=dtype)), ref.rmsnorm(x, nw, EPS), dtype, "rmsnorm")
    table = _randn(gen, spec.vocab_size, spec.dim, dtype=dtype)
    tokens = torch.randint(0, spec.vocab_size, (batch,), generator=gen, device="cuda")
    tokens[0] = spec.vocab_size - 1
    assert torch.equal(embedding(tokens, table, out=nan_full(batch, spec.dim, dtype=dtype)), ref.embedding(tokens, table))
    a, b = _randn(gen, batch, spec.ffn_dim, dtype=dtype), _randn(gen, batch, spec.ffn_dim, dtype=dtype)
    assert_close(add(a, b, out=nan_full(batch, spec.ffn_dim, dtype=dtype)), ref.add(a, b), dtype, "add")
    assert_close(silu_mul(a, b, out=nan_full(batch, spec.ffn_dim, dtype=dtype)), ref.silu_mul(a, b), dtype, "silu_mul")
    # RoPE + KV append at the real head layout.
    h, kvh, hd, s_max = spec.n_heads, spec.n_kv_heads, spec.head_dim, 4096
    qkv = _randn(gen, batch, spec.qkv_dim, dtype=dtype)
    positions = torch.randint(0, s_max, (batch,), generator=gen, device="cuda")
    cos, sin = rope_tables(hd, s_max, spec.rope_theta, device="cuda")
    kc, vc = _randn(gen, batch, kvh, s_max, hd, dtype=dtype), _randn(gen, batch, kvh, s_max, hd, dtype=dtype)
    kc_ref, vc_ref = kc.clone(), vc.clone()
    q = rope_kv_append(qkv, positions, cos, sin, kc, vc, h, kvh, hd, out=nan_full(batch, h, hd, dtype=dtype))
    assert_close(q, ref.rope_kv_append(qkv, positions, cos, sin, kc_ref, vc_ref, h, kvh, hd), dtype, "q")
    assert_close(kc, kc_ref, dtype, "k_cache")
    assert torch.equal(vc, vc_ref)


@pytest.mark.parametrize("ctx", [1, 1000, 32768], ids=lambda c: f"ctx{c}")
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("batch", [1, 4], ids=lambda b: f"B{b}")
@pytest.mark.parametrize("n_splits", [None, 1], ids=["split-auto", "split1"])
def test_decode_attention_real_shapes(n_splits, batch, model, ctx):
    spec = named_spec(model)
    dtype = torch.bfloat16
    h, kvh, hd = spec.n_heads, spec.n_kv_heads, spec.head_dim
    gen = _gen("attn", model, batch, ctx)
    q = _randn(gen, batch, h, hd, dtype=dtype)
    kc, vc = _randn(gen, batch, kvh, ctx, hd, dtype=dtype, scale=2.0), _randn(gen, batch, kvh, ctx, hd, dtype=dtype)
    seq_lens = torch.tensor([ctx - 37 * b if ctx - 37 * b > 0 else ctx for b in range(batch)], dtype=torch.int32,
                            device="cuda")
    out = decode_attention(q, kc, vc, seq_lens, hd ** -0.5, n_splits, out=nan_full(batch, h * hd, dtype=dtype))
    assert_close(out, ref.decode_attention(q, kc, vc, seq_lens, hd ** -0.5), dtype, "attention")
