"""RMSNorm kernel vs the fp32 reference."""
import pytest
import torch

from kernel_checks import DTYPE_IDS, assert_close, generator, nan_full, randn, INTERPRETER_WARNINGS
from kernels import reference as ref
from kernels.norm import rmsnorm

pytestmark = INTERPRETER_WARNINGS


@pytest.mark.parametrize("dtype", list(DTYPE_IDS), ids=list(DTYPE_IDS.values()))
@pytest.mark.parametrize("batch", [1, 3], ids=lambda b: f"B{b}")
@pytest.mark.parametrize("dim", [64, 96, 256, 2500], ids=lambda d: f"D{d}")  # 2500: several ragged steps
def test_rmsnorm(dtype, batch, dim):
    gen = generator(dim * 10 + batch)
    x = randn(batch, dim, dtype=dtype, gen=gen, scale=3.0)
    w = randn(dim, dtype=dtype, gen=gen)
    y = rmsnorm(x, w, 1e-5, out=nan_full(batch, dim, dtype=dtype))
    assert y.dtype == dtype
    assert_close(y, ref.rmsnorm(x, w, 1e-5), dtype, "rmsnorm")


def test_rmsnorm_rejects_bad_weight():
    gen = generator(0)
    with pytest.raises(ValueError, match="weight"):
        rmsnorm(randn(2, 64, gen=gen), randn(32, gen=gen), 1e-5)
