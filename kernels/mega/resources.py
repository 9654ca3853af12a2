"""What one megakernel configuration costs the SM, found by compiling it for a GPU architecture on any
machine (no GPU needed): registers per thread, spills, shared memory, and so how many programs fit on
an SM. The persistent kernel's speed hinges on this (one program per SM leaves little memory-level
parallelism), and a compile here costs no GPU time.

    python -m kernels.mega.resources model=llama1b quant=bf16 batch=1 [arch=90] [num_warps=4] \
        [gate_up.block_n=8 ...]   # TileConfig overrides, GemvTile fields with a dot

The kernel is compiled exactly as the JIT would on the GPU (same signature, constexprs and 16-byte
pointer alignment); ptxas (shipped with Triton) reports the resources.
"""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import tempfile
from typing import Optional

import torch

DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.int8: "i8",
               torch.uint8: "u8", torch.int32: "i32", torch.int64: "i64"}
REGS_PER_SM = 65536
MAX_THREADS_PER_SM = 2048
SMEM_PER_SM = 228 * 1024


def _weight_dtypes(quant: str, act: torch.dtype) -> tuple[torch.dtype, torch.dtype, torch.dtype]:
    """(weight, scale, zero) element types as the kernel sees them (absent tensors stand in as the weight)."""
    if quant == "int8":
        return torch.int8, act, torch.int8
    if quant == "int4":
        return torch.uint8, act, act
    return act, act, act


def signature(quant: str, act: torch.dtype) -> dict[str, str]:
    """Argument name -> Triton type of the interpreter kernel's runtime arguments, as runtime.py passes them."""
    from kernels.mega.interpreter import _megakernel

    w, s, z = _weight_dtypes(quant, act)
    f32, i32 = torch.float32, torch.int32
    i64 = torch.int64
    ptr = {"queue_ptr": i32, "length_ptr": i32, "counter_ptr": i32, "error_ptr": i32, "tok_ptr": i32,
           "timeline_ptr": i64, "clock_ptr": i64,
           "pos_ptr": i32, "next_ptr": i32, "pidx_ptr": i32, "cos_ptr": f32, "sin_ptr": f32,
           "embed_ptr": act, "attn_norm_ptr": act, "mlp_norm_ptr": act, "final_norm_ptr": act,
           "k_cache_ptr": act, "v_cache_ptr": act}
    for name in ("h", "q", "attn", "act", "opart", "lse", "logits", "pmax"):
        ptr[f"{name}_ptr"] = f32
    for lin in ("qkv", "o", "g", "u", "d", "lm"):
        ptr[f"w{lin}_ptr"], ptr[f"s{lin}_ptr"], ptr[f"z{lin}_ptr"] = w, s, z
    floats = {"eps", "scale_log2"}
    sig = {}
    for p in _megakernel.params:
        if p.is_constexpr:
            sig[p.name] = "constexpr"
        elif p.name in ptr:
            sig[p.name] = "*" + DTYPE_NAMES[ptr[p.name]]
        else:
            sig[p.name] = "fp32" if p.name in floats else "i32"
    return sig


def compile_config(spec, quant: str, group_size: int, batch: int, max_len: int, n_programs: int, arch: int = 90,
                   maxnreg: Optional[int] = None, timeline: bool = False, **tile_overrides):
    """Compiles the kernel of this configuration for sm_<arch>. Returns (compiled kernel, TileConfig)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from harness.weights import act_dtype
    from kernels.mega.interpreter import _megakernel
    from kernels.mega.lower import lower, pick_tiles
    from kernels.mega.runtime import constexpr_args

    act = act_dtype(quant)
    tiles = pick_tiles(spec, quant, group_size, batch, max_len, n_programs, interpret=False, **tile_overrides)
    prog = lower(spec, quant, group_size, batch, max_len, tiles)
    kind = {"int8": "int8", "int4": "int4"}.get(quant, "dense")
    cx = dict(constexpr_args(spec, kind, group_size, act, batch, tiles, prog), TIMELINE=timeline, CLOCK=1, L2_PREFETCH=tiles.l2_prefetch)
    num_warps = cx.pop("num_warps")
    maxnreg = cx.pop("maxnreg", None) or maxnreg
    sig = signature(quant, act)
    names = list(sig)
    constexprs = {(names.index(k),): v for k, v in cx.items()}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if sig[n].startswith("*")}
    src = ASTSource(_megakernel, sig, constexprs, attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps, **({"maxnreg": maxnreg} if maxnreg else {})})
    return compiled, tiles


def ptxas_usage(compiled, arch: int = 90) -> dict:
    """Registers, spill bytes, stack and static shared memory of the compiled kernel, from `ptxas -v`."""
    from triton.backends.nvidia.compiler import get_ptxas

    ptxas = get_ptxas(arch).path
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(compiled.asm["ptx"])
        arch_flag = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        out = subprocess.run([ptxas, "-v", f"--gpu-name={arch_flag}", src, "-o", os.path.join(d, "k.cubin")],
                             capture_output=True, text=True, check=True).stderr
    num = lambda pat: int(m.group(1)) if (m := re.search(pat, out)) else 0  # noqa: E731
    return {"regs": num(r"Used (\d+) registers"), "spill_stores": num(r"(\d+) bytes spill stores"),
            "spill_loads": num(r"(\d+) bytes spill loads"), "stack": num(r"(\d+) bytes stack frame"),
            "shared": compiled.metadata.shared}


def programs_per_sm(regs: int, num_warps: int, shared: int, regs_per_sm: int = REGS_PER_SM,
                    threads_per_sm: int = MAX_THREADS_PER_SM, smem_per_sm: int = SMEM_PER_SM) -> int:
    """Programs of this footprint co-resident on one SM (defaults: Hopper). Registers are allocated per warp in
    units of 256; the driver reserves 1 KB of shared memory per block."""
    regs_warp = -(-regs * 32 // 256) * 256
    by_regs = regs_per_sm // max(regs_warp * num_warps, 1)
    by_threads = threads_per_sm // (32 * num_warps)
    by_smem = smem_per_sm // (shared + 1024) if shared else 32
    return max(0, min(by_regs, by_threads, by_smem, 32))


def report(spec, quant: str, group_size: int, batch: int, max_len: int, n_programs: int, arch: int = 90,
           maxnreg: Optional[int] = None, **tile_overrides) -> dict:
    compiled, tiles = compile_config(spec, quant, group_size, batch, max_len, n_programs, arch, maxnreg,
                                     **tile_overrides)
    use = ptxas_usage(compiled, arch)
    use["num_warps"] = tiles.num_warps
    use["programs_per_sm"] = programs_per_sm(use["regs"], tiles.num_warps, use["shared"])
    return use


def parse_overrides(items: list[str]) -> tuple[dict, dict]:
    """'key=value' strings -> (point options, TileConfig overrides); 'stage.field=v' edits one GemvTile."""
    import inspect

    from kernels.mega.lower import TileConfig, pick_tiles

    point, tiles = {}, {}
    # TileConfig fields, and pick_tiles' own keywords (gemv_rows, k_fold, ...) that re-derive the tiles
    defaults = {*TileConfig.__dataclass_fields__,
                *(p.name for p in inspect.signature(pick_tiles).parameters.values()
                  if p.kind is p.KEYWORD_ONLY and p.name != "interpret")}
    for item in items:
        key, _, val = item.partition("=")
        if key in ("model", "quant"):
            point[key] = val
        elif key in ("batch", "ctx", "group_size", "arch", "programs", "maxnreg"):
            point[key] = int(val)
        elif "." in key:
            stage, field = key.split(".", 1)
            tiles.setdefault(stage, {})[field] = int(val)
        elif key in defaults:
            tiles[key] = val.lower() == "true" if val.lower() in ("true", "false") else int(val)
        else:
            raise SystemExit(f"error: unknown option {key!r} (model, quant, batch, ctx, group_size, arch, programs, "
                             f"a TileConfig field or stage.field)")
    return point, tiles


def main(argv: Optional[list[str]] = None) -> None:
    from harness.models import named_spec
    from kernels.mega.lower import pick_tiles

    point, tile_edits = parse_overrides(sys.argv[1:] if argv is None else argv)
    spec = named_spec(point.get("model", "llama1b"))
    quant, batch = point.get("quant", "bf16"), point.get("batch", 1)
    ctx, group, arch = point.get("ctx", 1024), point.get("group_size", 128), point.get("arch", 90)
    n_programs = point.get("programs", 132)
    base = pick_tiles(spec, quant, group, batch, ctx + 1, n_programs, interpret=False)
    overrides = {k: (dataclasses.replace(getattr(base, k), **v) if isinstance(v, dict) else v)
                 for k, v in tile_edits.items()}
    use = report(spec, quant, group, batch, ctx + 1, n_programs, arch, point.get("maxnreg"), **overrides)
    print(" ".join(f"{k}={v}" for k, v in use.items()))


if __name__ == "__main__":
    main()
