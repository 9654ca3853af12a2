"""The tensor-core quantized GEMV (kernels/qgemv.py, Gluon) and its weight format (kernels/fragments.py).

CPU: the packers round-trip, and the kernels' register recipe (nibble / byte -> 16-bit float magic, the permuted
K order, the group fold), run through an emulator of mma.sync.m16n8k16's fragment semantics, equals W @ x.
GPU: the kernel against the fp32 reference at odd and real shapes, batch 1..16 (one and two n-tiles of 8 batch
rows), NaN-poisoned outputs, strided x, residual, fp16 and bf16 activations; kernels.gemv routes a weight with
fragments to it."""
import pytest
import torch

from kernels import reference as ref
from kernels.fragments import (b_operand_columns, int4_from_fragments, int4_to_fragments, int8_from_fragments,
                               int8_to_fragments, mma_m16n8k16)
from kernels.quant import quantize_linear, unpack_int4
from tests.ptx_emu import halves_to_float

SHAPES = [(16, 64), (48, 128), (75, 96), (200, 320)]


@pytest.mark.parametrize("n,k", SHAPES, ids=lambda v: str(v))
def test_fragment_packers_round_trip(n, k):
    gen = torch.Generator().manual_seed(n * k)
    q4 = torch.randint(0, 16, (n, k), generator=gen).to(torch.uint8)
    f4 = int4_to_fragments(q4)
    assert f4.shape == (-(-n // 16), -(-k // 64), 32, 4) and f4.dtype == torch.int32
    assert torch.equal(int4_from_fragments(f4, n, k), q4)
    q8 = torch.randint(-127, 128, (n, k), generator=gen).to(torch.int8)
    f8 = int8_to_fragments(q8)
    assert f8.shape == (-(-n // 16), -(-k // 64), 32, 8) and torch.equal(int8_from_fragments(f8, n, k), q8)
    # the bytes per weight do not grow (Llama shapes need no padding)
    if n % 16 == 0 and k % 64 == 0:
        assert f4.numel() * 4 == n * k // 2 and f8.numel() * 4 == n * k


def _emulate(frag_tile: torch.Tensor, x: torch.Tensor, kind: str, act: torch.dtype) -> torch.Tensor:
    """One 16 x 64 block through the kernel's recipe: per k-tile the A registers from the words (the PTX of
    kernels/qgemv.py: lop3 with the magic for int4, xor + prmt for int8), B from x in the permuted order, D += A B.
    Returns D [32 lanes, 4] (fp32): sum over the block of x (q + OFFSET)."""
    lane = torch.arange(32)
    cols = b_operand_columns()  # [32, 4, 2, 2]
    d = torch.zeros(32, 4)
    for j in range(4):
        if kind == "int4":
            w = frag_tile[:, j].to(torch.int64) & 0xFFFFFFFF
            magic = 0x43004300 if act == torch.bfloat16 else 0x64006400
            regs = [(((w >> (4 * i)) & 0x000F000F) | magic) for i in range(4)]
            a = torch.stack([halves_to_float(r, act) for r in regs], dim=1)  # [32, 4, 2]
        else:
            regs = []
            for word in (frag_tile[:, j], frag_tile[:, 4 + j]):
                u = (word.to(torch.int64) & 0xFFFFFFFF) ^ 0x80808080
                b = [(u >> (8 * i)) & 0xFF for i in range(4)]
                regs += [(0x6400 | b[0]) | ((0x6400 | b[1]) << 16), (0x6400 | b[2]) | ((0x6400 | b[3]) << 16)]
            a = torch.stack([halves_to_float(r, torch.float16) for r in regs], dim=1)
        xb = torch.zeros(8, 64)
        xb[:x.shape[0]] = x.float()
        b = xb[(lane // 4)[:, None, None], cols[:, j]]  # [32, 2, 2]
        d = mma_m16n8k16(a, b, d)
    return d


@pytest.mark.parametrize("kind,act", [("int4", torch.bfloat16), ("int4", torch.float16), ("int8", torch.float16)],
                         ids=lambda v: str(v).replace("torch.", ""))
def test_kernel_recipe_on_the_mma_emulator(kind, act):
    """The register-level recipe of kernels/qgemv.py gives W @ x on one block; a wrong mask, magic, byte selector or
    K order makes it fail."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, 64, generator=gen).to(act)
    if kind == "int4":
        q = torch.randint(0, 16, (16, 64), generator=gen).to(torch.uint8)
        frag, offset = int4_to_fragments(q)[0, 0], 136 if act == torch.bfloat16 else 1032
        want = (q.float() - 8) @ x.float().T  # [16, 3]
    else:
        q = torch.randint(-127, 128, (16, 64), generator=gen).to(torch.int8)
        frag, offset = int8_to_fragments(q)[0, 0], 1152
        want = q.float() @ x.float().T
    d = _emulate(frag, x, kind, act)
    ones = torch.zeros(8)
    ones[:3] = x.float().sum(dim=1)
    lane = torch.arange(32)
    r, c = lane // 4, 2 * (lane % 4)
    rows = torch.stack([r, r, r + 8, r + 8], 1)
    cols = torch.stack([c, c + 1, c, c + 1], 1)
    got = d - offset * ones[cols]  # the kernel's fold: sum x (q + OFFSET) - OFFSET sum x
    expect = torch.zeros(16, 8)
    expect[:, :3] = want
    assert (got - expect[rows, cols]).abs().max() <= 1e-3 * max(1.0, expect.abs().max().item())


# ----------------------------------------------------------------------------------------------
# GPU
# ----------------------------------------------------------------------------------------------
def _close(y: torch.Tensor, expect: torch.Tensor, k: int, what: str) -> None:
    """The output's rounding to its dtype plus fp32 accumulation over k terms."""
    eps = torch.finfo(y.dtype).eps
    tol = eps * expect.abs() + 2e-6 * k ** 0.5 * expect.abs().max()
    bad = (y.float() - expect).abs() > tol + 1e-6
    assert not torch.isnan(y).any(), f"{what}: unwritten (NaN) outputs"
    assert not bad.any(), f"{what}: {int(bad.sum())} elements off, max err {(y.float() - expect).abs().max():.3g}"


@pytest.mark.gpu
@pytest.mark.parametrize("mode,group", [("int4", 128), ("int4", 64), ("int8", 0)])
@pytest.mark.parametrize("n,k", [(16, 64), (75, 192), (200, 320), (6144, 4096), (4096, 14336), (2048, 8192)],
                         ids=lambda v: str(v))
@pytest.mark.parametrize("act", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_qgemv_matches_reference(mode, group, n, k, act):
    from kernels.qgemv import qgemv

    if mode == "int4" and k % group:
        pytest.skip("the group does not divide K")
    gen = torch.Generator(device="cuda").manual_seed(n + k + group)
    w = quantize_linear(torch.randn(n, k, generator=gen, device="cuda").to(act) * k ** -0.5, mode, group or 128)
    for batch in (1, 3, 8, 9, 16):  # one n-tile of 8 batch rows, then two
        xs = torch.randn(batch, k + 8, generator=gen, device="cuda").to(act)[:, 8:]  # strided rows
        res = torch.randn(batch, n, generator=gen, device="cuda").to(act)
        for residual in (None, res):
            for chunk in (None, 0):  # the launcher's choice (chunked at batch <= 8 for these shapes), the plain kernel
                y = qgemv(xs, w, residual, chunk=chunk,
                          out=torch.full((batch, n), float("nan"), dtype=act, device="cuda"))
                _close(y, ref.gemv_fp32(xs, w, residual), k, f"{mode} g{group} {n}x{k} B{batch} chunk {chunk}")


@pytest.mark.gpu
@pytest.mark.parametrize("chunk", [1, 2, 4])
@pytest.mark.parametrize("mode,group", [("int4", 128), ("int4", 64), ("int8", 0)])
@pytest.mark.parametrize("n,k", [(75, 192), (200, 1344), (6144, 4096)], ids=lambda v: str(v))
def test_qgemv_chunk_kernel_matches_reference(chunk, mode, group, n, k):
    """The chunked variant (several groups per loop iteration), including the groups past a warp's share of K and
    past K that a chunk's last iteration must mask."""
    from kernels.qgemv import qgemv

    if mode == "int4" and k % group:
        pytest.skip("the group does not divide K")
    gen = torch.Generator(device="cuda").manual_seed(n + k + group + chunk)
    w = quantize_linear(torch.randn(n, k, generator=gen, device="cuda").bfloat16() * k ** -0.5, mode, group or 128)
    for act in (torch.bfloat16, torch.float16):
        for batch in (1, 9):
            xs = torch.randn(batch, k + 8, generator=gen, device="cuda").to(act)[:, 8:]
            res = torch.randn(batch, n, generator=gen, device="cuda").to(act)
            for warps in (4, 8):
                y = qgemv(xs, w, res, warps=warps, chunk=chunk,
                          out=torch.full((batch, n), float("nan"), dtype=act, device="cuda"))
                _close(y, ref.gemv_fp32(xs, w, res), k, f"{mode} g{group} {n}x{k} B{batch} chunk {chunk} w{warps}")

@pytest.mark.gpu
@pytest.mark.parametrize("mode,group", [("int4", 128), ("int4", 64), ("int8", 0)])
@pytest.mark.parametrize("n,k", [(16, 64), (75, 192), (200, 1344), (6144, 4096), (4096, 14336)], ids=lambda v: str(v))
def test_qgemv_tma_kernel_matches_reference(mode, group, n, k):
    """The TMA-ring variant (Hopper): rows past N and k-steps past K that its copies zero-fill (N not a multiple of
    16, K not a multiple of a stage), one and two n-tiles, both activation dtypes, 2 to 8 warps, ring depths 2 to 8."""
    from kernels.qgemv import qgemv

    if torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("the TMA ring needs Hopper (sm_90)")
    if mode == "int4" and k % group:
        pytest.skip("the group does not divide K")
    gen = torch.Generator(device="cuda").manual_seed(n + k + group + 1)
    w = quantize_linear(torch.randn(n, k, generator=gen, device="cuda").bfloat16() * k ** -0.5, mode, group or 128)
    for act in (torch.bfloat16, torch.float16):
        for batch in (1, 9, 16):
            xs = torch.randn(batch, k + 8, generator=gen, device="cuda").to(act)[:, 8:]
            res = torch.randn(batch, n, generator=gen, device="cuda").to(act)
            for warps, stages in ((4, 8), (8, 2), (2, 4)):
                for residual in (None, res):
                    y = qgemv(xs, w, residual, warps=warps, tma=True, stages=stages,
                              out=torch.full((batch, n), float("nan"), dtype=act, device="cuda"))
                    _close(y, ref.gemv_fp32(xs, w, residual), k,
                           f"{mode} g{group} {n}x{k} B{batch} TMA w{warps} s{stages}")


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["int4", "int8"])
def test_gemv_routes_weights_with_fragments_to_qgemv(mode, monkeypatch):
    """kernels.gemv takes the tensor-core kernel for an int8 / int4 weight whose fragments exist where
    kernels.qgemv.preferred says so (int4 batch 1 and 16, int8 batch 1), the FMA kernel otherwise (no fragments, a
    fused norm, int8 at batch 16); both agree with the reference."""
    import kernels.qgemv as qg
    from kernels.gemv import gemv
    from kernel_checks import assert_close

    calls = []
    real = qg.qgemv
    monkeypatch.setattr(qg, "qgemv", lambda *a, **kw: calls.append(a[0].shape[0]) or real(*a, **kw))
    gen = torch.Generator(device="cuda").manual_seed(7)
    n, k = 1024, 2048
    w = quantize_linear(torch.randn(n, k, generator=gen, device="cuda").bfloat16() * k ** -0.5, mode, 128)
    for batch in (1, 16):
        x = torch.randn(batch, k, generator=gen, device="cuda").bfloat16()
        res = torch.randn(batch, n, generator=gen, device="cuda").bfloat16()
        expect = ref.gemv_fp32(x, w, res)
        assert_close(gemv(x, w, res), ref.gemv(x, w, res), x.dtype, f"{mode} B{batch} without fragments")
        qg.fragments_of(w)
        _close(gemv(x, w, res, out=torch.full((batch, n), float("nan"), dtype=x.dtype, device="cuda")), expect, k,
               f"{mode} B{batch} with fragments")
        norm = torch.ones(k, dtype=x.dtype, device="cuda")
        gemv(x, w, norm_weight=norm)  # a fused norm stays on the FMA kernel
        w.frag = None
    assert calls == ([1, 16] if mode == "int4" else [1]), \
        "the fragment route must take int4 at batch 1 and 16, int8 at batch 1, and leave a fused norm to the FMA kernel"


def test_preferred_routes_int4_to_batch_16_and_int8_to_batch_8():
    """kernels.gemv's route to the tensor cores: every batch qgemv takes for int4; int8 only to INT8_MAX_BATCH rows,
    past which the FMA GEMV measured faster; never a weight or batch qgemv cannot take."""
    from kernels.qgemv import INT8_MAX_BATCH, MAX_BATCH, preferred, supported

    dense = torch.randn(64, 128) * 0.1
    for mode in ("int4", "int8", "bf16"):
        w = quantize_linear(dense, mode, 64) if mode != "bf16" else quantize_linear(dense, "bf16")
        for batch in range(1, MAX_BATCH + 2):
            want = supported(w, batch) is None and (mode == "int4" or batch <= INT8_MAX_BATCH)
            assert preferred(w, batch) == want, (mode, batch)
    assert preferred(quantize_linear(dense, "int8", 64), INT8_MAX_BATCH)
    assert not preferred(quantize_linear(dense, "int8", 64), INT8_MAX_BATCH + 1)


def test_pick_launch_follows_the_measured_table():
    """The launcher's (warps, chunk) by shape class on a 132-SM GPU, as measured at the llama8b shapes (the table
    above kernels.qgemv.pick_launch): wide shapes the plain kernel at 4 warps, short ones chunk 2 (taller than wide)
    or 4 (square), long ones (down) chunk 4 (int4) or 2 at 8 warps (int8); at batch 9-16 no chunk, 8 warps only for
    long shapes."""
    from kernels.qgemv import pick_launch
    from kernels.quant import Kind

    shapes = {"qkv": (6144, 4096), "o": (4096, 4096), "gate": (14336, 4096), "down": (4096, 14336),
              "lm": (128256, 4096), "1b-down": (2048, 8192), "1b-qkv": (3072, 2048)}
    want = {Kind.INT4: {"qkv": (4, 2), "o": (4, 4), "gate": (4, 0), "down": (4, 4), "lm": (4, 0), "1b-down": (4, 4),
                        "1b-qkv": (4, 2)},
            Kind.INT8: {"qkv": (4, 2), "o": (4, 4), "gate": (4, 0), "down": (8, 2), "lm": (4, 0), "1b-down": (8, 2),
                        "1b-qkv": (4, 2)}}
    for kind, table in want.items():
        for name, (n, k) in shapes.items():
            for batch in (1, 8):
                assert pick_launch(kind, n, k, batch, 132) == table[name], (kind, name, batch)
            assert pick_launch(kind, n, k, 16, 132) == ((8 if name.endswith("down") else 4), 0), (kind, name)


def test_supported_refuses_int4_weights_of_partial_groups():
    """The int4 loads are clamped into range rather than masked, which needs whole groups: a hand-built weight with
    K not a multiple of its group (or K = 0) is refused before any launch, and kernels.gemv keeps it."""
    from kernels.qgemv import supported
    from kernels.quant import Kind, QLinear

    def int4(k, group):
        return QLinear(Kind.INT4, torch.zeros(16, k // 2, dtype=torch.uint8), 16, k,
                       scale=torch.ones(16, max(k // group, 1)), zero=torch.zeros(16, max(k // group, 1)),
                       group_size=group)

    assert supported(int4(128, 64), 1) is None and supported(int4(256, 128), 1) is None
    assert "whole groups" in supported(int4(96, 64), 1)
    assert "whole groups" in supported(int4(0, 64), 1)
