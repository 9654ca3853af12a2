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

--kernel qgemv compiles the tensor-core quantized GEMV instead (kernels/qgemv._qgemv_kernel, Gluon: inline-asm
dequantisation + mma.sync), with the arguments and specialisation its launcher gives it, and reports registers and
spills (ptxas -v), the K loop's instructions per weight and its HMMA / LDG counts; --all does every configuration the
launcher can choose:

    python scripts/gemv_sass.py --kernel qgemv --kind int4 --act bf16 --group 128 --num-warps 8
    python scripts/gemv_sass.py --kernel qgemv --all --jobs 2

--kernel mega-gluon compiles the whole Gluon megakernel (kernels/mega/hopper.compile_sm90) for one model, quant and
batch, and reports every innermost loop that takes chunks from the weight ring (the chunk loops of its GEMV tiles): SASS
instructions, HMMA, barriers, and thread-instructions per weight byte of a chunk (one warp's 16 rows x 256 columns):

    python scripts/gemv_sass.py --kernel mega-gluon --model llama8b --quant int8 --batch 1

At 4.25 TB/s (an H200 copy), int4 streams 8.5e12 weights/s; 132 SMs x 4 schedulers x 32 lanes x 1.98 GHz
issue ~3.3e13 thread-instructions/s, so a loop above ~4 instructions per weight cannot keep up.
"""
from __future__ import annotations

import argparse
import collections
import inspect
import json
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
    """Opcodes of the largest loop (a conditional branch back to an earlier label) in the SASS of a cubin."""
    return max(loops(cubin), key=lambda body: len(body[1]), default=(0, []))[1]


def loops(cubin: bytes, full: bool = False) -> list[tuple[bool, list[str]]]:
    """Every loop (a conditional branch back to an earlier label) in the SASS of a cubin, in address order:
    (whether it is innermost, i.e. holds no other loop's back edge, its opcodes: with full, their modifiers too,
    e.g. SYNCS.PHASECHK.TRANS64.TRYWAIT)."""
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
    spans = []
    for addr, text in ins:
        m = re.search(r"BRA.*?\.(L_x_\d+)", text)
        # a loop's back edge is conditional; an unconditional branch back is the return from an out-of-line path
        # (e.g. the retry of an mbarrier wait), whose "body" would span the code after the loop
        if m and text.startswith("@") and labels.get(m.group(1), addr + 1) < addr:
            spans.append((labels[m.group(1)], addr))
    out = []
    for (lo, hi), inner in zip(spans, innermost(spans)):
        ops = [re.sub(r"^@!?U?P\w+\s+", "", t).split()[0] for a, t in ins if lo <= a <= hi]
        out.append((inner, ops if full else [op.split(".")[0] for op in ops]))
    return out


def innermost(spans: list[tuple[int, int]]) -> list[bool]:
    """Per loop span (first, last address or index): whether it holds no other span."""
    return [not any(lo <= a < b <= hi and (a, b) != (lo, hi) for a, b in spans) for lo, hi in spans]


# ----------------------------------------------------------------------------------------------
# kernels/mega/hopper.py: the Gluon megakernel's chunk loops
# ----------------------------------------------------------------------------------------------
def mega_report(model: str, quant: str, batch: int) -> dict:
    """Registers, spills and the chunk loops (innermost loops that take ring chunks) of the Gluon megakernel
    compiled for sm_90: per loop its chunks (one mbarrier wait each: a tile's loop takes two a turn), and per chunk
    its SASS instructions, HMMA and BAR counts, its products (column groups) and thread-instructions per weight byte
    (each warp's 16 rows of a [64, 256] chunk)."""
    from harness.models import named_spec
    from kernels.mega import hopper
    from kernels.mega.resources import ptxas_usage
    from kernels.quant import quant_mode

    os.environ.pop("TRITON_INTERPRET", None)
    spec = named_spec(model)
    c = hopper.compile_sm90(spec, quant, batch, 1024, 132)
    wbytes = quant_mode(quant).weight_bits // 8
    per_product = hopper.BK // 16  # mma.sync k-steps per product (over one or two accumulator chains)
    b_tiles = hopper.pick_tiles(spec, batch, 1024, 132).b_pad // 8  # n-tiles of 8 batch rows per k-step
    chunk_bytes = 16 * hopper.BK * wbytes  # one warp's weight bytes per chunk, whatever the column groups
    rows = []
    for inner, full in loops(c.asm["cubin"], full=True):
        ops = [op.split(".")[0] for op in full]
        hmma = ops.count("HMMA")
        chunks = sum(op.startswith("SYNCS.PHASECHK") for op in full)  # the ring's mbarrier waits
        # attention's key-block loop has products but no ring wait
        if not inner or not chunks or hmma == 0 or hmma % (per_product * b_tiles * chunks):
            continue
        rows.append(dict(chunks=chunks, instructions=round(len(ops) / chunks, 1), hmma=hmma // chunks,
                         products=hmma // (per_product * b_tiles * chunks), bar=round(ops.count("BAR") / chunks, 1),
                         tma=ops.count("UTMALDG"), local=ops.count("STL") + ops.count("LDL"),
                         per_byte=round(len(ops) / chunks * 32 / chunk_bytes, 2),
                         top=collections.Counter(ops).most_common(6)))
    return dict(model=model, quant=quant, batch=batch, **ptxas_usage(c), loops=rows)


# ----------------------------------------------------------------------------------------------
# kernels/qgemv.py: the tensor-core quantized GEMV
# ----------------------------------------------------------------------------------------------
# Every configuration the launcher (kernels.qgemv.qgemv) can choose: kernels.qgemv.supported takes int8 and int4
# groups of 64 or 128, the launcher bf16 and fp16 x, pick_launch 4 or 8 warps and a chunk of 0, 2 or 4 groups, and
# a residual or none.
QGEMV_KINDS = (("int4", 64), ("int4", 128), ("int8", 0))
QGEMV_ACTS = ("bf16", "fp16")
QGEMV_WARPS = (4, 8)


def qgemv_launch(kind: str, act: str, group: int, num_warps: int, residual: bool, batch: int = 1, n: int = 4096,
                 k: int = 4096, chunk: int = 0, tma: bool = False) -> tuple[tuple, dict]:
    """(args, kwargs) kernels.qgemv.qgemv launches _qgemv_kernel with for an [n, k] weight and x [batch, k]: the
    launcher itself is called with placeholder CPU tensors (never read) and the launch is intercepted, so the
    arguments, dtypes, strides and constexprs are the launcher's own."""
    import torch

    from kernels import qgemv as q
    from kernels.quant import Kind, QLinear

    dt = {"bf16": torch.bfloat16, "fp16": torch.float16}[act]
    tiles, steps = -(-n // q.FRAG_ROWS), -(-k // 64)
    if kind == "int4":
        scale = torch.empty(n, k // group, dtype=dt)
        w = QLinear(Kind.INT4, torch.empty(n, k // 2, dtype=torch.uint8), n, k, scale, torch.empty_like(scale), group)
        w.frag = torch.empty(tiles, steps, 32, 4, dtype=torch.int32)
    elif kind == "int8":
        w = QLinear(Kind.INT8, torch.empty(n, k, dtype=torch.int8), n, k, torch.empty(n, dtype=dt))
        w.frag = torch.empty(tiles, steps, 32, 8, dtype=torch.int32)
    else:
        raise ValueError(f"qgemv takes int4 and int8 weights, not {kind}")
    x = torch.empty(batch, k, dtype=dt)
    res = torch.empty(batch, n, dtype=dt) if residual else None
    calls = []

    class _Capture:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: calls.append((args, kwargs))

    kernels = q._qgemv_kernel, q._qgemv_chunk_kernel, q._qgemv_tma_kernel
    q._qgemv_kernel = q._qgemv_chunk_kernel = q._qgemv_tma_kernel = _Capture()
    try:
        q.qgemv(x, w, res, warps=num_warps, chunk=chunk, tma=tma)
    finally:
        q._qgemv_kernel, q._qgemv_chunk_kernel, q._qgemv_tma_kernel = kernels
    (args, kwargs), = calls
    return args, kwargs


def qgemv_source(kind: str, act: str, group: int, num_warps: int, residual: bool, batch: int = 1, n: int = 4096,
                 k: int = 4096, chunk: int = 0, tma: bool = False):
    """(GluonASTSource, num_warps) of the launch above, specialised as Triton's JIT would on the GPU: pointers
    16-byte aligned (torch allocates at 256 bytes on the GPU; the CPU placeholders at 64), ints that are multiples
    of 16 declared divisible by 16, ints equal to 1 made constants (at batch 1: B; int8: the scale's stride), by
    Triton's own specialisation function. Bools and constexprs as passed."""
    from kernels.mega.resources import jit_source
    from kernels.qgemv import _qgemv_chunk_kernel, _qgemv_kernel, _qgemv_tma_kernel

    kernel = _qgemv_tma_kernel if tma else _qgemv_chunk_kernel if chunk else _qgemv_kernel
    args, kwargs = qgemv_launch(kind, act, group, num_warps, residual, batch, n, k, chunk, tma)
    return jit_source(kernel, args, kwargs)


def compile_qgemv(kind: str, act: str, group: int, num_warps: int, residual: bool, arch: int = 90, batch: int = 1,
                  n: int = 4096, k: int = 4096, chunk: int = 0, tma: bool = False):
    """The compiled kernels/qgemv._qgemv_kernel for x [batch, k] (bf16 / fp16) and an [n, k] int4 (group 64 or 128)
    or int8 weight, with the launcher's arguments (qgemv_launch) and the JIT's specialisation (qgemv_source)."""
    os.environ.pop("TRITON_INTERPRET", None)
    import triton
    from triton.backends.compiler import GPUTarget

    src, warps = qgemv_source(kind, act, group, num_warps, residual, batch, n, k, chunk, tma)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps})


def qgemv_weights_per_thread(kind: str, group: int, chunk: int = 0) -> int:
    """Weights one thread turns into MMA operands per K loop iteration, from the kernel's constexprs: an iteration
    is one scale group of KPG k-steps of 64 columns (int4: GROUP / 64; int8: 1); in a k-step a lane holds WPL
    32-bit words of each of its RT row tiles (int4: 4 words of 8 nibbles; int8: 8 words of 4 bytes), so RT x KPG
    x WPL x (weights per word) = RT x KPG x 32: the 16 rows x 64 columns of a k-step tile over the 32 lanes of the
    warp that owns it (the warps of a program split K, so the count does not depend on them). The chunked kernel
    (chunk >= 1) takes `chunk` groups per iteration. The TMA-ring kernel's iteration (a ring stage) is one group
    per warp too."""
    from kernels.qgemv import _RT

    kpg, wpl, per_word = (max(group, 64) // 64, 4, 8) if kind == "int4" else (1, 8, 4)
    return _RT * kpg * wpl * per_word * max(chunk, 1)


def qgemv_signature(kind: str, act: str, group: int, num_warps: int, residual: bool, batch: int = 1,
                    n: int = 4096, k: int = 4096, chunk: int = 0, tma: bool = False) -> dict:
    """What the kernel is compiled for, per non-constexpr parameter: its type, "/16" where declared divisible by 16,
    or "=value" where specialised as a constant."""
    src, _ = qgemv_source(kind, act, group, num_warps, residual, batch, n, k, chunk, tma)
    out = {}
    for i, (name, ty) in enumerate(src.signature.items()):
        if (i,) in src.constants and ty == "constexpr" and not _qgemv_param(name).is_constexpr:
            out[name] = f"={src.constants[(i,)]}"
        elif ty != "constexpr":
            out[name] = ty + ("/16" if ["tt.divisibility", 16] in src.attrs.get((i,), []) else "")
    return out


def _qgemv_param(name: str):
    from kernels.qgemv import _qgemv_chunk_kernel, _qgemv_kernel, _qgemv_tma_kernel

    return next(p for p in _qgemv_kernel.params + _qgemv_chunk_kernel.params + _qgemv_tma_kernel.params
                if p.name == name)


def qgemv_report(kind: str, act: str, group: int, num_warps: int, residual: bool, batch: int = 1, n: int = 4096,
                 k: int = 4096, arch: int = 90, chunk: int = 0, tma: bool = False) -> dict:
    """Registers, spills, shared memory and the K loop's instruction counts of one configuration (and its
    signature)."""
    from kernels.mega.resources import ptxas_usage

    compiled = compile_qgemv(kind, act, group, num_warps, residual, arch, batch, n, k, chunk, tma)
    use = ptxas_usage(compiled, arch)
    ops = k_loop(compiled.asm["cubin"])
    weights = qgemv_weights_per_thread(kind, group, chunk)
    hist = collections.Counter(ops)
    return dict(kind=kind, act=act, group=group if kind == "int4" else 0, num_warps=num_warps, residual=residual,
                batch=batch, n=n, k=k, chunk=chunk, tma=tma, shared=compiled.metadata.shared, regs=use["regs"],
                spill_bytes=use["spill_stores"] + use["spill_loads"],
                stack=use["stack"], loop=len(ops), weights=weights, per_weight=round(len(ops) / weights, 4),
                hmma=hist["HMMA"], ldg=hist["LDG"], top=dict(hist.most_common(10)),
                signature=qgemv_signature(kind, act, group, num_warps, residual, batch, n, k, chunk, tma))


def qgemv_configs() -> list[tuple]:
    """(kind, act, group, num_warps, residual, chunk) of every configuration the launcher can choose at batch 1: the
    plain kernel at 4 and 8 warps, and the chunked kernel at the (warps, chunk) kernels.qgemv.pick_launch picks at
    batch <= 8 (batch 9-16, two n-tiles, is not compiled here)."""
    from kernels.qgemv import pick_launch
    from kernels.quant import Kind

    out = []
    for kind, group in QGEMV_KINDS:
        kd = Kind.INT4 if kind == "int4" else Kind.INT8
        # the launcher's chunked choices on a 132-SM GPU: a short weight taller than wide (qkv-like), a square one
        # (o-like) and a long one (down-like)
        shapes = ((6144, 4096), (4096, 4096), (4096, 14336))
        chunked = sorted({pick_launch(kd, n, k, 1, 132) for n, k in shapes} - {(4, 0), (8, 0)})
        for act in QGEMV_ACTS:
            for warps, chunk in [(w, 0) for w in QGEMV_WARPS] + chunked:
                out += [(kind, act, group, warps, residual, chunk) for residual in (False, True)]
    return out


def _qgemv_line(r: dict) -> str:
    name = f"qgemv {r['kind']}{' g' + str(r['group']) if r['kind'] == 'int4' else ''} {r['act']} {r['num_warps']} warps"
    name += " +residual" if r["residual"] else ""
    name += f" chunk {r['chunk']}" if r.get("chunk") else ""
    name += f" TMA ring ({r['shared']} B shared)" if r.get("tma") else ""
    top = ", ".join(f"{k} {v}" for k, v in r["top"].items())
    return (f"{name} B={r['batch']} {r['n']}x{r['k']}: {r['regs']} registers, {r['spill_bytes']} spill bytes; K loop "
            f"{r['loop']} instructions for {r['weights']} weights/thread = {r['per_weight']:.2f} per weight, "
            f"HMMA {r['hmma']}, LDG {r['ldg']} ({top})")


def _qgemv_report_star(cfg: tuple) -> dict:
    return qgemv_report(*cfg)


def qgemv_main(a) -> None:
    import json

    batch, n, k = a.batch, a.n, a.k
    if a.all:
        # the ring kernel has no chunk: with --tma, the plain configurations only
        cfgs = [(*c[:5], batch, n, k, 90, c[5], a.tma) for c in qgemv_configs() if not (a.tma and c[5])]
    else:
        group = a.group if a.kind == "int4" else 0
        cfgs = [(a.kind, a.act, group, a.num_warps, a.residual, batch, n, k, 90, a.chunk, a.tma)]
    if a.jobs > 1 and len(cfgs) > 1:
        import concurrent.futures
        import multiprocessing

        # fork: the workers start with torch and Triton imported; the parent has compiled nothing
        with concurrent.futures.ProcessPoolExecutor(a.jobs, mp_context=multiprocessing.get_context("fork")) as ex:
            results = ex.map(_qgemv_report_star, cfgs)
            for r in results:
                print(json.dumps(r) if a.json else _qgemv_line(r), flush=True)
    else:
        for c in cfgs:
            r = qgemv_report(*c)
            print(json.dumps(r) if a.json else _qgemv_line(r), flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kernel", choices=("gemv", "qgemv", "mega-gluon"), default="gemv",
                    help="gemv: kernels/gemv._gemv_kernel (FMA or tl.dot tile); qgemv: kernels/qgemv._qgemv_kernel "
                         "(Gluon, mma.sync), compiled as its launcher would (int4 / int8 only); mega-gluon: the "
                         "Gluon megakernel's chunk loops (--model, --quant, --batch)")
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
    q = ap.add_argument_group("--kernel qgemv (--kind, --group and --num-warps above apply too)")
    q.add_argument("--act", choices=QGEMV_ACTS, default="bf16", help="activation (x, scale, y) dtype")
    q.add_argument("--residual", action="store_true", help="with the residual input")
    q.add_argument("--chunk", type=int, default=0, choices=(0, 1, 2, 4),
                   help="0: kernels/qgemv._qgemv_kernel; 1, 2, 4: _qgemv_chunk_kernel with that many groups per "
                        "iteration")
    q.add_argument("--tma", action="store_true",
                   help="kernels/qgemv._qgemv_tma_kernel (the weights through a TMA ring in shared memory)")
    q.add_argument("--batch", type=int, default=1, help="rows of x (1..16; 1 is specialised as a constant)")
    q.add_argument("--n", type=int, default=4096, help="output rows of the weight")
    q.add_argument("--k", type=int, default=4096, help="input columns of the weight")
    q.add_argument("--all", action="store_true", help="every configuration the launcher can choose")
    q.add_argument("--jobs", type=int, default=1, help="compile in this many processes")
    q.add_argument("--json", action="store_true", help="one JSON object per configuration")
    m = ap.add_argument_group("--kernel mega-gluon (--batch above applies too)")
    m.add_argument("--model", default="llama8b", help="a model name of conf/model (its shape only)")
    m.add_argument("--quant", choices=("bf16", "fp16", "int8"), default="bf16", help="the weights' quant mode")
    a = ap.parse_args(argv)
    if a.kernel == "mega-gluon":
        r = mega_report(a.model, a.quant, a.batch)
        if a.json:
            print(json.dumps(r))
            return
        print(f"mega-gluon {a.model} {a.quant} B{a.batch}: {r['regs']} registers, {r['spill_stores']} bytes of spill "
              f"stores")
        for i, lp in enumerate(r["loops"]):
            top = ", ".join(f"{k} {v}" for k, v in lp["top"])
            print(f"  chunk loop {i} ({lp['chunks']} chunks a turn), per chunk: {lp['products']} product(s), "
                  f"{lp['instructions']} instructions, {lp['hmma']} HMMA, {lp['bar']} BAR = {lp['per_byte']:.2f} "
                  f"per weight byte (per turn: {top})")
        return
    if a.kernel == "qgemv":
        if a.kind == "dense" and not a.all:
            ap.error("--kernel qgemv takes --kind int4 or int8")
        if a.kind == "int4" and a.group not in (64, 128) and not a.all:
            ap.error("--kernel qgemv takes int4 groups of 64 or 128")
        qgemv_main(a)
        return
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
