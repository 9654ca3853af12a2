"""Times every per-op Triton kernel at a model's real shapes next to its PyTorch equivalent.

    python -m harness.bench_ops --model llama8b --quant int4 --batch 1 --ctx 1024

PyTorch equivalents: eager ops for norm / element-wise / RoPE, F.linear (cuBLAS) on the
dequantised weight for the GEMVs, SDPA forced to its FlashAttention backend (enable_gqa=True) for
attention. Latency is triton.testing.do_bench's median (L2 flushed before each call). `bytes` is what
the implementation actually reads and writes (weights incl. scales/zeros, activations, KV cache),
so gbps = bytes / latency is that implementation's achieved bandwidth.
"""
from __future__ import annotations

import argparse
from typing import Callable, Union

import torch
import torch.nn.functional as F

from harness.models import named_spec
from kernels.model import ModelSpec
from kernels.quant import QLinear, quant_mode, quantize_linear
from kernels.attention import decode_attention
from kernels.elementwise import add, silu_mul
from kernels.embedding import embedding
from kernels.gemv import gemv, gemv_silu_mul
from kernels.lm_head import lm_head_argmax
from kernels.norm import rmsnorm
from kernels.reference import rmsnorm as ref_rmsnorm
from kernels.rope import rope_kv_append

EPS = 1e-5
INT4_GROUP_SIZE = 128


def _nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _torch_rmsnorm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return ref_rmsnorm(x, w, EPS)


def _torch_rope_kv_append(qkv, positions, cos, sin, k_cache, v_cache, n_heads, n_kv, hd):
    """Eager PyTorch RoPE (rotate_half) + cache append, batched with index_put."""
    b_sz = qkv.shape[0]
    q, k, v = qkv.view(b_sz, n_heads + 2 * n_kv, hd).split([n_heads, n_kv, n_kv], dim=1)
    c, s = cos[positions][:, None, :], sin[positions][:, None, :]  # [B, 1, hd/2]

    def rot(x):
        lo, hi = x.float().chunk(2, dim=-1)
        return torch.cat([lo * c - hi * s, hi * c + lo * s], dim=-1).to(x.dtype)

    b_idx = torch.arange(b_sz, device=qkv.device)
    k_cache[b_idx, :, positions] = rot(k)
    v_cache[b_idx, :, positions] = v
    return rot(q)


def _time_us(fn: Callable[[], object], cuda_graph: bool = True) -> float:
    """Median GPU time of fn() in µs (do_bench flushes L2 before each call). With cuda_graph, fn is captured
    once and the graph replayed, so host launch overhead (~10-20 µs per Triton launch) is not timed."""
    import triton.testing

    run = fn
    if cuda_graph:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()  # compile and allocate outside the capture
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        run = graph.replay
    return triton.testing.do_bench(run, warmup=25, rep=100, return_mode="median") * 1e3


def bench_ops(model_dims: Union[ModelSpec, str], quant: str, batch: int, ctx: int,
              device: Union[torch.device, str] = "cuda", cuda_graph: bool = True) -> list[dict]:
    """Rows {op, impl, shape, bytes, latency_us, gbps, model, quant, batch, ctx, gpu, cuda_graph}, Triton and
    PyTorch per op.

    model_dims: a ModelSpec or a name of conf/model/; quant: bf16 | fp16 | int8 | int4 (g128);
    ctx: keys attended to (the KV cache holds exactly ctx positions); cuda_graph: time graph replays."""
    spec = named_spec(model_dims) if isinstance(model_dims, str) else model_dims
    device = torch.device(device)
    act = quant_mode(quant).act_dtype
    gen = torch.Generator(device=device).manual_seed(0)
    d, f, v = spec.dim, spec.ffn_dim, spec.vocab_size
    h, kvh, hd = spec.n_heads, spec.n_kv_heads, spec.head_dim

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, device=device, dtype=torch.float32) * scale).to(act)

    def linear(n: int, k: int) -> tuple[QLinear, torch.Tensor]:
        w = quantize_linear(randn(n, k, scale=k ** -0.5), quant, INT4_GROUP_SIZE)
        return w, w.dequantize(act)  # (what our kernels read, what cuBLAS reads)

    rows: list[dict] = []
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)

    def record(op: str, shape: str, triton_fn, triton_bytes: int, torch_fn, torch_bytes: int) -> None:
        for impl, fn, nbytes in (("triton", triton_fn, triton_bytes), ("torch", torch_fn, torch_bytes)):
            latency_us = _time_us(fn, cuda_graph)
            rows.append(dict(op=op, impl=impl, shape=shape, bytes=nbytes, latency_us=latency_us,
                             gbps=nbytes / latency_us / 1e3, model=spec.name, quant=quant, batch=batch, ctx=ctx,
                             gpu=gpu, cuda_graph=cuda_graph))

    es = torch.empty((), dtype=act).element_size()
    x, res, norm_w = randn(batch, d), randn(batch, d), randn(d)

    # Norm, embedding, element-wise.
    io = 2 * batch * d * es
    record("rmsnorm", f"[{batch},{d}]", lambda: rmsnorm(x, norm_w, EPS), io + d * es,
           lambda: _torch_rmsnorm(x, norm_w), io + d * es)
    table = randn(v, d)
    tokens = torch.randint(0, v, (batch,), generator=gen, device=device)
    record("embedding", f"[{batch}] of [{v},{d}]", lambda: embedding(tokens, table), io + tokens.nbytes,
           lambda: F.embedding(tokens, table), io + tokens.nbytes)
    del table
    record("add", f"[{batch},{d}]", lambda: add(x, res), 3 * batch * d * es, lambda: x + res, 3 * batch * d * es)
    g, u = randn(batch, f), randn(batch, f)
    record("silu_mul", f"[{batch},{f}]", lambda: silu_mul(g, u), 3 * batch * f * es,
           lambda: F.silu(g) * u, 3 * batch * f * es)

    # GEMVs, each with the fusion the layerwise impl uses; torch runs the same math unfused.
    wqkv, wqkv_d = linear(spec.qkv_dim, d)
    act_io = lambda n, k: (batch * k + batch * n) * es  # noqa: E731
    record("qkv(+rmsnorm)", f"[{batch},{d}]x[{spec.qkv_dim},{d}]",
           lambda: gemv(x, wqkv, norm_weight=norm_w, eps=EPS), wqkv.nbytes + act_io(spec.qkv_dim, d) + d * es,
           lambda: F.linear(_torch_rmsnorm(x, norm_w), wqkv_d), _nbytes(wqkv_d) + act_io(spec.qkv_dim, d) + d * es)
    del wqkv, wqkv_d
    attn = randn(batch, spec.q_dim)
    wo, wo_d = linear(d, spec.q_dim)
    record("o_proj(+residual)", f"[{batch},{spec.q_dim}]x[{d},{spec.q_dim}]",
           lambda: gemv(attn, wo, residual=res), wo.nbytes + act_io(d, spec.q_dim) + batch * d * es,
           lambda: res + F.linear(attn, wo_d), _nbytes(wo_d) + act_io(d, spec.q_dim) + batch * d * es)
    del wo, wo_d
    (wg, wg_d), (wu, wu_d) = linear(f, d), linear(f, d)

    def torch_gate_up():
        xn = _torch_rmsnorm(x, norm_w)
        return F.silu(F.linear(xn, wg_d)) * F.linear(xn, wu_d)

    record("gate_up(+rmsnorm,silu)", f"[{batch},{d}]x2[{f},{d}]",
           lambda: gemv_silu_mul(x, wg, wu, norm_weight=norm_w, eps=EPS),
           wg.nbytes + wu.nbytes + act_io(f, d) + d * es,
           torch_gate_up, _nbytes(wg_d, wu_d) + act_io(f, d) + d * es)
    del wg, wg_d, wu, wu_d
    wd, wd_d = linear(d, f)
    record("down(+residual)", f"[{batch},{f}]x[{d},{f}]",
           lambda: gemv(g, wd, residual=res), wd.nbytes + act_io(d, f) + batch * d * es,
           lambda: res + F.linear(g, wd_d), _nbytes(wd_d) + act_io(d, f) + batch * d * es)
    del wd, wd_d

    # RoPE + KV append, then attention over ctx keys.
    qkv = randn(batch, spec.qkv_dim)
    k_cache, v_cache = randn(batch, kvh, ctx, hd), randn(batch, kvh, ctx, hd)
    cos, sin = spec.rope_tables(ctx, device)
    positions = torch.full((batch,), ctx - 1, dtype=torch.int64, device=device)
    rope_bytes = (batch * spec.qkv_dim + batch * (spec.q_dim + 2 * spec.kv_dim)) * es + 2 * batch * hd * 4
    record("rope_kv_append", f"[{batch},{spec.qkv_dim}] hd{hd}",
           lambda: rope_kv_append(qkv, positions, cos, sin, k_cache, v_cache, h, kvh, hd), rope_bytes,
           lambda: _torch_rope_kv_append(qkv, positions, cos, sin, k_cache, v_cache, h, kvh, hd), rope_bytes)
    q = randn(batch, h, hd)
    seq_lens = torch.full((batch,), ctx, dtype=torch.int32, device=device)
    scale = hd ** -0.5
    attn_bytes = _nbytes(k_cache, v_cache) + 2 * _nbytes(q)

    def torch_attention():
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q[:, :, None, :], k_cache, v_cache, scale=scale, enable_gqa=True)

    record("decode_attention", f"B{batch} H{h}/KVH{kvh} hd{hd} ctx{ctx}",
           lambda: decode_attention(q, k_cache, v_cache, seq_lens, scale, max_len=ctx), attn_bytes,
           torch_attention, attn_bytes)
    del k_cache, v_cache

    # Final norm + LM head + argmax.
    w_lm, w_lm_d = linear(v, d)
    lm_io = batch * d * es + d * es + batch * v * 4 + batch * 8  # x, norm weight, fp32 logits, tokens

    def torch_lm_head():
        logits = F.linear(_torch_rmsnorm(x, norm_w), w_lm_d).float()
        return logits, logits.argmax(dim=-1)

    record("lm_head(+rmsnorm,argmax)", f"[{batch},{d}]x[{v},{d}]",
           lambda: lm_head_argmax(x, w_lm, norm_w, EPS), w_lm.nbytes + lm_io,
           torch_lm_head, _nbytes(w_lm_d) + lm_io + batch * v * es)  # torch also writes act-dtype logits
    return rows


def sweep_gemv(model_dims: Union[ModelSpec, str], quant: str, batch: int, device: Union[torch.device, str] = "cuda",
               layers: tuple[str, ...] = ("wqkv", "w_down"), block_ns: tuple[int, ...] = (4, 8, 16, 32, 64),
               block_ks: tuple[int, ...] = (256, 512, 1024), num_warps: tuple[int, ...] = (4, 8)) -> list[dict]:
    """GEMV block-size sweep behind the defaults of kernels/gemv.py: one row per (layer, config), FMA and
    tl.dot paths, plus the launcher's default ("default": True) and cuBLAS on the dequantised weight."""
    import itertools

    from kernels.gemv import pick_config

    spec = named_spec(model_dims) if isinstance(model_dims, str) else model_dims
    device = torch.device(device)
    act = quant_mode(quant).act_dtype
    gen = torch.Generator(device=device).manual_seed(0)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    rows: list[dict] = []
    for layer in layers:
        n, k = spec.linear_shapes()[layer]
        w = quantize_linear((torch.randn(n, k, generator=gen, device=device) * k ** -0.5).to(act), quant,
                            INT4_GROUP_SIZE)
        w_dense = w.dequantize(act)
        x = torch.randn(batch, k, generator=gen, device=device).to(act)
        base = dict(model=spec.name, layer=layer, shape=f"[{batch},{k}]x[{n},{k}]", quant=quant, batch=batch, gpu=gpu)

        def add_row(impl, fn, nbytes, **cfg):
            latency_us = _time_us(fn)
            rows.append(dict(base, impl=impl, latency_us=latency_us, gbps=nbytes / latency_us / 1e3, **cfg))

        add_row("torch", lambda: F.linear(x, w_dense), _nbytes(w_dense))
        default = pick_config(x, w)
        add_row("triton", lambda: gemv(x, w), w.nbytes, default=True, use_dot=default.use_dot,
                block_n=default.block_n, block_k=default.block_k, num_warps=default.num_warps)
        paths = [False] + ([True] if batch > 1 else [])
        for use_dot, bn, bk, nw in itertools.product(paths, block_ns, block_ks, num_warps):
            if (not use_dot and batch * bn * bk > 4 * 8192) or (use_dot and bn < 16):
                continue  # FMA partial products would spill; dot tiles need 16 rows
            add_row("triton", lambda: gemv(x, w, use_dot=use_dot, block_n=bn, block_k=bk, num_warps=nw),
                    w.nbytes, default=False, use_dot=use_dot, block_n=bn, block_k=bk, num_warps=nw)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="llama1b")
    p.add_argument("--quant", default="bf16", choices=list(("bf16", "fp16", "int8", "int4")))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--ctx", type=int, default=1024)
    args = p.parse_args()
    rows = bench_ops(args.model, args.quant, args.batch, args.ctx)
    print(f"{'op':26s} {'impl':7s} {'latency_us':>10s} {'gbps':>8s}  shape")
    for r in rows:
        print(f"{r['op']:26s} {r['impl']:7s} {r['latency_us']:10.2f} {r['gbps']:8.1f}  {r['shape']}")


if __name__ == "__main__":
    main()
