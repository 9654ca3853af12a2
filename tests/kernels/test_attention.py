"""Flash-decoding attention (partial + reduce kernels) vs the exact softmax reference: grouped-query heads,
ragged per-sequence lengths, several splits, cache entries past each length poisoned with NaN."""
import pytest
import torch

from kernel_checks import DEVICE, DTYPE_IDS, assert_close, generator, nan_full, randn, INTERPRETER_WARNINGS
from kernels import reference as ref
from kernels.attention import decode_attention, pick_n_splits

pytestmark = INTERPRETER_WARNINGS

S_MAX = 320


def _run(dtype, seq_lens, n_heads, n_kv, hd, n_splits, seed, block_n=64):
    batch = len(seq_lens)
    gen = generator(seed)
    q = randn(batch, n_heads, hd, dtype=dtype, gen=gen)
    k_cache = randn(batch, n_kv, S_MAX, hd, dtype=dtype, gen=gen, scale=2.0)
    v_cache = randn(batch, n_kv, S_MAX, hd, dtype=dtype, gen=gen)
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)
    for b, length in enumerate(seq_lens):  # keys past the end must never be read
        k_cache[b, :, length:] = float("nan")
        v_cache[b, :, length:] = float("nan")
    scale = hd ** -0.5
    out = decode_attention(q, k_cache, v_cache, lens, scale, n_splits,
                           out=nan_full(batch, n_heads * hd, dtype=dtype), block_n=block_n)
    assert_close(out, ref.decode_attention(q, k_cache, v_cache, lens, scale), dtype,
                 f"attention splits={n_splits}")


@pytest.mark.parametrize("dtype", list(DTYPE_IDS), ids=list(DTYPE_IDS.values()))
@pytest.mark.parametrize("seq_lens", [[300], [1, 77, 300]], ids=["B1-L300", "B3-L1,77,300"])
@pytest.mark.parametrize("n_splits", [1, 3, None], ids=["split1", "split3", "split-auto"])
def test_decode_attention_splits(dtype, seq_lens, n_splits):
    _run(dtype, seq_lens, 8, 2, 64, n_splits, seed=sum(seq_lens) + (n_splits or 0))


@pytest.mark.parametrize("heads", [(4, 2, 32), (4, 4, 64), (8, 1, 128), (6, 2, 64)],
                         ids=lambda h: "H{}-KVH{}-hd{}".format(*h))  # (6, 2): group of 3, padded
@pytest.mark.parametrize("batch", [1, 3], ids=lambda b: f"B{b}")
def test_decode_attention_heads(heads, batch):
    n_heads, n_kv, hd = heads
    seq_lens = [130, 5, 257][:batch]
    _run(torch.bfloat16, seq_lens, n_heads, n_kv, hd, 2, seed=hd + n_heads + batch, block_n=32)


def test_more_splits_than_blocks():
    """Splits past a sequence's end are empty and must not disturb the result."""
    _run(torch.float16, [40, 3], 4, 2, 32, 8, seed=3)


def test_pick_n_splits_bounds():
    assert pick_n_splits(16, 8, 100, torch.device("cpu")) == 1  # short context: one split
    assert 1 <= pick_n_splits(1, 8, 32768, torch.device("cpu")) <= 64
