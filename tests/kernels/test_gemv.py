"""GEMV kernels (plain, fused RMSNorm prologue, residual epilogue, gate/up + SiLU) vs the fp32 reference,
for every weight layout, at batches that take each inner product (kernels/tiles.py: FMA below batch 4, tensor
cores from 4 for dense / int8 and from 16 for int4), ragged N and K."""
import dataclasses

import pytest
import torch

from kernel_checks import (QUANTS, assert_close, gemv_terms, generator, make_linear, nan_full, randn,
                           silu_mul_terms, INTERPRETER_WARNINGS)
from kernels import reference as ref
from kernels.gemv import gemv, gemv_silu_mul, pick_config
from kernels.quant import Kind, QLinear

pytestmark = INTERPRETER_WARNINGS

QUANT_IDS = [q[0] for q in QUANTS]
# (N, K): N not a multiple of any block; K = 96 leaves a ragged K step (dense/int8) or group step (int4 g32).
SHAPES = [(75, 96), (200, 256)]
# Batches: 1 and 3 on the FMA tile, 5 on tensor cores for dense / int8 (FMA for int4), 16 on tensor cores for all.
BATCHES = [1, 3, 5, 16]


def _config(x, w, group_size: int):
    """The launcher's own choice with a block_k small enough for several K steps at these tiny K (int4: two
    groups per step)."""
    return pick_config(x, w, block_k=2 * group_size if group_size else 64)


def _expect_dot(w, batch: int, dtype) -> bool:
    if dtype == torch.float32:
        return False
    if w.kind == Kind.INT4:
        return batch >= 16 and w.group_size >= 32 and w.group_size & (w.group_size - 1) == 0
    return batch >= 4


def _cases(shapes):
    """(quant, N, K) for every quant and every shape whose K its group size divides."""
    return [pytest.param(q, n, k, id=f"{q[0]}-N{n}-K{k}") for q in QUANTS for n, k in shapes
            if not q[3] or k % q[3] == 0]


@pytest.mark.parametrize("quant,n,k", _cases(SHAPES))
@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"B{b}")
@pytest.mark.parametrize("fusion", ["plain", "norm+residual"])
def test_gemv(quant, n, k, batch, fusion):
    qid, mode, dtype, group = quant
    gen = generator(n * k + batch)
    w = make_linear(n, k, mode, dtype, group, gen)
    x = randn(batch, k, dtype=dtype, gen=gen, scale=2.0)
    residual = randn(batch, n, dtype=dtype, gen=gen) if fusion != "plain" else None
    norm_w = randn(k, dtype=dtype, gen=gen) if fusion != "plain" else None
    cfg = _config(x, w, group)
    assert cfg.use_dot == _expect_dot(w, batch, dtype), f"the tile rule's inner product at batch {batch}"
    y = gemv(x, w, residual=residual, norm_weight=norm_w, eps=1e-5, out=nan_full(batch, n, dtype=dtype), config=cfg)
    assert y.dtype == dtype
    assert_close(y, ref.gemv(x, w, residual, norm_w, 1e-5), dtype, f"gemv {qid} {fusion} B{batch}",
                 terms=gemv_terms(x, w, residual, norm_w), k=k, dot=cfg.use_dot)


@pytest.mark.parametrize("quant,n,k", [q for q in _cases(SHAPES) if "int4" not in q.id])
@pytest.mark.parametrize("batch", [1, 3], ids=lambda b: f"B{b}")
def test_gemv_k_fold(quant, n, k, batch):
    """Two neighbouring input columns folded into one FMA accumulator (fold_mac): same result, plain and gate/up,
    with a ragged last K step."""
    qid, mode, dtype, group = quant
    gen = generator(n * k + batch + 22)
    w, w_up = make_linear(n, k, mode, dtype, group, gen), make_linear(n, k, mode, dtype, group, gen)
    x = randn(batch, k, dtype=dtype, gen=gen, scale=2.0)
    residual, norm_w = randn(batch, n, dtype=dtype, gen=gen), randn(k, dtype=dtype, gen=gen)
    cfg = pick_config(x, w, block_k=64, k_fold=2)
    assert cfg.k_fold == 2 and not cfg.use_dot
    y = gemv(x, w, residual=residual, norm_weight=norm_w, eps=1e-5, out=nan_full(batch, n, dtype=dtype), config=cfg)
    assert_close(y, ref.gemv(x, w, residual, norm_w, 1e-5), dtype, f"gemv k_fold=2 {qid}",
                 terms=gemv_terms(x, w, residual, norm_w), k=k, dot=False)
    y = gemv_silu_mul(x, w, w_up, norm_weight=norm_w, out=nan_full(batch, n, dtype=dtype),
                      config=pick_config(x, w, k_fold=2))
    assert_close(y, ref.gemv_silu_mul(x, w, w_up, norm_w, 1e-5), dtype, f"gemv_silu_mul k_fold=2 {qid}",
                 terms=silu_mul_terms(x, w, w_up, norm_w), k=k, dot=False)


def test_pick_config_k_fold_widens_the_fma_step_only():
    x1, x16 = torch.zeros(1, 4096, dtype=torch.bfloat16), torch.zeros(16, 4096, dtype=torch.bfloat16)
    w = make_linear(64, 4096, "bf16", torch.bfloat16, 0, generator(0))
    one, two = pick_config(x1, w), pick_config(x1, w, k_fold=2)
    assert (two.block_k, two.k_fold) == (2 * one.block_k, 2)
    assert pick_config(x16, w, k_fold=2).k_fold == 1  # the tensor-core tile has no FMA accumulators
    with pytest.raises(ValueError, match="k_fold=3"):
        pick_config(x1, w, k_fold=3)


@pytest.mark.parametrize("quant,n,k", _cases([(75, 256)]))
@pytest.mark.parametrize("fusion", ["norm", "residual"])
def test_gemv_default_config(quant, n, k, fusion):
    """The launcher's own block sizes, one fusion at a time."""
    qid, mode, dtype, group = quant
    gen = generator(7 * n + k)
    w = make_linear(n, k, mode, dtype, group, gen)
    x = randn(2, k, dtype=dtype, gen=gen)
    residual = randn(2, n, dtype=dtype, gen=gen) if fusion == "residual" else None
    norm_w = randn(k, dtype=dtype, gen=gen) if fusion == "norm" else None
    y = gemv(x, w, residual=residual, norm_weight=norm_w, out=nan_full(2, n, dtype=dtype))
    assert_close(y, ref.gemv(x, w, residual, norm_w, 1e-5), dtype, f"gemv {qid} {fusion}",
                 terms=gemv_terms(x, w, residual, norm_w), k=k)


def test_gemv_fused_norm_equals_norm_then_gemv():
    """gemv(h, w, norm_weight=g) == rmsnorm(h, g) @ W.T (the prologue is the norm, not an approximation)."""
    gen = generator(11)
    dtype = torch.float32
    w = make_linear(75, 96, "fp16", dtype, 0, gen)
    h, g = randn(3, 96, dtype=dtype, gen=gen, scale=5.0), randn(96, dtype=dtype, gen=gen)
    assert_close(gemv(h, w, norm_weight=g), gemv(ref.rmsnorm(h, g, 1e-5), w), dtype, "fused vs unfused",
                 terms=gemv_terms(h, w, None, g), k=96, dot=False)


@pytest.mark.parametrize("quant", [q for q in QUANTS if q[0] in ("dense-fp32", "dense-bf16", "int4g32-bf16")],
                         ids=lambda q: q[0])
@pytest.mark.parametrize("batch", [1, 16], ids=lambda b: f"B{b}")
def test_gemv_fused_norm_eps(quant, batch):
    """x so small that eps is about mean(x^2): a dropped or misplaced eps moves the output by tens of percent
    (at the other tests' scale it would hide in fp32 noise)."""
    qid, mode, dtype, group = quant
    n, k = 75, 128
    gen = generator(k + batch)
    w = make_linear(n, k, mode, dtype, group, gen)
    x, norm_w = randn(batch, k, dtype=dtype, gen=gen, scale=3e-3), randn(k, dtype=dtype, gen=gen)
    cfg = _config(x, w, group)
    y = gemv(x, w, norm_weight=norm_w, eps=1e-5, out=nan_full(batch, n, dtype=dtype), config=cfg)
    assert_close(y, ref.gemv(x, w, None, norm_w, 1e-5), dtype, f"gemv {qid} norm eps B{batch}",
                 terms=gemv_terms(x, w, None, norm_w, 1e-5), k=k, dot=cfg.use_dot)


@pytest.mark.parametrize("quant,n,k", _cases([(75, 128)]))
@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"B{b}")
def test_gemv_silu_mul(quant, n, k, batch):
    qid, mode, dtype, group = quant
    gen = generator(3 * n + k + batch)
    w_gate = make_linear(n, k, mode, dtype, group, gen)
    w_up = make_linear(n, k, mode, dtype, group, gen)
    x = randn(batch, k, dtype=dtype, gen=gen)
    norm_w = randn(k, dtype=dtype, gen=gen)
    cfg = _config(x, w_gate, group)
    y = gemv_silu_mul(x, w_gate, w_up, norm_weight=norm_w, out=nan_full(batch, n, dtype=dtype), config=cfg)
    assert_close(y, ref.gemv_silu_mul(x, w_gate, w_up, norm_w, 1e-5), dtype, f"gemv_silu_mul {qid}",
                 terms=silu_mul_terms(x, w_gate, w_up, norm_w), k=k, dot=cfg.use_dot)


def test_pick_config_int4_steps_whole_groups():
    gen = generator(5)
    w = make_linear(64, 768, "int4", torch.float16, 128, gen)
    cfg = pick_config(randn(1, 768, dtype=torch.float16, gen=gen), w, block_k=512)
    assert cfg.groups_per_step == 4 and cfg.block_k == 4 * 128  # 4 whole groups of 128 columns


def test_gemv_rejects_wrong_input_width():
    gen = generator(6)
    w = make_linear(8, 64, "fp16", torch.float16, 0, gen)
    with pytest.raises(ValueError, match=r"x must be \[B, 64\]"):
        gemv(randn(1, 32, dtype=torch.float16, gen=gen), w)


@pytest.mark.parametrize("group", [6, 16, 48], ids=lambda g: f"g{g}")  # 6, 48: padded groups; 16: tiny groups
@pytest.mark.parametrize("batch", [1, 3, 16], ids=lambda b: f"B{b}")
def test_gemv_int4_small_or_odd_groups(group, batch):
    """Groups that are no power of two >= 32 run on the FMA path at every batch."""
    gen = generator(group + batch)
    n, k, dtype = 75, 96, torch.float16
    w = make_linear(n, k, "int4", dtype, group, gen)
    x = randn(batch, k, dtype=dtype, gen=gen)
    norm_w = randn(k, dtype=dtype, gen=gen)
    cfg = pick_config(x, w, block_k=2 * group)
    assert not cfg.use_dot
    y = gemv(x, w, norm_weight=norm_w, out=nan_full(batch, n, dtype=dtype), config=cfg)
    assert_close(y, ref.gemv(x, w, None, norm_w, 1e-5), dtype, f"gemv int4 g{group}",
                 terms=gemv_terms(x, w, None, norm_w), k=k, dot=False)


# ---------------------------------------------------------------- the tolerance itself
# assert_close must see a wrong result, not only a NaN: a 1% scale error and a dropped int4 group, planted in the
# weights the kernel reads (the reference keeps the right ones), fail it for every layout and dtype.

def _planted(w: QLinear, fault: str) -> QLinear:
    if fault == "dropped-group":  # group 1 of every row contributes only its zero point
        scale = w.scale.clone()
        scale[:, 1] = 0.0
        return dataclasses.replace(w, scale=scale)
    if w.kind == Kind.DENSE:  # no scale: the weights themselves 1% larger
        return dataclasses.replace(w, weight=(w.weight.float() * 1.01).to(w.weight.dtype))
    return dataclasses.replace(w, scale=(w.scale.float() * 1.01).to(w.scale.dtype))


FAULTS = [pytest.param(q, "scale+1%", id=f"{q[0]}-scale+1%") for q in QUANTS] + \
    [pytest.param(q, "dropped-group", id=f"{q[0]}-dropped-group") for q in QUANTS if q[3]]


@pytest.mark.parametrize("quant,fault", FAULTS)
def test_assert_close_catches_planted_errors(quant, fault):
    """On the FMA path (batch 3: fp32 products on the GPU too) the bound is the output's rounding plus fp32 noise,
    so 1% of a dot product stands out; the unmodified weights pass the same check."""
    qid, mode, dtype, group = quant
    n, k, batch = 75, 256, 3
    gen = generator(31 + len(qid))
    w = make_linear(n, k, mode, dtype, group, gen)
    x = randn(batch, k, dtype=dtype, gen=gen, scale=2.0)
    cfg = _config(x, w, group)
    assert not cfg.use_dot
    expected, terms = ref.gemv(x, w), gemv_terms(x, w)
    assert_close(gemv(x, w, config=cfg), expected, dtype, f"{qid} intact", terms=terms, k=k, dot=False)
    y = gemv(x, _planted(w, fault), config=cfg)
    with pytest.raises(AssertionError, match="exceed the rounding bound"):
        assert_close(y, expected, dtype, f"{qid} {fault}", terms=terms, k=k, dot=False)
