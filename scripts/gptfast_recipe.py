"""An independent check of the torch-compile reference: the gpt-fast decode recipe written on its own (a plain
nn.Module model; none of the harness's decoder, linears or timer), on random weights of a model's shapes.

What makes it the recipe: fused wqkv, separate w1/w3/w2, a static KV cache per layer written with index_copy_,
SDPA over the whole cache with a boolean mask, weight-only int8 as `F.linear(x, W.to(x.dtype)) * scales`, int4
through torch's tinygemm (`_weight_int4pack_mm`, inner k-tiles 8), greedy argmax of the logits, and the step
compiled with `torch.compile(mode="reduce-overhead", fullgraph=True)` under Inductor's coordinate-descent tuning.
Timed as back-to-back calls of the compiled step between two CUDA events, median of `--reps` windows.

  python scripts/gptfast_recipe.py --models llama8b --quants int8 int4 [--ctx 1024] [--batch 1]

Prints one line per (model, quant): µs per step. CUDA only."""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

INT4_GROUP = 128
INNER_K_TILES = 8


class Int8Linear(nn.Module):
    def __init__(self, n: int, k: int, dev):
        super().__init__()
        self.register_buffer("weight", torch.randint(-127, 128, (n, k), dtype=torch.int8, device=dev))
        self.register_buffer("scales", torch.rand(n, dtype=torch.bfloat16, device=dev) * 1e-3 + 1e-4)

    def forward(self, x):
        return F.linear(x, self.weight.to(x.dtype)) * self.scales


class Int4Linear(nn.Module):
    def __init__(self, n: int, k: int, dev):
        super().__init__()
        nibbles = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, device=dev)
        self.register_buffer("weight", torch.ops.aten._convert_weight_to_int4pack(nibbles, INNER_K_TILES))
        sz = torch.rand(k // INT4_GROUP, n, 2, dtype=torch.bfloat16, device=dev) * 1e-3
        self.register_buffer("scales_and_zeros", sz)
        self.n = n

    def forward(self, x):
        shape = x.shape
        y = torch.ops.aten._weight_int4pack_mm(x.reshape(-1, shape[-1]), self.weight, INT4_GROUP,
                                               self.scales_and_zeros)
        return y.reshape(*shape[:-1], self.n)


def linear(n: int, k: int, quant: str, dev) -> nn.Module:
    if quant == "int8":
        return Int8Linear(n, k, dev)
    if quant == "int4":
        return Int4Linear(n, k, dev)
    lin = nn.Linear(k, n, bias=False, device=dev, dtype=torch.bfloat16)
    nn.init.normal_(lin.weight, std=0.02)
    return lin


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float, dev):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(d, dtype=torch.bfloat16, device=dev))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class Block(nn.Module):
    def __init__(self, s, quant: str, batch: int, max_len: int, dev):
        super().__init__()
        self.h, self.kvh, self.hd = s.n_heads, s.n_kv_heads, s.head_dim
        q_dim, kv_dim = self.h * self.hd, self.kvh * self.hd
        self.wqkv = linear(q_dim + 2 * kv_dim, s.dim, quant, dev)
        self.wo = linear(s.dim, q_dim, quant, dev)
        self.w1 = linear(s.ffn_dim, s.dim, quant, dev)
        self.w3 = linear(s.ffn_dim, s.dim, quant, dev)
        self.w2 = linear(s.dim, s.ffn_dim, quant, dev)
        self.attn_norm = RMSNorm(s.dim, s.norm_eps, dev)
        self.ffn_norm = RMSNorm(s.dim, s.norm_eps, dev)
        cache = (batch, self.kvh, max_len, self.hd)
        self.register_buffer("k_cache", torch.randn(cache, dtype=torch.bfloat16, device=dev) * 0.1)
        self.register_buffer("v_cache", torch.randn(cache, dtype=torch.bfloat16, device=dev) * 0.1)
        self.split = [q_dim, kv_dim, kv_dim]

    def forward(self, x, cos, sin, pos, mask):
        b, t, _ = x.shape
        q, k, v = self.wqkv(self.attn_norm(x)).split(self.split, dim=-1)
        q = q.view(b, t, self.h, self.hd)
        k = k.view(b, t, self.kvh, self.hd)
        v = v.view(b, t, self.kvh, self.hd)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))
        self.k_cache.index_copy_(2, pos, k)
        self.v_cache.index_copy_(2, pos, v)
        rep = self.h // self.kvh
        keys = self.k_cache.repeat_interleave(rep, dim=1)
        vals = self.v_cache.repeat_interleave(rep, dim=1)
        o = F.scaled_dot_product_attention(q, keys, vals, attn_mask=mask, scale=1.0 / math.sqrt(self.hd))
        x = x + self.wo(o.transpose(1, 2).reshape(b, t, -1))
        y = self.ffn_norm(x)
        return x + self.w2(F.silu(self.w1(y)) * self.w3(y))


def rope(x, cos, sin):
    """x: [B, T, H, hd] with interleaved-free halves (rotate-half form); cos, sin: [T, hd/2] fp32."""
    xf = x.float()
    a, b = xf[..., : xf.shape[-1] // 2], xf[..., xf.shape[-1] // 2:]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.cat([a * c - b * s, b * c + a * s], dim=-1).type_as(x)


class Model(nn.Module):
    def __init__(self, s, quant: str, batch: int, max_len: int, dev):
        super().__init__()
        self.embed = nn.Parameter(torch.randn(s.vocab_size, s.dim, dtype=torch.bfloat16, device=dev) * 0.02)
        self.layers = nn.ModuleList(Block(s, quant, batch, max_len, dev) for _ in range(s.n_layers))
        self.norm = RMSNorm(s.dim, s.norm_eps, dev)
        self.output = linear(s.vocab_size, s.dim, quant, dev)
        inv = 1.0 / (s.rope_theta ** (torch.arange(0, s.head_dim, 2, device=dev).float() / s.head_dim))
        ang = torch.arange(max_len, device=dev).float()[:, None] * inv[None, :]
        self.register_buffer("cos", ang.cos())
        self.register_buffer("sin", ang.sin())
        self.max_len = max_len

    def forward(self, tokens, pos):
        mask = (torch.arange(self.max_len, device=tokens.device) <= pos)[None, None, None, :]
        cos, sin = self.cos[pos], self.sin[pos]
        x = F.embedding(tokens, self.embed)
        for layer in self.layers:
            x = layer(x, cos, sin, pos, mask)
        return self.output(self.norm(x))


def decode_one_token(model, tokens, pos):
    logits = model(tokens, pos)
    return torch.argmax(logits[:, -1], dim=-1, keepdim=True)


def measure(spec, quant: str, batch: int, ctx: int, reps: int, steps: int,
            profile: bool = False) -> tuple[float, float]:
    import torch._inductor.config as ic

    ic.coordinate_descent_tuning = True
    ic.triton.unique_kernel_names = True
    ic.fx_graph_cache = True
    dev = torch.device("cuda")
    with torch.no_grad():
        model = Model(spec, quant, batch, ctx + 1, dev)
        step = torch.compile(decode_one_token, mode="reduce-overhead", fullgraph=True)
        tokens = torch.randint(0, spec.vocab_size, (batch, 1), device=dev)
        pos = torch.tensor([ctx], device=dev)
        t0 = time.perf_counter()
        for _ in range(3):
            step(model, tokens, pos)
        torch.cuda.synchronize()
        build_s = time.perf_counter() - t0
        per_step = []
        for _ in range(reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(steps):
                step(model, tokens, pos)
            b.record()
            b.synchronize()
            per_step.append(a.elapsed_time(b) * 1e3 / steps)
        if profile:
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                for _ in range(steps):
                    step(model, tokens, pos)
                torch.cuda.synchronize()
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70))
    del model, step
    torch._dynamo.reset()
    torch.cuda.empty_cache()
    return statistics.median(per_step), build_s


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["llama8b"])
    ap.add_argument("--quants", nargs="+", default=["bf16", "int8", "int4"], choices=["bf16", "int8", "int4"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=10, help="timed windows (median reported)")
    ap.add_argument("--steps", type=int, default=20, help="back-to-back steps per window")
    ap.add_argument("--profile", action="store_true", help="also print the kernels by GPU time (torch.profiler)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gptfast_recipe.py needs a CUDA GPU (torch.compile's CUDA graphs and tinygemm)", file=sys.stderr)
        return 2
    from harness.cli import compose
    from harness.config import model_spec

    print(f"gpu={torch.cuda.get_device_name()} torch={torch.__version__} batch={args.batch} ctx={args.ctx}")
    for name in args.models:
        spec = model_spec(compose([f"model={name}"], __doc__).model)
        for quant in args.quants:
            us, build_s = measure(spec, quant, args.batch, args.ctx, args.reps, args.steps, args.profile)
            print(f"gptfast-recipe model={name} quant={quant} batch={args.batch} ctx={args.ctx}: "
                  f"{us:.1f} us/step (build {build_s:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
