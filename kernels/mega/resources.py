"""What one megakernel configuration costs the SM, found by compiling it for a GPU architecture on any
machine (no GPU needed): registers per thread, spills, shared memory, and so how many programs fit on
an SM. The persistent kernel's speed hinges on this (one program per SM leaves little memory-level
parallelism), and a compile here costs no GPU time. The command line is `python -m harness.resources`.

The kernel is compiled as the JIT would on the GPU: the same arguments (kernels/mega/args.py, as meta tensors
of the right types), constexprs and 16-byte pointer alignment; ptxas (shipped with Triton) reports the resources.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from typing import Optional

REGS_PER_SM = 65536
MAX_THREADS_PER_SM = 2048
SMEM_PER_SM = 228 * 1024


def compile_config(spec, quant: str, group_size: int, batch: int, max_len: int, n_programs: int, arch: int = 90,
                   timeline: bool = False, options=None):
    """Compiles the kernel of this configuration for sm_<arch>. Returns (compiled kernel, TileConfig)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from kernels.mega.args import constexprs, placeholder_args, pointer_paths, signature_of
    from kernels.mega.interpreter import _megakernel
    from kernels.mega.lower import lower, pick_tiles
    from kernels.quant import quant_mode

    tiles = pick_tiles(spec, quant, group_size, batch, max_len, n_programs, interpret=False, options=options)
    prog = lower(spec, quant, group_size, batch, max_len, tiles)
    dims, tile_cx = constexprs(prog, quant_mode(quant).act_dtype)
    args = placeholder_args(prog, quant, n_programs)
    names = [p.name for p in _megakernel.params]
    cx = dict(dims=dims, tiles=tile_cx, TIMELINE=timeline, CLOCK=1, L2_PREFETCH=tiles.l2_prefetch)
    sig = {n: signature_of(a) for n, a in zip(names, args)}
    sig.update({n: "constexpr" for n in cx})
    if list(sig) != names:
        raise RuntimeError(f"kernels/mega/args.py builds {list(sig)} but the kernel takes {names}")
    constants = {(names.index(k),): v for k, v in cx.items()}
    attrs = {path: [["tt.divisibility", 16]] for path in pointer_paths(args)}
    src = ASTSource(_megakernel, sig, constants, attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": tiles.num_warps})
    return compiled, tiles


def jit_source(kernel, args, kwargs: dict):
    """(source, num_warps) that triton.compile turns into the kernel the JIT would build on the GPU for this call
    (any @triton.jit or @gluon.jit function): each argument typed and specialised by Triton's own rule (16-byte
    alignment, ints divisible by 16, ints equal to 1 made constants, tensor descriptors), constexprs as passed. The
    arguments may live on the CPU: nothing is read or run."""
    import inspect

    from triton.backends.nvidia.compiler import CUDABackend
    from triton.compiler import ASTSource
    from triton.experimental.gluon._runtime import GluonASTSource, GluonJITFunction
    from triton.runtime.jit import native_specialize_impl

    kwargs = dict(kwargs)
    warps = kwargs.pop("num_warps", 4)
    bound = inspect.signature(kernel.fn).bind(*args, **kwargs).arguments
    sig, constants, attrs = {}, {}, {}
    for i, p in enumerate(kernel.params):
        v = bound[p.name]
        if p.is_constexpr:
            sig[p.name], constants[(i,)] = "constexpr", v
            continue
        ty, spec = native_specialize_impl(CUDABackend, v, p.is_const, not p.do_not_specialize,
                                          not p.do_not_specialize_on_alignment)
        sig[p.name] = ty
        _leaf_specs((i,), v, ty, spec, constants, attrs)
    source = GluonASTSource if isinstance(kernel, GluonJITFunction) else ASTSource
    return source(kernel, sig, constants, attrs), warps


def compile_jit(kernel, args, kwargs: dict, arch: int = 90):
    """`kernel` compiled for sm_<arch> on any machine, as the JIT would build it for this call (jit_source)."""
    import triton
    from triton.backends.compiler import GPUTarget

    src, warps = jit_source(kernel, args, kwargs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps})


def _leaf_specs(path: tuple, value, ty, spec, constants: dict, attrs: dict) -> None:
    """Constants and attributes of one argument, by path (a tuple argument's leaves are keyed (i, j, ...))."""
    from triton.backends.nvidia.compiler import CUDABackend

    if isinstance(ty, tuple):
        for j, (v, t, s) in enumerate(zip(value, ty, spec)):
            _leaf_specs(path + (j,), v, t, s, constants, attrs)
    elif ty == "constexpr":
        constants[path] = value
    elif spec:
        attrs[path] = CUDABackend.parse_attr(spec)


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
           options=None) -> dict:
    compiled, tiles = compile_config(spec, quant, group_size, batch, max_len, n_programs, arch, options=options)
    use = ptxas_usage(compiled, arch)
    use["num_warps"] = tiles.num_warps
    use["programs_per_sm"] = programs_per_sm(use["regs"], tiles.num_warps, use["shared"])
    return use
