"""Quantization reference: layouts, round trips and error bounds."""
import pytest
import torch

from kernels.quant import dequantize_int4, quantize_int4, quantize_int8, quantize_linear, unpack_int4


def _w(n, k, dtype=torch.bfloat16, seed=0):
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_int8_error_bound(dtype):
    w = _w(96, 200, dtype)
    q, s = quantize_int8(w)
    assert q.dtype == torch.int8 and s.shape == (96,) and q.abs().max() <= 127
    err = (q.float() * s.float()[:, None] - w.float()).abs()
    # rounding to the nearest step: at most half a step (+ the input's own rounding)
    assert bool((err <= s.float()[:, None] * 0.5 * 1.01 + 1e-3).all())


@pytest.mark.parametrize("group", [32, 64, 128])
def test_int4_error_bound_and_layout(group):
    w = _w(40, 256, seed=group)
    packed, scale, zero = quantize_int4(w, group)
    assert packed.shape == (40, 128) and packed.dtype == torch.uint8
    assert scale.shape == zero.shape == (40, 256 // group)
    q = unpack_int4(packed)
    assert q.max() <= 15
    # the documented nibble order: low nibble = even column
    assert torch.equal(packed[:, 3] & 0xF, q[:, 6]) and torch.equal(packed[:, 3] >> 4, q[:, 7])
    deq = dequantize_int4(packed, scale, zero, group)
    # the documented arithmetic, written out for one element
    n, k = 5, 77
    expect = (q[n, k].float() - 8) * scale[n, k // group].float() + zero[n, k // group].float()
    assert torch.isclose(deq[n, k], expect)
    step = scale.float().repeat_interleave(group, dim=1)
    assert bool(((deq - w.float()).abs() <= 0.5 * step * 1.05 + 2e-2).all())
    # uniform rounding error averages a quarter step; allow for the bf16 scale/zero rounding
    assert (deq - w.float()).abs().mean() < 0.3 * step.mean()


def test_int4_rejects_bad_group():
    with pytest.raises(ValueError, match="group_size=48"):
        quantize_int4(_w(8, 64), 48)


@pytest.mark.parametrize("mode", ["bf16", "int8", "int4"])
def test_qlinear_bytes_and_dequant(mode):
    w = _w(64, 256)
    ql = quantize_linear(w, mode, 128)
    expect = {"bf16": 64 * 256 * 2, "int8": 64 * 256 + 64 * 2, "int4": 64 * 128 + 2 * 64 * 2 * 2}[mode]
    assert ql.nbytes == expect
    assert ql.dequantize().shape == (64, 256) and ql.dequantize().dtype == torch.bfloat16


@pytest.mark.parametrize("mode", ["bf16", "fp32", "int8"])
def test_torch_linear_matches_the_dequantised_weight(mode):
    """The torch references' linear (cuBLAS dense, gpt-fast int8: F.linear on the int8 weight cast, times the scale)
    equals x @ dequantize(W).T; a lost scale or a wrong kind dispatch fails here."""
    from harness.torch_ops import TorchLinear
    from kernels.quant import quant_mode

    dtype = quant_mode(mode).act_dtype
    gen = torch.Generator().manual_seed(4)
    w = quantize_linear((torch.randn(48, 64, generator=gen) / 8).to(dtype), mode)
    x = torch.randn(3, 64, generator=gen).to(dtype)
    y = TorchLinear(w)(x).float()
    ref = x.float() @ w.dequantize(torch.float32).T
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert (y - ref).abs().max() <= tol * ref.abs().max(), (y - ref).abs().max()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("library,mode,bound", [("tinygemm", "int4", 5e-3), ("gemlite", "int8", 1e-2),
                                                ("gemlite", "int4", 5e-2)])
def test_library_quantized_linears_match_the_fp32_reference(library, mode, bound):
    """The references' quantized linears read the project's quantized numbers, repacked: torch's tinygemm int4
    (TorchLinear) and GemLite (gemlite_layer) against x @ dequantize(W).T in fp32, at a llama8b down-projection shape
    (the longest K) and batch 1 and 16. A lost scale, a wrong zero conversion or a shuffled repack is off by far more
    than these bounds: tinygemm's is the bf16 output rounding (measured 2.3e-3 relative); GemLite's int4 GEMV at
    batch 1 keeps 16-bit partial sums (measured 1.4-3.5e-2 relative at the llama8b shapes, 0.6-0.7e-2 at batch
    8-16; int8 2.3-3.6e-3), so its bound is its own precision, not ours."""
    from harness.torch_ops import TorchLinear, gemlite_layer
    from kernels import reference as ref

    if library == "gemlite":
        pytest.importorskip("gemlite")
    gen = torch.Generator(device="cuda").manual_seed(9)
    n, k = 4096, 14336
    w = quantize_linear((torch.randn(n, k, generator=gen, device="cuda") * k ** -0.5).bfloat16(), mode, 128)
    layer = TorchLinear(w) if library == "tinygemm" else gemlite_layer(w)
    for batch in (1, 16):
        x = torch.randn(batch, k, generator=gen, device="cuda").bfloat16()
        expect = ref.gemv_fp32(x, w)
        y = layer(x).float()
        err = float((y - expect).norm() / expect.norm())
        assert torch.isfinite(y).all() and err <= bound, f"{library} {mode} B{batch}: relative error {err:.2e}"
