"""Instructions per weight in the K loop of the per-op GEMV kernel, compiled for sm_90 on any machine.

The megakernel's GEMV stages run the same tile code (kernels/gemv.gemv_tile), so this is the quickest
check of whether a dequantisation change cuts the arithmetic the memory stream has to wait for. It
compiles kernels/gemv._gemv_kernel with Triton (ptxas ships with it), disassembles the cubin with
nvdisasm and counts the SASS instructions of the innermost K loop (the largest backward branch), per
weight handled by one thread per iteration, with a histogram of opcodes. Integer arguments are
declared 16-divisible, as Triton's launcher specialises them on the GPU.

    python scripts/gemv_sass.py --kind int4 --block-n 4 --block-k 1024 --groups-per-step 8
    python scripts/gemv_sass.py --kind int4 --block-n 64 --block-k 128 --dot
    python scripts/gemv_sass.py --kind dense --block-n 16 --block-k 512
    python scripts/gemv_sass.py --kind int8 --block-n 16 --block-k 1024 --k-fold 2

At 4.25 TB/s (an H200 copy), int4 streams 8.5e12 weights/s; 132 SMs x 4 schedulers x 32 lanes x 1.98 GHz
issue ~3.3e13 thread-instructions/s, so a loop above ~4 instructions per weight cannot keep up.
"""
from __future__ import annotations

import argparse
import collections
import inspect
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

INT_ARGS_16 = ("stride_xb", "stride_wn", "stride_rb", "stride_yb", "K", "N")


def compile_gemv(kind: str, b_pad: int, block_n: int, block_k: int, groups_per_step: int, use_dot: bool,
                 num_warps: int = 4, group: int = 128, has_norm: bool = True, arch: int = 90, k_fold: int = 1):
    """The compiled _gemv_kernel (bf16 activations) for these constexprs."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from kernels.gemv import _gemv_kernel
    from kernels.quant import Kind

    os.environ.pop("TRITON_INTERPRET", None)
    names = list(inspect.signature(_gemv_kernel.fn).parameters)
    ptrs = {n: "bf16" for n in ("x_ptr", "s_ptr", "z_ptr", "nw_ptr", "res_ptr", "y_ptr")}
    ptrs["w_ptr"] = "bf16" if kind == "dense" else ("u8" if kind == "int4" else "i8")
    cx = dict(KIND=int(Kind[kind.upper()]), GROUP=group, HAS_NORM=has_norm, HAS_RESIDUAL=False, B_PAD=b_pad,
              BLOCK_N=block_n, BLOCK_K=block_k, GROUPS_PER_STEP=groups_per_step, USE_DOT=use_dot,
              DOT_DTYPE=tl.bfloat16, FOLD=k_fold)
    sig = {n: "constexpr" if n in cx else "*" + ptrs[n] if n in ptrs else "fp32" if n == "eps" else "i32"
           for n in names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
             if sig[n].startswith("*") or n in INT_ARGS_16}
    src = ASTSource(_gemv_kernel, sig, {(names.index(k),): v for k, v in cx.items()}, attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})


def k_loop(cubin: bytes) -> list[str]:
    """Opcodes of the largest loop (a branch back to an earlier label) in the SASS of a cubin."""
    from triton.backends.nvidia.compiler import get_ptxas

    nvdisasm = os.path.join(os.path.dirname(get_ptxas(90).path), "nvdisasm")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        lines = subprocess.run([nvdisasm, "-c", f.name], capture_output=True, text=True, check=True).stdout.splitlines()
    ins, labels, pending = [], {}, None
    for line in lines:
        m = re.match(r"\s*\.(L_x_\d+):", line)
        if m:
            pending = m.group(1)
            continue
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s*(.*?);", line)
        if m:
            addr = int(m.group(1), 16)
            if pending:
                labels[pending], pending = addr, None
            ins.append((addr, m.group(2).strip()))
    best: list = []
    for addr, text in ins:
        m = re.search(r"BRA.*?\.(L_x_\d+)", text)
        if m and labels.get(m.group(1), addr + 1) < addr:
            body = [t for a, t in ins if labels[m.group(1)] <= a <= addr]
            best = body if len(body) > len(best) else best
    return [re.sub(r"^@!?U?P\w+\s+", "", t).split()[0].split(".")[0] for t in best]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kind", choices=("dense", "int8", "int4"), default="int4", help="the weights' storage kind")
    ap.add_argument("--batch-pad", type=int, default=1)
    ap.add_argument("--block-n", type=int, default=4)
    ap.add_argument("--block-k", type=int, default=1024, help="input columns per K step (int4: whole groups)")
    ap.add_argument("--groups-per-step", type=int, default=8)
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--dot", action="store_true", help="the tensor-core tile instead of the FMA tile")
    ap.add_argument("--num-warps", type=int, default=4)
    from kernels.tiles import K_FOLDS

    ap.add_argument("--k-fold", type=int, default=1, choices=K_FOLDS,
                    help="input columns per FMA accumulator (dense / int8; kernels/gemv.fold_mac)")
    a = ap.parse_args(argv)
    gps = a.groups_per_step if a.kind == "int4" else 1
    compiled = compile_gemv(a.kind, a.batch_pad, a.block_n, a.block_k, gps, a.dot, a.num_warps, a.group,
                            k_fold=a.k_fold)
    ops = k_loop(compiled.asm["cubin"])
    # weights one thread handles per loop iteration (the int4 tensor-core tile iterates over single groups)
    weights = a.block_n * (a.group * gps if a.kind == "int4" else a.block_k) / (32 * a.num_warps)
    top = ", ".join(f"{k} {v}" for k, v in collections.Counter(ops).most_common(10))
    fold = f" fold {a.k_fold}" if a.k_fold > 1 else ""
    print(f"{a.kind} {'dot' if a.dot else 'fma'}{fold} B_PAD={a.batch_pad} {a.block_n}x{a.block_k}: K loop {len(ops)} "
          f"instructions for {weights:g} weights/thread = {len(ops) / weights:.2f} per weight ({top})")


if __name__ == "__main__":
    main()
