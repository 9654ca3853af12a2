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
