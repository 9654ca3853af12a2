"""Embedding lookup kernel vs the reference."""
import pytest
import torch

from kernel_checks import DEVICE, DTYPE_IDS, generator, nan_full, randn, INTERPRETER_WARNINGS
from kernels import reference as ref
from kernels.embedding import embedding

pytestmark = INTERPRETER_WARNINGS


@pytest.mark.parametrize("dtype", list(DTYPE_IDS), ids=list(DTYPE_IDS.values()))
@pytest.mark.parametrize("tok_dtype", [torch.int32, torch.int64], ids=["i32", "i64"])
@pytest.mark.parametrize("batch,dim", [(1, 96), (3, 256), (3, 1100)], ids=lambda v: str(v))  # 1100: 2 ragged blocks
def test_embedding(dtype, tok_dtype, batch, dim):
    vocab = 1000
    gen = generator(batch * dim)
    table = randn(vocab, dim, dtype=dtype, gen=gen)
    tokens = torch.randint(0, vocab, (batch,), generator=gen).to(dtype=tok_dtype, device=DEVICE)
    tokens[0] = vocab - 1  # the last row too
    out = embedding(tokens, table, out=nan_full(batch, dim, dtype=dtype))
    torch.testing.assert_close(out, ref.embedding(tokens, table), rtol=0, atol=0)  # a copy: exact


@pytest.mark.parametrize("tok_dtype", [torch.int32, torch.int64], ids=["i32", "i64"])
def test_embedding_reads_strided_tokens(tok_dtype):
    """A column of a [B, T] prompt is a strided view: the kernel must step by the tokens' stride, not by 1
    (reading tokens[b] at offset b would pick 9 here instead of 5)."""
    vocab, dim = 16, 96
    table = randn(vocab, dim, gen=generator(11))
    prompt = torch.tensor([[3, 9], [5, 1]], dtype=tok_dtype, device=DEVICE)
    tokens = prompt[:, 0]
    assert tokens.stride(0) == 2 and not tokens.is_contiguous()
    out = embedding(tokens, table, out=nan_full(2, dim, dtype=torch.float32))  # NaN: an unwritten element fails
    torch.testing.assert_close(out, table[[3, 5]], rtol=0, atol=0)
    torch.testing.assert_close(out, ref.embedding(tokens.contiguous(), table), rtol=0, atol=0)


def test_embedding_refuses_a_strided_out():
    table = randn(8, 32, gen=generator(12))
    tokens = torch.tensor([1, 2], device=DEVICE)
    with pytest.raises(ValueError, match="row-major out"):
        embedding(tokens, table, out=torch.empty(32, 2, device=DEVICE).t())
