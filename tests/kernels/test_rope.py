"""RoPE + KV-cache append kernel vs the reference: roped q, roped k and raw v at each sequence's position,
every other cache entry untouched."""
import pytest
import torch

from kernel_checks import DEVICE, DTYPE_IDS, assert_close, generator, nan_full, randn, INTERPRETER_WARNINGS
from kernels import reference as ref
from kernels.model import rope_tables
from kernels.rope import rope_kv_append

pytestmark = INTERPRETER_WARNINGS

HEADS = [(4, 2, 32), (4, 1, 64), (2, 2, 128)]  # (H, KVH, hd)


@pytest.mark.parametrize("dtype", list(DTYPE_IDS), ids=list(DTYPE_IDS.values()))
@pytest.mark.parametrize("batch", [1, 3], ids=lambda b: f"B{b}")
@pytest.mark.parametrize("heads", HEADS, ids=lambda h: "H{}-KVH{}-hd{}".format(*h))
def test_rope_kv_append(dtype, batch, heads):
    n_heads, n_kv, hd = heads
    s_max = 50
    gen = generator(batch * hd + n_heads)
    qkv = randn(batch, (n_heads + 2 * n_kv) * hd, dtype=dtype, gen=gen)
    positions = torch.randperm(s_max, generator=gen)[:batch].to(DEVICE)  # each sequence its own position
    positions[0] = s_max - 1
    cos, sin = rope_tables(hd, s_max, 10000.0, device=DEVICE)
    k_cache = randn(batch, n_kv, s_max, hd, dtype=dtype, gen=gen)
    v_cache = randn(batch, n_kv, s_max, hd, dtype=dtype, gen=gen)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    q = rope_kv_append(qkv, positions, cos, sin, k_cache, v_cache, n_heads, n_kv, hd,
                       out=nan_full(batch, n_heads, hd, dtype=dtype))
    q_ref = ref.rope_kv_append(qkv, positions, cos, sin, k_ref, v_ref, n_heads, n_kv, hd)
    assert_close(q, q_ref, dtype, "q")
    assert_close(k_cache, k_ref, dtype, "k_cache")
    torch.testing.assert_close(v_cache, v_ref, rtol=0, atol=0)  # v is copied, not computed


def test_rope_position_zero_is_identity():
    gen = generator(1)
    qkv = randn(1, 4 * 32, gen=gen)
    cos, sin = rope_tables(32, 4, 500000.0, device=DEVICE)
    k_cache, v_cache = randn(1, 1, 4, 32, gen=gen), randn(1, 1, 4, 32, gen=gen)
    q = rope_kv_append(qkv, torch.zeros(1, dtype=torch.int64, device=DEVICE), cos, sin, k_cache, v_cache, 2, 1, 32)
    torch.testing.assert_close(q.reshape(1, -1), qkv[:, :64])
    torch.testing.assert_close(k_cache[0, 0, 0], qkv[0, 64:96])
