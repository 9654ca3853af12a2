"""Warp-stall samples per SASS loop, from an Nsight Compute source export: where a kernel's warps spend their time,
loop by loop (the megakernel's chunk loops, its waits, its loader).

    ncu -k regex:megakernel_gluon --launch-skip 2 --launch-count 1 --section WarpStateStats \\
        --section SourceCounters -o mk python3 run.py model=llama8b quant=int8 impl=megakernel bench.cuda_graphs=false
    ncu --import mk.ncu-rep --page source --csv --print-source sass > mk_sass.csv
    python scripts/ncu_loops.py mk_sass.csv

A loop is a conditional branch back to an earlier address; only innermost loops are listed, those holding at least
--min-share of the samples. Per loop: its instructions, HMMA count, iterations (executions of its back edge), its
share of the samples (without the NOPs that idle warps park on) and its top stall reasons. Also the shared-memory
wavefronts per opcode, with the excess over the ideal (bank conflicts).
"""
from __future__ import annotations

import argparse
import collections
import csv
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root

from scripts.gemv_sass import innermost  # noqa: E402  (the same loop nesting rule as the SASS counts)


def _num(text: str) -> float:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return 0.0


def summarise(path: str, min_share: float = 0.003) -> str:
    rows = list(csv.reader(open(path)))
    hdr, data = (rows[1], rows[2:]) if len(rows) > 1 else ([], [])
    ix = {h: i for i, h in enumerate(hdr)}
    need = ["Address", "Source", "Warp Stall Sampling (All Samples)", "Instructions Executed",
            "L1 Wavefronts Shared Excessive", "L1 Wavefronts Shared"]
    missing = [h for h in need if h not in ix]
    if missing:
        raise SystemExit(f"error: {path} is not an Nsight Compute SASS source export (no column {missing[0]!r}): "
                         f"write one with `ncu --import R.ncu-rep --page source --csv --print-source sass`, "
                         f"from a report with the SourceCounters and WarpStateStats sections")
    stalls = [h for h in hdr if h.startswith("stall_") and "Not Issued" not in h]
    addr = [int(r[ix["Address"]], 16) for r in data]
    src = [r[ix["Source"]].strip() for r in data]
    samples = [_num(r[ix["Warp Stall Sampling (All Samples)"]]) for r in data]
    execs = [_num(r[ix["Instructions Executed"]]) for r in data]
    where = {a: i for i, a in enumerate(addr)}
    spans = []
    for i, s in enumerate(src):
        m = re.search(r"BRA 0x([0-9a-f]+)", s)
        if m and s.startswith("@") and int(m.group(1), 16) < addr[i] and int(m.group(1), 16) in where:
            spans.append((where[int(m.group(1), 16)], i))
    inner = [span for span, inner in zip(spans, innermost(spans)) if inner]
    idle = sum(n for n, s in zip(samples, src) if s.startswith("NOP"))
    busy = sum(samples) - idle
    out = [f"{path}: {sum(samples):.0f} samples, {idle:.0f} on NOPs (idle warps), {busy:.0f} others"]
    for a, b in sorted(inner):
        n = sum(samples[a:b + 1]) - sum(samples[j] for j in range(a, b + 1) if src[j].startswith("NOP"))
        if n < min_share * busy:
            continue
        why = collections.Counter()
        for j in range(a, b + 1):
            for s in stalls:
                why[s] += _num(data[j][ix[s]])
        top = ", ".join(f"{k[6:]} {100 * v / max(n, 1):.0f}%" for k, v in why.most_common(4))
        hmma = sum("HMMA" in s for s in src[a:b + 1])
        out.append(f"loop {addr[a] - addr[0]:6x}-{addr[b] - addr[0]:6x}: {b - a + 1:4d} instructions, {hmma:3d} HMMA, "
                   f"{execs[b]:9.0f} iterations, {100 * n / max(busy, 1):5.1f}% of samples; {top}")
    excess, total = collections.Counter(), collections.Counter()
    for r, s in zip(data, src):
        words = s.split()
        if not words:
            continue
        op = words[1] if words[0].startswith("@") and len(words) > 1 else words[0]
        excess[op] += _num(r[ix["L1 Wavefronts Shared Excessive"]])
        total[op] += _num(r[ix["L1 Wavefronts Shared"]])
    out.append("shared-memory wavefronts per opcode (excess over ideal / all):")
    out += [f"  {op:24s} {excess[op]:12.0f} / {v:12.0f}" for op, v in total.most_common(8) if v]
    return "\n".join(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv", nargs="+", help="ncu --page source --csv --print-source sass exports")
    ap.add_argument("--min-share", type=float, default=0.003, help="smallest share of samples a listed loop holds")
    a = ap.parse_args(argv)
    for path in a.csv:
        print(summarise(path, a.min_share))


if __name__ == "__main__":
    main()
