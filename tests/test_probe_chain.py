"""scripts/probe_chain.py (the Gluon TMA-ring probe) compiles for sm_90 on the CPU with the pinned Triton, and its
shared memory is the ring it asks for: a change in Gluon's TMA / mbarrier API or a layout mistake fails here, before
any GPU time is spent."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_probe_compiles_for_sm90_with_the_ring_it_asks_for():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compile, not interpret
    env["PYTHONPATH"] = ROOT
    res = subprocess.run([sys.executable, "scripts/probe_chain.py", "--compile-only", "--dim", "1024", "--layers", "2",
                          "--bn", "32", "--bk", "256", "--nbuf", "4", "16"], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [l for l in res.stdout.splitlines() if "compiled" in l]
    assert len(lines) == 4, res.stdout  # wait, nowait, timeline, stream for the one ring that fits
    ring = 4 * 32 * 256 * 2
    for line in lines:
        shared = int(line.split("shared ")[1].split()[0])
        assert ring <= shared <= ring + 1024, line
    assert "NBUF 16: a ring of" in res.stdout and "skipped" in res.stdout  # 256 KB does not fit an SM


def test_host_weight_stream_is_the_order_the_kernel_computes():
    """The stream variant's table holds, per program, the (row, column) the plain loader computes for chunk j:
    layer-major, then the program's row blocks, then K chunks; every chunk of W exactly once over the programs."""
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("probe_chain", os.path.join(ROOT, "scripts", "probe_chain.py"))
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    d, n_layers, bn, bk, programs = 256, 3, 32, 64, 3
    w = torch.zeros(n_layers * d, d, dtype=torch.bfloat16)
    chain = probe.Chain(w, torch.zeros(d), n_layers, bn, bk, 2, 4, programs)
    table = chain.weight_stream()
    rows_blocks, kc = d // bn, d // bk
    seen = set()
    for p in range(programs):
        n_p = (rows_blocks - p + programs - 1) // programs
        for j in range(n_layers * n_p * kc):
            i = j // kc
            expect = ((i // n_p) * d + (p + (i % n_p) * programs) * bn, (j % kc) * bk)
            assert tuple(table[p, j].tolist()) == expect
            seen.add(expect)
    assert len(seen) == n_layers * rows_blocks * kc
