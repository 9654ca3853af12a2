"""Every GPU dequantisation path, exhaustively: each weight value (the 256 int8 bytes, the 16 int4 nibbles) in every
column of a 256 x 4096 weight, hence in every byte / nibble position of whatever word a kernel loads, read back
through the kernel itself and compared with the PyTorch dequantiser (kernels/quant.py), exactly.

How a kernel is made to return its weights: x is a batch of one-hot rows, x[b] = e_(k0 + b), so y[b, n] =
W[n, k0 + b]; K / batch calls cover K. The scales (16 + n % 16) / 1024 and zeros (g + 1) s / 2 are dyadic with few
bits, so every kernel's fp32 arithmetic on them is exact (whatever the order of its fold) and its output rounds
exactly as the reference's fp32 value does: a wrong mask, magic constant, byte selector or nibble order, and a wrong
row, group, chunk slot, loop step or ring slot, changes some output. K = 4096 gives every warp of a 4-warp program
several groups: the plain kernel prefetches, the chunked kernels run two or more iterations with every chunk slot
full, and the TMA ring (2 slots) is refilled. The paths: the Triton GEMV's FMA tile (batch 2) and its tensor-core
tile (kernels.gemv without fragments at batch 16), and the Gluon tensor-core GEMV (kernels.qgemv) as its plain,
chunked (2 and 4 groups) and TMA-ring variants at batch 8 and 16 (one and two n-tiles of 8 batch rows), for bf16 and
fp16 activations. The CPU counterpart, over the same byte values, is the PTX interpreter (tests/kernels/test_ptx.py)."""
import pytest
import torch

from kernels.quant import Kind, QLinear, unpack_int4
from kernels.tiles import uses_tensor_cores

N, K = 256, 4096
# path -> the one-hot batches it is read back with
PATHS = {"fma": (2,), "dot": (16,), "plain": (8, 16), "chunk2": (8, 16), "chunk4": (8, 16), "tma": (8, 16)}


def _scales(n_groups: int, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    s = ((16 + torch.arange(N) % 16) / 1024.0)[:, None].expand(N, n_groups)
    z = s * (torch.arange(n_groups) + 1)[None, :] / 2
    return s.to(dtype).contiguous(), z.to(dtype).contiguous()


def exhaustive_weight(mode: str, group: int, dtype) -> QLinear:
    """W [256, 4096]: q[n, k] = (n + k) mod 256 (int8: minus 128) or mod 16 (int4), so every value is in every
    column and every row; per-row (int8) or per-group (int4) dyadic scales and zeros."""
    idx = torch.arange(N)[:, None] + torch.arange(K)[None, :]
    if mode == "int8":
        q = (idx % 256 - 128).to(torch.int8)
        return QLinear(Kind.INT8, q.cuda(), N, K, scale=_scales(1, dtype)[0][:, 0].contiguous().cuda())
    q = (idx % 16).to(torch.uint8)
    packed = (q[:, 0::2] | (q[:, 1::2] << 4)).contiguous()
    assert torch.equal(unpack_int4(packed), q)
    s, z = _scales(K // group, dtype)
    return QLinear(Kind.INT4, packed.cuda(), N, K, scale=s.cuda(), zero=z.cuda(), group_size=group)


def read_back(w: QLinear, path: str, batch: int, dtype) -> torch.Tensor:
    """W as the kernel of `path` sees it: [N, K] in dtype, one column per batch row of K / batch one-hot calls."""
    from kernels.gemv import gemv
    from kernels.qgemv import qgemv

    if path in ("fma", "dot"):
        w.frag = None
        assert uses_tensor_cores(w.kind, w.group_size, batch) == (path == "dot"), (path, batch)
    cols = []
    for k0 in range(0, K, batch):
        x = torch.zeros(batch, K, dtype=dtype, device="cuda")
        x[torch.arange(batch), k0 + torch.arange(batch)] = 1
        out = torch.full((batch, N), float("nan"), dtype=dtype, device="cuda")
        if path in ("fma", "dot"):
            y = gemv(x, w, out=out)
        elif path == "tma":
            y = qgemv(x, w, out=out, warps=4, tma=True, stages=2)
        else:
            y = qgemv(x, w, out=out, warps=4, chunk={"plain": 0, "chunk2": 2, "chunk4": 4}[path])
        cols.append(y.T)
    return torch.cat(cols, dim=1)


@pytest.mark.gpu
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("mode,group", [("int8", 0), ("int4", 128), ("int4", 64)],
                         ids=["int8", "int4-g128", "int4-g64"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_every_weight_value_in_every_position_dequantises_exactly(path, mode, group, dtype):
    if path == "tma" and torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("the TMA ring needs Hopper (sm_90)")
    w = exhaustive_weight(mode, group, dtype)
    expect = w.dequantize(torch.float32).to(dtype)
    for batch in PATHS[path]:
        got = read_back(w, path, batch, dtype)
        what = f"{path} B{batch} {mode} g{group} {dtype}"
        assert not torch.isnan(got).any(), f"{what}: unwritten outputs"
        bad = got != expect
        if bad.any():
            n, k = (int(i) for i in bad.nonzero()[0])
            pytest.fail(f"{what}: {int(bad.sum())} of {N * K} weights differ; first W[{n}, {k}] = {got[n, k].item()}"
                        f" where the dequantiser gives {expect[n, k].item()}")


def test_the_exhaustive_weight_holds_every_value_in_every_column():
    """The premise, on the CPU: each column holds each int8 byte once and each int4 nibble 16 times, and the
    tensor-core fold's fp32 arithmetic (s (128 + q) + (z - 136 s); bf16 operands are 128 + q = q - 8 + 136) gives
    the dequantiser's fp32 value exactly, so kernel and reference round the same number."""
    idx = torch.arange(N)[:, None] + torch.arange(K)[None, :]
    for k in range(K):
        assert torch.equal(torch.bincount(idx[:, k] % 256, minlength=256), torch.ones(256, dtype=torch.long))
        assert torch.equal(torch.bincount(idx[:, k] % 16, minlength=16), torch.full((16,), 16))
    # every warp of a 4-warp program walks several groups (the loops, prefetches and chunk slots are exercised)
    assert K // 128 // 4 >= 2 * 4 and K // 64 // 4 >= 2 * 4
    for dtype in (torch.bfloat16, torch.float16):
        for group in (64, 128):
            s, z = (t.float()[..., None] for t in _scales(K // group, dtype))
            q = (idx % 16).float().reshape(N, K // group, group)
            fold = torch.addcmul(z - 136 * s, s, q + 128)  # one rounding per step, as an FMA chain would
            assert torch.equal(fold, (q - 8) * s + z), (dtype, group)
