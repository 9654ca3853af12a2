"""Residual add and silu(gate) * up kernels vs the reference."""
import pytest

from kernel_checks import DTYPE_IDS, assert_close, generator, nan_full, randn, INTERPRETER_WARNINGS
from kernels import reference as ref
from kernels.elementwise import add, silu_mul

pytestmark = INTERPRETER_WARNINGS

OPS = {"add": (add, ref.add), "silu_mul": (silu_mul, ref.silu_mul)}


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("dtype", list(DTYPE_IDS), ids=list(DTYPE_IDS.values()))
@pytest.mark.parametrize("shape", [(1, 75), (3, 200), (3, 1100)], ids=lambda s: "x".join(map(str, s)))
def test_elementwise(op, dtype, shape):
    kernel, oracle = OPS[op]
    gen = generator(shape[0] * shape[1])
    a = randn(*shape, dtype=dtype, gen=gen, scale=3.0)
    b = randn(*shape, dtype=dtype, gen=gen)
    out = kernel(a, b, out=nan_full(*shape, dtype=dtype))
    assert_close(out, oracle(a, b), dtype, op)
