"""Every public launcher on inputs that are not contiguous: a row-strided slice of a wider buffer (x[:, 8:]), a
column-major view, a broadcast row (stride 0), every other column; int tensors that are a column of a [B, 2]
tensor or one value expanded. Each is compared with the reference on the same data made contiguous, into a
NaN-poisoned out= that is itself a row-strided view (its other columns must stay NaN). Outputs whose last
dimension is not unit-stride are refused with a ValueError; so are QLinear scales and zeros that are not
contiguous. The gaps around every strided view hold NaN (or a wrong but valid index), so a kernel that steps
by 1 where the tensor steps by more reads them and fails the comparison."""
import pytest
import torch

from kernel_checks import (DEVICE, assert_close, gemv_terms, generator, make_linear, nan_full, randn,
                           silu_mul_terms, INTERPRETER_WARNINGS)
from kernels import reference as ref
from kernels.attention import decode_attention
from kernels.elementwise import add, silu_mul
from kernels.embedding import embedding
from kernels.gemv import gemv, gemv_silu_mul
from kernels.lm_head import lm_head_argmax
from kernels.model import rope_tables
from kernels.norm import rmsnorm
from kernels.quant import QLinear
from kernels.rope import rope_kv_append

pytestmark = INTERPRETER_WARNINGS

PAD = 8  # columns of NaN left of a row-strided view
BATCH = 3
LAYOUTS = ["row-slice", "col-major", "broadcast", "col-step2"]  # of a 2-D input
VECTOR_LAYOUTS = ["step2", "broadcast"]  # of a 1-D input (a norm weight)


def view_2d(t: torch.Tensor, layout: str) -> torch.Tensor:
    """t [R, C] in `layout` (not contiguous; broadcast: every row is t's row 0)."""
    r, c = t.shape
    if layout == "row-slice":  # strides (C + PAD, 1)
        v = nan_full(r, c + PAD, dtype=t.dtype)[:, PAD:]
    elif layout == "col-major":  # strides (1, R)
        v = nan_full(c, r, dtype=t.dtype).t()
    elif layout == "broadcast":  # strides (0, 1)
        return t[:1].expand(r, c)
    else:  # col-step2: strides (2 C, 2), NaN between the columns
        v = nan_full(r, 2 * c, dtype=t.dtype)[:, ::2]
    v.copy_(t)
    assert not v.is_contiguous()
    return v


def view_1d(t: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "broadcast":
        return t[:1].expand(t.shape[0])
    v = nan_full(2 * t.shape[0], dtype=t.dtype)[::2]
    v.copy_(t)
    return v


def out_view(*shape, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(a NaN out= of `shape` whose rows are strided: the last PAD columns of a wider buffer, that buffer)."""
    buf = nan_full(*shape[:-1], shape[-1] + PAD, dtype=dtype)
    return buf[..., PAD:], buf


def assert_gap_untouched(buf: torch.Tensor) -> None:
    assert torch.isnan(buf[..., :PAD].float()).all(), "the kernel wrote outside out='s columns"


def col_major_out(*shape, dtype) -> torch.Tensor:
    return nan_full(*reversed(shape), dtype=dtype).permute(*reversed(range(len(shape))))


def int_column(values: list[int], junk: list[int]) -> torch.Tensor:
    """values as column 0 of a [B, 2] int32 tensor (stride 2) whose column 1 holds other valid values."""
    t = torch.tensor(list(zip(values, junk)), dtype=torch.int32, device=DEVICE)[:, 0]
    assert t.stride(0) == 2
    return t


def expanded(value: int, junk: int) -> torch.Tensor:
    """One value expanded to [B] (stride 0); the memory after it holds `junk` (valid, but wrong)."""
    t = torch.tensor([value] + [junk] * BATCH, device=DEVICE)[:1].expand(BATCH)
    assert t.stride(0) == 0
    return t


# ---------------------------------------------------------------- element-wise, norm, embedding

ELEMENTWISE = {"add": (add, ref.add), "silu_mul": (silu_mul, ref.silu_mul)}


ELEMENTWISE_CASES = [("a", layout) for layout in LAYOUTS] + [("b", "col-major"), ("b", "broadcast"),
                                                            ("out", "row-slice")]


@pytest.mark.parametrize("op", list(ELEMENTWISE))
@pytest.mark.parametrize("arg,layout", ELEMENTWISE_CASES, ids=["-".join(c) for c in ELEMENTWISE_CASES])
def test_elementwise_strided(op, arg, layout):
    kernel, oracle = ELEMENTWISE[op]
    gen, dtype = generator(1), torch.float16
    a = randn(BATCH, 40, dtype=dtype, gen=gen, scale=3.0)
    b = randn(BATCH, 40, dtype=dtype, gen=gen)
    if arg == "a":
        a = view_2d(a, layout)
    elif arg == "b":
        b = view_2d(b, layout)
    out, buf = out_view(BATCH, 40, dtype=dtype) if arg == "out" else (nan_full(BATCH, 40, dtype=dtype), None)
    y = kernel(a, b, out=out)
    assert y.data_ptr() == out.data_ptr()
    assert_close(y, oracle(a.contiguous(), b.contiguous()), dtype, f"{op} {arg} {layout}")
    if buf is not None:
        assert_gap_untouched(buf)


@pytest.mark.parametrize("op", list(ELEMENTWISE))
def test_elementwise_refuses_a_bad_out(op):
    kernel = ELEMENTWISE[op][0]
    a = randn(BATCH, 40, gen=generator(2))
    with pytest.raises(ValueError, match="out="):
        kernel(a, a, out=col_major_out(BATCH, 40, dtype=a.dtype))
    with pytest.raises(ValueError, match="shape"):  # the right number of elements, the wrong shape
        kernel(a, a, out=nan_full(40, BATCH, dtype=a.dtype))


RMSNORM_CASES = ([("x", layout) for layout in LAYOUTS] + [("weight", layout) for layout in VECTOR_LAYOUTS]
                 + [("out", "row-slice")])


@pytest.mark.parametrize("arg,layout", RMSNORM_CASES, ids=["-".join(c) for c in RMSNORM_CASES])
def test_rmsnorm_strided(arg, layout):
    gen, dtype = generator(3), torch.float16
    x = randn(BATCH, 96, dtype=dtype, gen=gen, scale=3.0)
    w = randn(96, dtype=dtype, gen=gen)
    if arg == "x":
        x = view_2d(x, layout)
    elif arg == "weight":
        w = view_1d(w, layout)
    out, buf = out_view(BATCH, 96, dtype=dtype) if arg == "out" else (nan_full(BATCH, 96, dtype=dtype), None)
    y = rmsnorm(x, w, 1e-5, out=out)
    assert y.data_ptr() == out.data_ptr()
    assert_close(y, ref.rmsnorm(x.contiguous(), w.contiguous(), 1e-5), dtype, f"rmsnorm {arg} {layout}")
    if buf is not None:
        assert_gap_untouched(buf)


def test_rmsnorm_refuses_a_column_major_out():
    x = randn(BATCH, 64, gen=generator(4))
    with pytest.raises(ValueError, match="out= must be"):
        rmsnorm(x, torch.ones(64, device=DEVICE), 1e-5, out=col_major_out(BATCH, 64, dtype=x.dtype))


@pytest.mark.parametrize("tokens_layout", ["column", "expanded"])
def test_embedding_strided(tokens_layout):
    gen, dtype = generator(5), torch.float16
    table = view_2d(randn(20, 48, dtype=dtype, gen=gen), "row-slice")  # a view of a wider table
    if tokens_layout == "column":
        tokens = int_column([7, 19, 0], [3, 3, 3])
    else:
        tokens = expanded(11, junk=4)
    out, buf = out_view(BATCH, 48, dtype=dtype)
    embedding(tokens, table, out=out)
    torch.testing.assert_close(out, ref.embedding(tokens.contiguous(), table.contiguous()), rtol=0, atol=0)
    assert_gap_untouched(buf)


# ---------------------------------------------------------------- GEMV, gate/up, LM head

N, K, VOCAB = 40, 64, 70
# (id, quant mode, activation dtype, int4 group size, batch): every inner product of kernels/tiles.py
PATHS = {
    "dense-fp16-B3": ("fp16", torch.float16, 0, 3),  # FMA
    "dense-fp16-B16": ("fp16", torch.float16, 0, 16),  # tensor cores (tl.dot)
    "dense-fp32-B3": ("fp16", torch.float32, 0, 3),
    "int8-fp16-B5": ("int8", torch.float16, 0, 5),  # tl.dot
    "int4g32-fp16-B3": ("int4", torch.float16, 32, 3),  # int4 FMA tile
    "int4g32-fp16-B16": ("int4", torch.float16, 32, 16),  # int4 tensor-core tile
}
GEMV_LAUNCHERS = ["gemv", "gemv_silu_mul", "lm_head_argmax"]


def _gemv_cases():
    """(launcher, path, argument, layout): gemv's x in every layout on every path (each path loads x its own way),
    the other launchers' (the same tile) on an FMA and the int4 tensor-core path; the norm weight on those two paths
    (the two places it is loaded); residual and out once."""
    cases = []
    two_paths = ("dense-fp16-B3", "int4g32-fp16-B16")
    for launcher in GEMV_LAUNCHERS:
        for path in (PATHS if launcher == "gemv" else two_paths):
            cases += [(launcher, path, "x", layout) for layout in LAYOUTS]
        for path in two_paths:
            cases += [(launcher, path, "norm_weight", layout) for layout in VECTOR_LAYOUTS]
        cases.append((launcher, "int8-fp16-B5", "out", "row-slice"))
        if launcher == "gemv":
            cases += [(launcher, "dense-fp16-B3", "residual", layout) for layout in ("col-major", "broadcast")]
    return [pytest.param(*c, id="-".join(c)) for c in cases]


@pytest.mark.parametrize("launcher,path,arg,layout", _gemv_cases())
def test_gemv_launchers_strided(launcher, path, arg, layout):
    """gemv (fused norm + residual), gemv_silu_mul (fused norm) and lm_head_argmax with one argument in `layout`."""
    mode, dtype, group, batch = PATHS[path]
    gen = generator(len(path) + len(layout))
    n = VOCAB if launcher == "lm_head_argmax" else N
    w, w_up = make_linear(n, K, mode, dtype, group, gen), make_linear(n, K, mode, dtype, group, gen)
    x = randn(batch, K, dtype=dtype, gen=gen, scale=2.0)
    residual = randn(batch, n, dtype=dtype, gen=gen) if launcher == "gemv" else None
    norm_w = randn(K, dtype=dtype, gen=gen)
    if arg == "x":
        x = view_2d(x, layout)
    elif arg == "residual":
        residual = view_2d(residual, layout)
    elif arg == "norm_weight":
        norm_w = view_1d(norm_w, layout)
    out_dtype = torch.float32 if launcher == "lm_head_argmax" else dtype
    out, buf = out_view(batch, n, dtype=out_dtype) if arg == "out" else (nan_full(batch, n, dtype=out_dtype), None)
    what = f"{launcher} {path} {arg} {layout}"
    if launcher == "gemv":
        y = gemv(x, w, residual=residual, norm_weight=norm_w, eps=1e-5, out=out)
    elif launcher == "gemv_silu_mul":
        y = gemv_silu_mul(x, w, w_up, norm_weight=norm_w, eps=1e-5, out=out)
    else:
        y, tokens = lm_head_argmax(x, w, norm_w, 1e-5, out=out)
        torch.testing.assert_close(tokens, y.contiguous().argmax(dim=-1), rtol=0, atol=0)
    assert y.data_ptr() == out.data_ptr()
    x, norm_w = x.contiguous(), norm_w.contiguous()
    residual = None if residual is None else residual.contiguous()
    # dot=True: the looser bound, whichever inner product the tile rule took
    if launcher == "gemv_silu_mul":
        assert_close(y, ref.gemv_silu_mul(x, w, w_up, norm_w, 1e-5), dtype, what,
                     terms=silu_mul_terms(x, w, w_up, norm_w), k=K)
    else:
        assert_close(y, ref.gemv_fp32(x, w, residual, norm_w, 1e-5).to(out_dtype), dtype, what,
                     terms=gemv_terms(x, w, residual, norm_w), k=K)
    if buf is not None:
        assert_gap_untouched(buf)


@pytest.mark.parametrize("launcher", GEMV_LAUNCHERS)
def test_gemv_launchers_refuse_a_column_major_out(launcher):
    mode, dtype, group, batch = PATHS["dense-fp16-B3"]
    gen = generator(10)
    w, x = make_linear(N, K, mode, dtype, group, gen), randn(batch, K, dtype=dtype, gen=gen)
    out = col_major_out(batch, N, dtype=torch.float32 if launcher == "lm_head_argmax" else dtype)
    with pytest.raises(ValueError, match="out= must be"):
        if launcher == "gemv":
            gemv(x, w, out=out)
        elif launcher == "gemv_silu_mul":
            gemv_silu_mul(x, w, w, out=out)
        else:
            lm_head_argmax(x, w, torch.ones(K, dtype=dtype, device=DEVICE), 1e-5, out=out)


@pytest.mark.parametrize("path,field", [("int8-fp16-B5", "scale"), ("int4g32-fp16-B3", "scale"),
                                        ("int4g32-fp16-B3", "zero")], ids=["int8-scale", "int4-scale", "int4-zero"])
def test_gemv_launchers_refuse_non_contiguous_scales(path, field):
    """The kernels read a QLinear's scales and zeros row-major at the scale's row stride; another layout is an
    error, never a silent misread."""
    mode, dtype, group, batch = PATHS[path]
    gen = generator(11)
    w, x = make_linear(N, K, mode, dtype, group, gen), randn(batch, K, dtype=dtype, gen=gen)
    t = getattr(w, field)
    strided = view_1d(t, "step2") if t.dim() == 1 else view_2d(t, "col-major")
    bad = QLinear(w.kind, w.weight, w.out_features, w.in_features,
                  strided if field == "scale" else w.scale, strided if field == "zero" else w.zero, w.group_size)
    for call in (lambda: gemv(x, bad), lambda: gemv_silu_mul(x, bad, bad),
                 lambda: lm_head_argmax(x, bad, torch.ones(K, dtype=dtype, device=DEVICE), 1e-5)):
        with pytest.raises(ValueError, match=f"{field} must be contiguous"):
            call()


# ---------------------------------------------------------------- RoPE + KV append, attention

H, KVH, HD, S_MAX = 4, 2, 32, 24


def _caches(layout: str, dtype, gen):
    """(k_cache, v_cache) [B, KVH, S_MAX, HD] in `layout`, random."""
    def one():
        t = randn(BATCH, KVH, S_MAX, HD, dtype=dtype, gen=gen)
        if layout == "contiguous":
            return t
        if layout == "bshd":  # [B, S, KVH, hd] storage viewed as [B, KVH, S, hd]
            v = torch.empty(BATCH, S_MAX, KVH, HD, dtype=dtype, device=DEVICE).permute(0, 2, 1, 3)
        elif layout == "seq-slice":  # the first S_MAX positions of a longer cache, NaN after
            v = nan_full(BATCH, KVH, S_MAX + 5, HD, dtype=dtype)[:, :, :S_MAX]
        else:  # hd-slice: each head's HD values at the end of a wider row
            v = nan_full(BATCH, KVH, S_MAX, HD + PAD, dtype=dtype)[..., PAD:]
        v.copy_(t)
        return v
    return one(), one()


ROPE_CASES = [("qkv", "row-slice"), ("qkv", "col-major"), ("qkv", "broadcast"), ("positions", "column"),
              ("positions", "expanded"), ("caches", "bshd"), ("caches", "seq-slice"), ("caches", "hd-slice"),
              ("cos_sin", "halves-of-one-table"), ("cos_sin", "different-strides"), ("out", "row-slice"),
              ("out", "head-major")]


@pytest.mark.parametrize("arg,layout", ROPE_CASES, ids=["-".join(c) for c in ROPE_CASES])
def test_rope_kv_append_strided(arg, layout):
    gen, dtype = generator(12), torch.float16
    qkv = randn(BATCH, (H + 2 * KVH) * HD, dtype=dtype, gen=gen)
    positions = torch.tensor([S_MAX - 1, 3, 10], device=DEVICE)
    table_cos, table_sin = rope_tables(HD, S_MAX, 10000.0, device=DEVICE)
    cos, sin = table_cos, table_sin
    k_cache, v_cache = _caches(layout if arg == "caches" else "contiguous", dtype, gen)
    out, buf = nan_full(BATCH, H, HD, dtype=dtype), None
    if arg == "qkv":
        qkv = view_2d(qkv, layout)
    elif arg == "positions" and layout == "column":
        positions = int_column([S_MAX - 1, 3, 10], [5, 0, 17])
    elif arg == "positions":
        positions = expanded(9, junk=17)
    elif arg == "cos_sin" and layout == "halves-of-one-table":  # equal row strides hd
        both = torch.cat([table_cos, table_sin], dim=1)
        cos, sin = both[:, :HD // 2], both[:, HD // 2:]
    elif arg == "cos_sin":  # cos row-strided, sin contiguous
        cos = view_2d(table_cos, "row-slice")
    elif arg == "out" and layout == "row-slice":
        out, buf = out_view(BATCH, H, HD, dtype=dtype)
    elif arg == "out":  # strides (hd, B hd, 1)
        out = nan_full(H, BATCH, HD, dtype=dtype).transpose(0, 1)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    q = rope_kv_append(qkv, positions, cos, sin, k_cache, v_cache, H, KVH, HD, out=out)
    assert q.data_ptr() == out.data_ptr()
    q_ref = ref.rope_kv_append(qkv.contiguous(), positions.contiguous(), table_cos, table_sin, k_ref, v_ref,
                               H, KVH, HD)
    what = f"rope {arg} {layout}"
    assert_close(q, q_ref, dtype, f"{what}: q")
    assert_close(k_cache, k_ref, dtype, f"{what}: k_cache")
    torch.testing.assert_close(v_cache, v_ref, rtol=0, atol=0)
    if buf is not None:
        assert_gap_untouched(buf)


def test_rope_kv_append_refuses_bad_layouts():
    gen, dtype = generator(14), torch.float32
    qkv = randn(BATCH, (H + 2 * KVH) * HD, dtype=dtype, gen=gen)
    positions = torch.tensor([1, 2, 3], device=DEVICE)
    cos, sin = rope_tables(HD, S_MAX, 10000.0, device=DEVICE)
    k_cache, v_cache = _caches("contiguous", dtype, gen)
    bad_out = nan_full(BATCH, H, 2 * HD, dtype=dtype)[..., ::2]  # hd not unit-stride
    with pytest.raises(ValueError, match="out= must be"):
        rope_kv_append(qkv, positions, cos, sin, k_cache, v_cache, H, KVH, HD, out=bad_out)
    bad_cache = nan_full(BATCH, KVH, S_MAX, 2 * HD, dtype=dtype)[..., ::2]
    with pytest.raises(ValueError, match="k_cache must be"):
        rope_kv_append(qkv, positions, cos, sin, bad_cache, v_cache, H, KVH, HD)


def _q(layout: str, dtype, gen) -> torch.Tensor:
    """q [B, H, hd] in `layout`."""
    if layout == "heads-of-qkv":  # the q part of a fused [B, (H + 2 KVH) hd] buffer: row stride (H + 2 KVH) hd
        qkv = randn(BATCH, (H + 2 * KVH) * HD, dtype=dtype, gen=gen)
        return qkv[:, :H * HD].view(BATCH, H, HD)
    q = randn(BATCH, H, HD, dtype=dtype, gen=gen)
    if layout == "contiguous":
        return q
    if layout == "head-major":  # strides (hd, B hd, 1)
        return q.transpose(0, 1).contiguous().transpose(0, 1)
    if layout == "broadcast":
        return q[:1].expand(BATCH, H, HD)
    v = nan_full(BATCH, H, 2 * HD, dtype=dtype)[..., ::2]  # hd-step2
    v.copy_(q)
    return v


ATTENTION_CASES = [("q", "heads-of-qkv"), ("q", "head-major"), ("q", "broadcast"), ("q", "hd-step2"),
                   ("seq_lens", "column"), ("seq_lens", "expanded"), ("caches", "bshd"), ("caches", "seq-slice"),
                   ("caches", "hd-slice"), ("out", "row-slice")]


@pytest.mark.parametrize("arg,layout", ATTENTION_CASES, ids=["-".join(c) for c in ATTENTION_CASES])
def test_decode_attention_strided(arg, layout):
    gen, dtype = generator(15), torch.float16
    q = _q(layout if arg == "q" else "contiguous", dtype, gen)
    k_cache, v_cache = _caches(layout if arg == "caches" else "contiguous", dtype, gen)
    seq_lens = torch.tensor([S_MAX, 5, 17], device=DEVICE)
    if arg == "seq_lens" and layout == "column":
        seq_lens = int_column([S_MAX, 5, 17], [1, 20, 2])
    elif arg == "seq_lens":
        seq_lens = expanded(13, junk=2)
    out, buf = out_view(BATCH, H * HD, dtype=dtype) if arg == "out" else (nan_full(BATCH, H * HD, dtype=dtype), None)
    y = decode_attention(q, k_cache, v_cache, seq_lens, HD ** -0.5, 2, out=out, block_n=8)
    assert y.data_ptr() == out.data_ptr()
    expected = ref.decode_attention(q.contiguous(), k_cache.contiguous(), v_cache.contiguous(), seq_lens.contiguous(),
                                    HD ** -0.5)
    assert_close(y, expected, dtype, f"attention {arg} {layout}")
    if buf is not None:
        assert_gap_untouched(buf)


def test_decode_attention_refuses_a_column_major_out():
    gen, dtype = generator(16), torch.float32
    q = randn(BATCH, H, HD, dtype=dtype, gen=gen)
    k_cache, v_cache = _caches("contiguous", dtype, gen)
    seq_lens = torch.tensor([3, 4, 5], device=DEVICE)
    with pytest.raises(ValueError, match="out= must be"):
        decode_attention(q, k_cache, v_cache, seq_lens, 0.1, out=col_major_out(BATCH, H * HD, dtype=dtype))
