"""Fused final RMSNorm + LM head + greedy argmax vs the reference, including exact ties."""
import pytest
import torch

from kernels.quant import quantize_linear
from kernel_checks import (QUANTS, assert_close, gemv_terms, generator, make_linear, nan_full, randn,
                           INTERPRETER_WARNINGS)
from kernels import reference as ref
from kernels.lm_head import lm_head_argmax

pytestmark = INTERPRETER_WARNINGS

VOCAB = 1000


@pytest.mark.parametrize("quant", [q for q in QUANTS if not q[3] or 128 % q[3] == 0], ids=lambda q: q[0])
@pytest.mark.parametrize("batch", [1, 3], ids=lambda b: f"B{b}")
def test_lm_head_argmax(quant, batch):
    qid, mode, dtype, group = quant
    dim = 128
    gen = generator(batch + len(qid))
    w = make_linear(VOCAB, dim, mode, dtype, group, gen)
    x = randn(batch, dim, dtype=dtype, gen=gen, scale=4.0)
    norm_w = randn(dim, dtype=dtype, gen=gen)
    logits, tokens = lm_head_argmax(x, w, norm_w, 1e-5, out=nan_full(batch, VOCAB, dtype=torch.float32))
    logits_ref, tokens_ref = ref.lm_head_argmax(x, w, norm_w, 1e-5)
    assert logits.dtype == torch.float32 and tokens.dtype == torch.int64
    assert_close(logits, logits_ref, dtype, f"logits {qid}", terms=gemv_terms(x, w, None, norm_w), k=dim)
    # The kernel's argmax is exact on its own logits; the reference's may differ only on near-ties.
    torch.testing.assert_close(tokens, logits.argmax(dim=-1), rtol=0, atol=0)
    agree = (tokens == tokens_ref) | ((logits_ref.gather(1, tokens[:, None]) -
                                       logits_ref.max(dim=1, keepdim=True).values).abs().squeeze(1) < 1e-2)
    assert agree.all()


@pytest.mark.parametrize("batch", [1, 3], ids=lambda b: f"B{b}")
def test_lm_head_ties_go_to_lowest_index(batch):
    """Identical weight rows give bit-identical logits; the lowest index must win, as in torch.argmax."""
    dim, dtype = 64, torch.float16
    gen = generator(9)
    w_dense = randn(VOCAB, dim, dtype=dtype, gen=gen, scale=0.05)
    x = randn(batch, dim, dtype=dtype, gen=gen).abs()
    winner = torch.sign(x[0].float()).to(dtype) * 0.5  # aligned with x: the largest logit for every row
    for row in (997, 300, 301, 17 * 8 + 5):  # several tiles, and neighbours within one tile
        w_dense[row] = winner
    w = quantize_linear(w_dense, "fp16")
    norm_w = torch.ones(dim, dtype=dtype, device=x.device)
    logits, tokens = lm_head_argmax(x, w, norm_w, 1e-5)
    assert tokens.tolist() == [17 * 8 + 5] * batch
    assert tokens.tolist() == logits.argmax(dim=-1).tolist()
