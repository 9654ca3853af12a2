"""Per-op quantized GEMV benchmark at a model's projection shapes, on the GPU: the project's tensor-core GEMV
(kernels/qgemv.py) and its FMA-path Triton GEMV (kernels/gemv.py) next to cuBLAS bf16, torch's tinygemm int4,
gpt-fast's compiled int8 linear and GemLite int4 / int8 (when importable), timed in one process. Each cell: microseconds per call (CUDA graph replay,
L2 flushed before each call, median) and % of the copy bandwidth measured in the same process, bytes = weights +
scales / zeros + x + y; every implementation's output is checked against the fp32 reference first.
Timing: one CUDA graph calls the implementation on COPIES distinct copies of the weights in turn (together at
least 4x the L2, so no call finds its weights in L2; x stays hot, as in a decode step), replayed; the median
replay time divided by the calls in it.

    python scripts/qgemv_bench.py --models llama8b llama1b --quant int4 int8 --batch 1 8 [--variants]

--variants also times qgemv at each number of warps (K slices per program) in WARPS and each chunk (scale groups
per loop iteration, 0 = the plain kernel) in CHUNKS, and the TMA-ring kernel at each number of warps and ring depth
in TMA_DEPTHS. Writes qgemv_bench.csv to $OUT (or .).
"""
from __future__ import annotations

import argparse
import csv
import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from harness.models import named_spec  # noqa: E402
from harness.timing import measure_copy_bandwidth  # noqa: E402
from harness.torch_ops import TorchLinear, gemlite_layer  # noqa: E402
from kernels import reference as ref  # noqa: E402
from kernels.gemv import gemv, pick_config  # noqa: E402
from kernels.qgemv import MAX_BATCH, qgemv  # noqa: E402
from kernels.quant import quantize_linear  # noqa: E402

WARPS = (4, 8)
CHUNKS = (0, 2, 4)  # 0: _qgemv_kernel; n: _qgemv_chunk_kernel with n groups per iteration (1 measured as 0)
TMA_DEPTHS = (4, 8)  # ring depths of _qgemv_tma_kernel
L2_BYTES = 50 << 20  # H100 / H200


def time_rotating(calls: list, reps: int = 5) -> float:
    """Median microseconds per call of `calls` (closures over distinct weight copies), from one CUDA graph that runs
    each of them in turn, several rounds."""
    import statistics

    for c in calls:
        c()
    torch.cuda.synchronize()
    rounds = max(1, 32 // len(calls))
    graph = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        with torch.cuda.graph(graph, stream=side):
            for _ in range(rounds):
                for c in calls:
                    c()
    torch.cuda.current_stream().wait_stream(side)
    graph.replay()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / (rounds * len(calls)))
    return statistics.median(times)


def _copies(w, n: int) -> list:
    """n QLinears holding the same numbers in distinct memory."""
    from kernels.quant import QLinear

    cl = lambda t: None if t is None else t.clone()  # noqa: E731
    return [w] + [QLinear(w.kind, w.weight.clone(), w.out_features, w.in_features, cl(w.scale), cl(w.zero),
                          w.group_size) for _ in range(n - 1)]


@functools.lru_cache(maxsize=None)
def _gptfast_int8():
    """gpt-fast's weight-only int8 linear, F.linear(x, W.to(x.dtype)) * scale, under torch.compile with Inductor's
    coordinate-descent tuning (its recipe): Inductor fuses the cast into a GEMV reduction. One compiled function for
    every shape (weights are arguments), each shape and batch its own autotuned kernel: a single autotuning draw
    (docs/perf-notes.md: picks differ from build to build)."""
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config

    inductor_config.coordinate_descent_tuning = True
    dynamo_config.cache_size_limit = dynamo_config.accumulated_cache_size_limit = 512  # a variant per shape
    return torch.compile(lambda x, q, s: F.linear(x, q.to(x.dtype)) * s, fullgraph=True, dynamic=False)


def _shapes(spec) -> dict[str, tuple[int, int]]:
    s = spec.linear_shapes()
    return {"qkv": s["wqkv"], "o": s["wo"], "gate": s["w_gate"], "down": s["w_down"], "lm": (spec.vocab_size, spec.dim)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["llama8b"])
    ap.add_argument("--quant", nargs="+", default=["int4", "int8"], choices=("int4", "int8"))
    ap.add_argument("--batch", nargs="+", type=int, default=[1])
    ap.add_argument("--only", nargs="+", default=None, metavar="PREFIX",
                    help="time only the implementations whose names start with one of these (e.g. qgemv cublas)")
    ap.add_argument("--variants", action="store_true",
                    help="also qgemv at each number of warps in WARPS and each chunk in CHUNKS, and the TMA-ring "
                         "kernel at each ring depth in TMA_DEPTHS")
    a = ap.parse_args()

    def wanted(name: str) -> bool:  # --only's filter, applied before anything costly is built
        return not a.only or name.startswith(tuple(a.only))
    dev = torch.device("cuda")
    copy = measure_copy_bandwidth(dev)
    gpu = torch.cuda.get_device_name(dev)
    from harness.results import git_sha

    sha = git_sha()  # every row names the commit that measured it ("-dirty": not a clean tree)
    path = os.path.join(os.environ.get("OUT", "."), "qgemv_bench.csv")
    out = open(path, "w", newline="")  # written row by row: a run cut short by a time limit keeps its rows
    wr = None
    print(f"{gpu}, copy {copy:.3f} TB/s", flush=True)
    for model in a.models:
        spec = named_spec(model)
        for quant in a.quant:
            for layer, (n, k) in _shapes(spec).items():
                gen = torch.Generator(device=dev).manual_seed(n + k)
                dense = (torch.randn(n, k, generator=gen, device=dev) * k ** -0.5).to(torch.bfloat16)
                w = quantize_linear(dense, quant, 128)
                w_dense = w.dequantize(torch.bfloat16)
                copies = max(1, min(16, -(-4 * L2_BYTES // w.nbytes)))
                ws = _copies(w, copies)
                dense_copies = [w_dense] + [w_dense.clone() for _ in range(max(1, min(16, -(-4 * L2_BYTES // (
                    w_dense.numel() * 2)))) - 1)]
                # name -> list of callables x -> y, one per weight copy
                impls = {"cublas-bf16": [lambda x, wd=wd: F.linear(x, wd) for wd in dense_copies],
                         # an explicit config keeps kernels.gemv on its FMA kernel once qgemv made fragments
                         "triton-fma": [lambda x, wi=wi: gemv(x, wi, config=pick_config(x, wi)) for wi in ws]}
                for name, make in (("tinygemm", TorchLinear), ("gemlite", gemlite_layer)):  # callable layers
                    if (name == "tinygemm" and quant != "int4") or not wanted(name):
                        continue  # not built where it will not be timed (GemLite packs every weight copy)
                    try:
                        impls[name] = [make(wi) for wi in ws]
                    except Exception as e:  # noqa: BLE001 - an optional library: report and go on
                        print(f"{model} {quant} {layer}: {name} unavailable: {type(e).__name__}: {str(e)[:200]}")
                if quant == "int8" and wanted("gptfast-int8"):
                    step = _gptfast_int8()  # Inductor's fused GEMV of the gpt-fast recipe (one autotuning draw)
                    impls["gptfast-int8"] = [lambda x, wi=wi: step(x, wi.weight, wi.scale) for wi in ws]
                impls["qgemv"] = [lambda x, wi=wi: qgemv(x, wi) for wi in ws]
                if a.variants:
                    for wp in WARPS:
                        for ch in CHUNKS:
                            impls[f"qgemv-w{wp}-c{ch}"] = [
                                lambda x, wi=wi, wp=wp, ch=ch: qgemv(x, wi, warps=wp, chunk=ch) for wi in ws]
                        for st in TMA_DEPTHS:
                            impls[f"qgemv-tma-w{wp}-s{st}"] = [
                                lambda x, wi=wi, wp=wp, st=st: qgemv(x, wi, warps=wp, tma=True, stages=st) for wi in ws]
                impls = {k: v for k, v in impls.items() if wanted(k)}
                q_bytes = w.nbytes
                for batch in a.batch:
                    x = torch.randn(batch, k, generator=gen, device=dev).to(torch.bfloat16)
                    expect = ref.gemv_fp32(x, w)
                    io = 2 * batch * (n + k)
                    for name, fns in impls.items():
                        if name.startswith("qgemv") and batch > MAX_BATCH:
                            continue
                        try:
                            y = fns[0](x).float()
                            err = float((y - expect).norm() / expect.norm())
                            us = time_rotating([lambda f=f: f(x) for f in fns])
                        except Exception as e:  # noqa: BLE001
                            print(f"{model} {quant} {layer} B{batch} {name}: failed: {type(e).__name__}: {str(e)[:300]}")
                            continue
                        nbytes = (w_dense.numel() * 2 if name == "cublas-bf16" else q_bytes) + io
                        pct = 100 * nbytes / (us * 1e-6) / (copy * 1e12)
                        row = dict(gpu=gpu, model=model, quant=quant, layer=layer, n=n, k=k, batch=batch, impl=name,
                                   latency_us=round(us, 2), bytes=nbytes, pct_of_copy_bw=round(pct, 1),
                                   rel_err=f"{err:.2e}", copy_tbps=round(copy, 3), copies=len(fns), git_sha=sha)
                        if wr is None:
                            wr = csv.DictWriter(out, fieldnames=list(row))
                            wr.writeheader()
                        wr.writerow(row)
                        out.flush()
                        print(f"{model:8} {quant:5} {layer:5} {n:6}x{k:<6} B{batch:<2} {name:14} {us:9.1f} us "
                              f"{pct:6.1f}% rel_err {err:.1e}", flush=True)
                del w, ws, w_dense, dense_copies, dense, impls
                torch.cuda.empty_cache()
    out.close()
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
