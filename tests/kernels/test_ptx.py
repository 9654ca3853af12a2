"""The inline PTX of the kernels, run on the CPU by a PTX interpreter (tests/ptx_emu.py): the exact strings
kernels/gemv.py, kernels/qgemv.py and kernels/mega/hopper.py hand to inline_asm_elementwise, over every byte value where the input is a
byte, and through the mma.sync fragment layouts where the string multiplies. The GPU tests check the compiled kernels;
these check the assembly text itself, so a wrong mask, magic number, byte selector or shift fails on a CPU."""
import pytest
import torch

from kernels import gemv, qgemv
from kernels.fragments import b_operand_columns, int4_to_fragments, int8_to_fragments
from tests.ptx_emu import PTX, f32_bits, float_to_halves, halves_to_float

ALL_BYTES = torch.arange(256, dtype=torch.int64)


def _text(c) -> str:
    return c.value if hasattr(c, "value") else c


def _words(byte_values: torch.Tensor) -> torch.Tensor:
    """Bytes [4 m] -> 32-bit words [m], byte 4 i + j in bits 8 j."""
    b = byte_values.view(-1, 4)
    return b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16) | (b[:, 3] << 24)


def _bytes_in_every_position() -> tuple[torch.Tensor, torch.Tensor]:
    """(words, bytes [m, 4]): every byte value in every byte position of a word."""
    rows = torch.stack([torch.roll(ALL_BYTES, 64 * r) for r in range(4)], dim=1)  # [256, 4]
    return _words(rows.reshape(-1)), rows


def _out(res: dict, n: int) -> torch.Tensor:
    return res[n] & 0xFFFFFFFF


# ----------------------------------------------------------------------------------------------
# kernels/gemv.py (the FMA GEMV and the megakernel's int4 path)
# ----------------------------------------------------------------------------------------------
def test_int4_unit_float_ptx_matches_its_formula_for_every_byte():
    """_UNIT_FLOAT_ASM: per byte b, $i = ((b << 15) & 0x00078000) | 0x3F800000 (the float 1 + low / 256) and
    $4+i = ((b << 15) & 0x00780000) | 0x3F800000 (1 + high / 16): the interpreter's fallback formula, and the
    values the dequantisation FMA expects."""
    words, bytes_ = _bytes_in_every_position()
    res = PTX(_text(gemv._UNIT_FLOAT_ASM)).run({8: words, **{i: torch.zeros_like(words) for i in range(8)}})
    for i in range(4):
        b15 = bytes_[:, i] << 15
        assert torch.equal(_out(res, i), (b15 & 0x00078000) | 0x3F800000), f"low nibble, byte {i}"
        assert torch.equal(_out(res, 4 + i), (b15 & 0x00780000) | 0x3F800000), f"high nibble, byte {i}"
        f_lo = _out(res, i).to(torch.int32).view(torch.float32)
        assert torch.equal(f_lo, 1 + (bytes_[:, i] & 15).float() / 256)
        f_hi = _out(res, 4 + i).to(torch.int32).view(torch.float32)
        assert torch.equal(f_hi, 1 + (bytes_[:, i] >> 4).float() / 16)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_int4_nibble_ptx_gives_q_minus_8_for_every_byte(dtype):
    """_NIBBLE_ASM_{BF16,FP16}: the two nibbles of every byte in every position come out as q - 8, exactly; $0 / $1
    the low nibbles of bytes 0-1 / 2-3, $2 / $3 the high ones (the order int4_nibbles' (lo, hi) unpacks)."""
    asm = gemv._NIBBLE_ASM_BF16 if dtype == torch.bfloat16 else gemv._NIBBLE_ASM_FP16
    words, bytes_ = _bytes_in_every_position()
    res = PTX(_text(asm)).run({4: words, **{i: torch.zeros_like(words) for i in range(4)}})
    lo, hi = (bytes_ & 15).float() - 8, (bytes_ >> 4).float() - 8
    assert torch.equal(halves_to_float(_out(res, 0), dtype), lo[:, 0:2])
    assert torch.equal(halves_to_float(_out(res, 1), dtype), lo[:, 2:4])
    assert torch.equal(halves_to_float(_out(res, 2), dtype), hi[:, 0:2])
    assert torch.equal(halves_to_float(_out(res, 3), dtype), hi[:, 2:4])


# ----------------------------------------------------------------------------------------------
# kernels/qgemv.py (the tensor-core GEMV)
# ----------------------------------------------------------------------------------------------
def test_bf16_to_f16_pair_ptx_is_exact():
    """BF16X2_TO_F16X2_PTX: a pair of bf16 values in fp16's normal range becomes the same pair in fp16."""
    gen = torch.Generator().manual_seed(3)
    vals = (torch.randn(4096, 2, generator=gen) * 30).to(torch.bfloat16).float()
    vals[0] = torch.tensor([0.0, -0.0])
    vals[1] = torch.tensor([65280.0, -6.103515625e-05])  # the largest bf16 below fp16's max; fp16's smallest normal
    src = float_to_halves(vals, torch.bfloat16)
    res = PTX(_text(qgemv.BF16X2_TO_F16X2_PTX)).run({1: src, 0: torch.zeros_like(src)})
    assert torch.equal(halves_to_float(_out(res, 0), torch.float16), vals)


def _x_words(x: torch.Tensor, act: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """x [8, 64] -> the B registers (b0, b1: [32 lanes, 4 k-tiles] 32-bit words) one warp holds for one k-step, in
    the permuted K order of kernels/fragments.py (lane l: batch row l / 4)."""
    cols = b_operand_columns()  # [32, 4, 2, 2]
    vals = x.float()[(torch.arange(32) // 4)[:, None, None, None], cols]  # [32, 4, 2, 2]
    return float_to_halves(vals[:, :, 0], act), float_to_halves(vals[:, :, 1], act)


def _d_layout():
    lane = torch.arange(32)
    r, c = lane // 4, 2 * (lane % 4)
    return torch.stack([r, r, r + 8, r + 8], 1), torch.stack([c, c + 1, c, c + 1], 1)


def _run_steps(ptx: str, operands: list[torch.Tensor], c: torch.Tensor) -> torch.Tensor:
    """One inline-asm call of the qgemv kind: $0-3 D, then the given [32, 4] operand blocks, then C; returns D."""
    regs = {i: torch.zeros(32, dtype=torch.int64) for i in range(4)}
    n = 4
    for block in operands + [f32_bits(c)]:
        for j in range(4):
            regs[n] = block[:, j]
            n += 1
    res = PTX(ptx).run(regs)
    return torch.stack([_out(res, i) for i in range(4)], 1).to(torch.int32).view(torch.float32)


@pytest.mark.parametrize("act", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_qgemv_int4_ptx_multiplies_a_block(act):
    """INT4_{BF16,F16}_PTX and ONES_*_PTX on one 16 x 64 block of random nibbles: D = sum x (q + OFFSET) and
    Dx = sum x, so D - OFFSET Dx = (q - 8) @ x as the kernel folds it."""
    gen = torch.Generator().manual_seed(11)
    q = torch.randint(0, 16, (16, 64), generator=gen).to(torch.uint8)
    x = torch.zeros(8, 64)
    x[:5] = torch.randn(5, 64, generator=gen)
    x = x.to(act).float()
    words = int4_to_fragments(q)[0, 0].to(torch.int64) & 0xFFFFFFFF  # [32, 4]
    b0, b1 = _x_words(x, act)
    main = qgemv.INT4_BF16_PTX if act == torch.bfloat16 else qgemv.INT4_F16_PTX
    ones = qgemv.ONES_BF16_PTX if act == torch.bfloat16 else qgemv.ONES_F16_PTX
    offset = float(_text(qgemv.INT4_BF16_OFFSET if act == torch.bfloat16 else qgemv.INT4_F16_OFFSET))
    zero = torch.zeros(32, 4)
    d = _run_steps(_text(main), [words, b0, b1], zero)
    dx = _run_steps(_text(ones), [b0, b1], zero)
    rows, cols = _d_layout()
    want = ((q.double() - 8) @ x.double().T)[rows, cols]  # [32, 4]
    sums = x.double().sum(dim=1)[cols]
    assert torch.allclose(dx.double(), sums, rtol=0, atol=1e-4), "the ones MMA is not sum x"
    got = d.double() - offset * dx.double()
    assert torch.allclose(got, want, rtol=0, atol=1e-3 * max(1.0, want.abs().max().item()))


def test_qgemv_int8_ptx_multiplies_a_block():
    """INT8_F16_PTX on one 16 x 64 block of random int8: D = sum x (q + 1152), so D - 1152 sum x = q @ x."""
    gen = torch.Generator().manual_seed(12)
    q = torch.randint(-128, 128, (16, 64), generator=gen).to(torch.int8)
    q[0, :4] = torch.tensor([-128, 127, 0, -1], dtype=torch.int8)  # the extremes and the sign boundary
    x = torch.zeros(8, 64)
    x[:3] = torch.randn(3, 64, generator=gen)
    x = x.half().float()
    frag = int8_to_fragments(q)[0, 0].to(torch.int64) & 0xFFFFFFFF  # [32, 8]: a0/a1 words, then a2/a3 words
    b0, b1 = _x_words(x, torch.float16)
    zero = torch.zeros(32, 4)
    d = _run_steps(_text(qgemv.INT8_F16_PTX), [frag[:, :4], frag[:, 4:], b0, b1], zero)
    dx = _run_steps(_text(qgemv.ONES_F16_PTX), [b0, b1], zero)
    rows, cols = _d_layout()
    want = (q.double() @ x.double().T)[rows, cols]
    got = d.double() - float(_text(qgemv.INT8_F16_OFFSET)) * dx.double()
    assert torch.allclose(got, want, rtol=0, atol=2e-3 * max(1.0, want.abs().max().item()))


# ----------------------------------------------------------------------------------------------
# kernels/mega/hopper.py (the Gluon megakernel's int8 operands)
# ----------------------------------------------------------------------------------------------
def test_megakernel_int8_ptx_gives_q_in_fp16_for_every_byte():
    """INT8_F16_PTX (pack = 4): every int8 value in every byte position of $2 comes out as the same integer in fp16,
    exactly, byte i as element i: bytes 0-1 in the halves of $0, bytes 2-3 in those of $1."""
    from kernels.mega import hopper

    words, bytes_ = _bytes_in_every_position()
    res = PTX(_text(hopper.INT8_F16_PTX)).run({2: words, 0: torch.zeros_like(words), 1: torch.zeros_like(words)})
    q = (bytes_ - ((bytes_ >> 7) << 8)).float()  # two's complement
    assert torch.equal(halves_to_float(_out(res, 0), torch.float16), q[:, 0:2])
    assert torch.equal(halves_to_float(_out(res, 1), torch.float16), q[:, 2:4])


def test_the_emulator_refuses_what_it_does_not_know():
    with pytest.raises(NotImplementedError, match="not emulated"):
        PTX("{\n.reg .b32 t;\nbfe.u32 t, $1, 0, 4;\n}").run({1: torch.zeros(4, dtype=torch.int64)})
