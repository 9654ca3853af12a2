"""The tensor-core quantized GEMV (kernels/qgemv._qgemv_kernel and _qgemv_chunk_kernel, Gluon) compiled for sm_90 on the CPU
(scripts/gemv_sass.py --kernel qgemv; ptxas and nvdisasm ship with Triton): guards its registers, spills and the
SASS of its K loop, deterministic for a pinned Triton.

Every configuration the launcher can choose at batch 1 is compiled (int4 groups 64 and 128, int8; bf16 and fp16 x; the plain
kernel at 4 and 8 warps and the chunked one at kernels.qgemv.pick_launch's choices; with and without the residual:
52 kernels, about 45 s cold on one core, in two processes), at batch 1 (B is
then a constant, as Triton's JIT makes it) and a 4096 x 4096 weight, with the launcher's own arguments and the JIT's
specialisation. The residual only changes the epilogue, but it is compiled anyway: each configuration can spill or
change its registers on its own.
"""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _script():
    spec = importlib.util.spec_from_file_location("gemv_sass", os.path.join(ROOT, "scripts", "gemv_sass.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # top level: the standard library only
    return mod


CONFIGS = _script().qgemv_configs()  # (kind, act, group, num_warps, residual, chunk)

# SASS instructions per weight in the K loop at batch 1, measured with Triton 3.6 (sm_90), by (kind, group, act,
# warps); the residual does not change the loop. A weight here is one a thread turns into MMA operands per
# iteration: 32 (int4 group 64, int8) or 64 (int4 group 128), see gemv_sass.qgemv_weights_per_thread. int4 loads
# its group scales and zeros once per row (kernels/qgemv._group_fold) and its weights and x unmasked, clamped into
# range (CLAMP); the counts before both are in parentheses.
#   int4 g64  bf16: 3.22 (103 / 32) at 4 warps, 3.19 at 8 (4.44)     int4 g64  fp16: 3.75 (120 / 32), 3.72 (4.84)
#   int4 g128 bf16: 2.25 (144 / 64) (2.95)                           int4 g128 fp16: 2.75 (176 / 64) (3.45)
#   int8 bf16: 3.12 (100 / 32) at 4 warps, 2.97 (95 / 32) at 8   int8 fp16: 2.38 (76 / 32) at 4, 2.44 (78 / 32) at 8
# Registers: int4 40 (g64), 54-58 (g128); int8 40 at 4 warps, 48-49 at 8; no spills.
MEASURED = {
    ("int4", 64, "bf16", 4, 0): 3.22, ("int4", 64, "bf16", 8, 0): 3.19,
    ("int4", 64, "fp16", 4, 0): 3.75, ("int4", 64, "fp16", 8, 0): 3.72,
    ("int4", 128, "bf16", 4, 0): 2.25, ("int4", 128, "bf16", 8, 0): 2.25,
    ("int4", 128, "fp16", 4, 0): 2.75, ("int4", 128, "fp16", 8, 0): 2.75,
    ("int8", 0, "bf16", 4, 0): 3.12, ("int8", 0, "bf16", 8, 0): 2.97,
    ("int8", 0, "fp16", 4, 0): 2.38, ("int8", 0, "fp16", 8, 0): 2.44,
    # the chunked kernel (_qgemv_chunk_kernel) at the launcher's choices; an iteration is `chunk` groups. Registers:
    # int4 g128 chunk 2 80-104, chunk 4 180-182 (138 and 253-255 before); g64 58-60 / 80; int8 chunk 2 80-82,
    # chunk 4 184; no spills. Before: g128 2.79 / 3.30 (c2), 2.89 / 3.39 (c4); g64 3.83 / 4.23 (c2), 3.66 / 4.28
    # (c4) (bf16 / fp16).
    ("int4", 128, "bf16", 4, 2): 2.33, ("int4", 128, "fp16", 4, 2): 2.77,
    ("int4", 128, "bf16", 4, 4): 2.22, ("int4", 128, "fp16", 4, 4): 2.72,
    ("int4", 64, "bf16", 4, 2): 2.97, ("int4", 64, "fp16", 4, 2): 3.44,
    ("int4", 64, "bf16", 4, 4): 2.87, ("int4", 64, "fp16", 4, 4): 3.37,
    ("int8", 0, "bf16", 4, 2): 2.80, ("int8", 0, "fp16", 4, 2): 1.92,
    ("int8", 0, "bf16", 8, 2): 2.80, ("int8", 0, "fp16", 8, 2): 1.97,
    ("int8", 0, "bf16", 4, 4): 2.96, ("int8", 0, "fp16", 4, 4): 2.13,
}
# A bound 5% above today's count: a few instructions of scheduling noise pass, one more instruction per weight
# pair (e.g. a 16-bit subtraction per fp16x2 operand: +0.5 per int4 weight) does not.
SLACK = 1.05


def _tools_missing() -> str:
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        ptxas = get_ptxas(90).path
    except Exception as e:  # noqa: BLE001 - any failure to find ptxas means: nothing to compile with
        return f"no ptxas in this Triton install ({e})"
    nvdisasm = os.path.join(os.path.dirname(ptxas), "nvdisasm")
    if not os.path.exists(nvdisasm):
        return f"no nvdisasm next to ptxas ({nvdisasm})"
    return ""


@pytest.fixture(scope="module")
def reports() -> dict:
    why = _tools_missing()
    if why:
        pytest.skip(why)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compile, not interpret
    env["PYTHONPATH"] = ROOT
    res = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "gemv_sass.py"), "--kernel", "qgemv", "--all",
                          "--json", "--jobs", "2"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = {}
    for line in res.stdout.splitlines():
        r = json.loads(line)
        out[(r["kind"], r["act"], r["group"], r["num_warps"], r["residual"], r["chunk"])] = r
    return out


@pytest.mark.parametrize("kind, act, group, warps, residual, chunk", CONFIGS,
                         ids=[f"{k}-g{g}-{a}-{w}w{'-res' if r else ''}{f'-c{c}' if c else ''}"
                              for k, a, g, w, r, c in CONFIGS])
def test_qgemv_k_loop(reports, kind, act, group, warps, residual, chunk):
    r = reports[(kind, act, group, warps, residual, chunk)]
    line = json.dumps({k: v for k, v in r.items() if k != "signature"})
    assert r["spill_bytes"] == 0 and r["stack"] == 0, line
    assert 0 < r["regs"] <= 255, line
    # one m16n8k16 MMA takes 16 x 16 weights of a warp: 8 per thread, so at least weights / 8 HMMA per iteration
    # (today twice that: each weight MMA has its MMA of x with ones)
    assert r["hmma"] >= r["weights"] // 8, line
    assert r["ldg"] > 0, line
    bound = MEASURED[(kind, group, act, warps, chunk)] * SLACK
    assert r["per_weight"] <= bound, f"{r['per_weight']} instructions per weight > {bound:.3f}: {line}"


def test_qgemv_compiled_with_the_jits_specialisation(reports):
    """At batch 1 B is a constant (Triton's JIT specialises an int of 1), so is the int8 scale's stride; every
    pointer and the 16-multiple ints are declared 16-divisible; x travels as int32 pairs."""
    int4 = reports[("int4", "bf16", 128, 8, False, 0)]["signature"]
    int8 = reports[("int8", "fp16", 0, 4, True, 0)]["signature"]
    assert int4["B"] == "=1" and int8["B"] == "=1", (int4, int8)
    assert int4["x_ptr"] == "*i32/16" and int4["w_ptr"] == "*i32/16" and int4["s_ptr"] == "*bf16/16", int4
    assert int8["s_ptr"] == "*fp16/16" and int8["res_ptr"] == "*fp16/16" and int8["stride_sn"] == "=1", int8
    assert int4["stride_sn"] == "i32/16" and int4["K"] == "i32/16", int4


# The TMA-ring variant (kernels/qgemv._qgemv_tma_kernel) at batch 1, 4 warps, 4096 x 4096: an iteration is one ring
# stage (one scale group per warp: as many weights per thread as _qgemv_kernel's iteration), measured with Triton 3.6
# (sm_90): int4 g128 bf16 3.08 (197 / 64; 3.44 before the per-row scales), 80 registers; int8 bf16 3.56 (114 / 32),
# 48 registers.
TMA_MEASURED = {("int4", 128): 3.08, ("int8", 0): 3.56}


@pytest.mark.parametrize("kind, group", list(TMA_MEASURED), ids=["int4-g128", "int8"])
def test_qgemv_tma_ring_compiles_for_sm90(kind, group):
    """The ring's shared memory is TMA_STAGES stages of one scale group per warp (plus an 8-byte barrier each), no
    spills, and the stage loop's instructions per weight within 5% of today's."""
    why = _tools_missing()
    if why:
        pytest.skip(why)
    from kernels.qgemv import TMA_STAGES, tma_stage_steps
    from kernels.quant import Kind

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT
    res = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "gemv_sass.py"), "--kernel", "qgemv", "--tma",
                          "--kind", kind, "--group", str(group or 128), "--json"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(res.stdout.splitlines()[-1])
    line = json.dumps({k: v for k, v in r.items() if k != "signature"})
    assert r["tma"] and r["spill_bytes"] == 0 and 0 < r["regs"] <= 255, line
    words = 32 * (4 if kind == "int4" else 8)
    stage = tma_stage_steps(Kind.INT4 if kind == "int4" else Kind.INT8, group, 4) * words * 4
    assert r["shared"] == TMA_STAGES * (stage + 8), line
    assert r["hmma"] >= r["weights"] // 8 and r["ldg"] > 0, line
    bound = TMA_MEASURED[(kind, group)] * SLACK
    assert r["per_weight"] <= bound, f"{r['per_weight']} instructions per weight > {bound:.3f}: {line}"
