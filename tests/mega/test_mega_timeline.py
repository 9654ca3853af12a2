"""The per-program timeline (kernels/mega: TIMELINE constexpr; harness/timeline.py) on the CPU, where the clock
is logical: every instruction is recorded once, in queue order, with start <= ready <= end, and the same
logits as without the timeline; the table, summaries and plot are built from it. Plus the compile-anywhere
resource report: the GPU kernel compiles for sm_90 here, only the timeline variant reads the timer and only
the l2_prefetch variant issues L2 prefetches."""
import os
import subprocess
import sys

from types import SimpleNamespace

import pytest
import torch

from kernels import interpreting
from kernels.mega.runtime import Megakernel, occupancy
from mega_checks import INTERPRETER_WARNINGS, make_case

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.skipif(not interpreting(), reason="CPU test through the Triton interpreter")
@INTERPRETER_WARNINGS
@pytest.mark.parametrize("fusion", ["model", "block"])
def test_timeline_records_every_instruction_in_order(fusion, tmp_path):
    pd = pytest.importorskip("pandas")
    from harness.timeline import op_summary, plot_timeline, stage_summary, step_summary, timeline_frame

    case = make_case("tiny", "bf16", 1)
    plain = Megakernel(case.w, case.cache.clone(), fusion=fusion).decode(case.tokens, case.positions).clone()
    mk = Megakernel(case.w, case.cache, fusion=fusion, timeline=True)
    out = mk.decode(case.tokens, case.positions)
    mk.check()
    assert (out == plain).all(), "recording the timeline changed the logits"
    df = timeline_frame(mk)
    assert sorted(df["instr"]) == list(range(len(mk.prog.instrs)))
    assert (df["t_start"] <= df["t_ready"]).all() and (df["t_ready"] < df["t_end"]).all()
    for _, prog in df.groupby(["launch", "program"]):
        assert prog.sort_values("pos")["t_start"].is_monotonic_increasing
    assert df.groupby("launch")["t_start"].min().is_monotonic_increasing  # launches run in stream order
    assert set(op_summary(df).index) == set(df["op"])
    st = stage_summary(df)
    assert (st["span_us"] >= 0).all() and st["n"].sum() == len(df)
    s = step_summary(df)
    assert 0 < s["run_pct"] <= 100 and s["wait_pct"] >= 0
    plot_timeline(df, str(tmp_path / "t.png"), "test", unit="ticks")
    assert (tmp_path / "t.png").stat().st_size > 10_000
    assert isinstance(df, pd.DataFrame)


def test_timeline_is_off_by_default():
    case = make_case("tiny", "bf16", 1)
    mk = Megakernel(case.w, case.cache) if interpreting() else None
    if mk is None:
        pytest.skip("needs the interpreter")
    assert mk.timeline_buf.numel() == 1
    with pytest.raises(RuntimeError, match="timeline=True"):
        mk.timeline_records()


def test_resources_compile_for_sm90_without_a_gpu():
    """ptxas (shipped with Triton) compiles the real kernel here; the timeline variant alone reads the timer."""
    code = ("from kernels.mega import resources as R; from harness.models import named_spec;"
            "from kernels.mega.lower import TileOptions; s = named_spec('llama1b');"
            "c, t = R.compile_config(s, 'int4', 128, 1, 1025, 132); u = R.ptxas_usage(c);"
            "ct, _ = R.compile_config(s, 'int4', 128, 1, 1025, 132, timeline=True);"
            "cp, _ = R.compile_config(s, 'int4', 128, 1, 1025, 132, options=TileOptions(l2_prefetch=0));"
            "c16, _ = R.compile_config(s, 'int4', 128, 16, 1025, 132);"
            "print(u['regs'], u['spill_stores'], c.asm['ptx'].count('globaltimer'), ct.asm['ptx'].count('globaltimer'),"
            " R.programs_per_sm(u['regs'], t.num_warps, u['shared']), c.asm['ptx'].count('prefetch.global.L2'),"
            " cp.asm['ptx'].count('prefetch.global.L2'), c.asm['ptx'].count('0x00780000'), c16.asm['ptx'].count('0x43004300'))")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    if res.returncode != 0 and "ptxas" in res.stderr and "not found" in res.stderr.lower():
        pytest.skip("no ptxas in this Triton install")
    assert res.returncode == 0, res.stderr[-2000:]
    regs, spills, timer_plain, timer_tl, pps, pf_default, pf_off, unit_asm, nibble_asm = map(int, res.stdout.split())
    assert 16 <= regs <= 255 and spills >= 0
    assert timer_plain == 0 and timer_tl > 0
    assert 1 <= pps <= 32
    assert pf_off == 0 and pf_default >= 5  # on by default: one site per GEMV stage (QKV and gate/up have two)
    assert unit_asm > 0  # int4 batch 1 dequantises with the unit-float PTX (0x3F800000 | nibble bits)
    assert nibble_asm > 0  # int4 batch 16 runs the tensor-core tile: packed bf16 nibbles (0x43004300 | nibble)


def test_occupancy_reads_registers_once_the_kernel_is_loaded(monkeypatch):
    """A compiled Triton kernel knows its register count only after _init_handles(): occupancy() loads it first."""
    class Compiled:
        metadata = SimpleNamespace(num_warps=4, shared=71680)

        def _init_handles(self):
            self.n_regs = 255

    props = SimpleNamespace(regs_per_multiprocessor=65536, max_threads_per_multi_processor=2048,
                            shared_memory_per_multiprocessor=233472)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    assert occupancy(Compiled(), torch.device("cpu")) == (255, 2)  # 255 x 128 threads -> 32768 of 65536 registers
