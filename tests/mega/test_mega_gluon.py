"""megakernel.backend=gluon on the CPU: its weight streams (every chunk of every weight exactly once per step, in
each program's queue order, with the device functions' chunk counts), the sentences that refuse what it cannot run,
and the kernel compiled for sm_90 (it runs only on a Hopper GPU: tests/mega/test_mega_gluon_gpu.py)."""
import pytest
import torch

from kernels.mega import hopper as H
from kernels.mega.instructions import DownResidual, LmHead, OProjResidual, RmsGateUpSilu, RmsQkvRope
from kernels.mega.lower import cdiv, lower
from kernels.mega.schedule import build_schedule
from mega_checks import FUSIONS, spec_of


def _lowered(model: str, batch: int = 1, programs: int = 132):
    spec = spec_of(model)
    return lower(spec, "bf16", 0, batch, 1024, H.pick_tiles(spec, batch, 1024, programs))


def _weights_grid(prog):
    """which -> (rows of its 2-D view, K): every chunk a step must stream."""
    s = prog.spec
    qkv_n = (s.n_heads + 2 * s.n_kv_heads) * s.head_dim
    L = s.n_layers
    return {H.W_QKV: (L * qkv_n, s.dim), H.W_O: (L * s.dim, s.q_dim), H.W_GATE: (L * s.ffn_dim, s.dim),
            H.W_UP: (L * s.ffn_dim, s.dim), H.W_DOWN: (L * s.dim, s.ffn_dim), H.W_LM: (s.vocab_size, s.dim)}


@pytest.mark.parametrize("model", ["llama1b", "llama8b"])
@pytest.mark.parametrize("fusion", FUSIONS)
def test_streams_cover_every_weight_chunk_once(model, fusion):
    prog = _lowered(model)
    sched = build_schedule(prog, 132, "round-robin", fusion, "cpu")
    seen = {}
    for la in sched.launches:
        table, counts = H.weight_stream(prog, la.programs, "cpu")
        assert table.shape[1] == int(counts.max()) + 1  # one spare entry for the read-ahead
        for p, queue in enumerate(la.programs):
            n = int(counts[p])
            assert n == sum(len(H.instr_chunks(prog, prog.instrs[i])) for i in queue)
            for which, row, col, pad in table[p, :n].tolist():
                assert pad == 0
                key = (which, row, col)
                assert key not in seen, f"chunk {key} streamed twice"
                seen[key] = p
            assert not table[p, n:].any()
    for which, (rows, k) in _weights_grid(prog).items():
        want = {(which, r, c) for r in range(0, rows, H.BN) for c in range(0, k, H.BK)}
        got = {key for key in seen if key[0] == which}
        assert got == want, f"weight {which}: {len(want - got)} chunks never streamed, {len(got - want)} extra"


def test_chunk_counts_are_what_the_device_functions_consume():
    """The device loops: RmsQkvRope hd / BN tiles; the others min(TPI, tiles left below N) tiles (gate and up two
    each); every tile K / BK chunks."""
    prog = _lowered("llama8b", programs=100)  # 100 programs: tiles per instruction that leave partial row blocks
    s, t = prog.spec, prog.tiles
    for ins in prog.instrs:
        n = len(H.instr_chunks(prog, ins))
        if isinstance(ins, RmsQkvRope):
            assert n == s.head_dim // H.BN * s.dim // H.BK
            continue
        stage, rows, k, mats = {OProjResidual: (t.o, s.dim, s.q_dim, 1), RmsGateUpSilu: (t.gate_up, s.ffn_dim, s.dim, 2),
                                DownResidual: (t.down, s.dim, s.ffn_dim, 1), LmHead: (t.lm_head, s.vocab_size, s.dim, 1)
                                }.get(type(ins), (None, 0, 0, 0))
        if stage is None:
            assert n == 0
            continue
        tiles_here = min(stage.tiles_per_instr, cdiv(rows - ins.row_block * stage.tiles_per_instr * H.BN, H.BN))
        assert n == tiles_here * mats * k // H.BK
        assert len(prog.gemv_rows(ins)) == min(tiles_here * H.BN, rows - ins.row_block * stage.tiles_per_instr * H.BN)


@pytest.mark.parametrize("quant,batch,spec_change,match", [
    ("int4", 1, {}, "bf16 or fp16 weights; quant=int4"),
    ("int8", 1, {}, "quant=int8 runs on megakernel.backend=triton"),
    ("bf16", 17, {}, "batch 1..16"),
    ("bf16", 1, {"head_dim": 96}, "head_dim a multiple of 64"),
    ("bf16", 1, {"ffn_dim": 8000}, "ffn_dim a multiple of 256"),
])
def test_problem_names_what_to_change(quant, batch, spec_change, match):
    from dataclasses import replace

    spec = replace(spec_of("llama1b"), **spec_change)
    why = H.problem(spec, quant, batch)
    assert why is not None and match in why


def test_problem_refuses_a_non_hopper_device():
    assert "Hopper" in H.problem(spec_of("llama1b"), "bf16", 1, torch.device("cpu"))
    assert H.problem(spec_of("llama1b"), "bf16", 16) is None


def test_runtime_refuses_the_cpu_with_one_sentence():
    from kernels.mega.runtime import Megakernel
    from mega_checks import weights

    w = weights("tiny", "bf16")
    from kernels.model import KVCache
    cache = KVCache.empty(w.spec, 1, 32, w.dtype, "cpu")
    with pytest.raises(ValueError, match="megakernel.backend"):
        Megakernel(w, cache, backend="gluon")
    with pytest.raises(ValueError, match="not a backend"):
        Megakernel(w, cache, backend="cuda")


_COMPILE = """
import json, sys
from harness.models import named_spec
from kernels.mega import hopper
from kernels.mega.resources import ptxas_usage
c = hopper.compile_sm90(named_spec(sys.argv[1]), "bf16", int(sys.argv[2]), 1024, 132)
ptx = c.asm["ptx"]
print(json.dumps(dict(ptxas_usage(c), shared_meta=c.metadata.shared,
                      tma="cp.async.bulk.tensor" in ptx, mma="mma.sync" in ptx, mbarrier="mbarrier.try_wait" in ptx)))
"""


@pytest.mark.parametrize("model,batch", [("llama1b", 1), ("llama8b", 16)])
def test_compiles_for_sm90_within_one_sm(model, batch):
    """The whole kernel compiles for sm_90 here (in a process without the interpreter): its shared memory fits one
    SM, the ring's TMA loads, mbarrier waits and tensor-core products are in the PTX, no spills at batch 1."""
    import json
    import os
    import subprocess
    import sys

    from kernels.mega.resources import SMEM_PER_SM

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = root
    run = subprocess.run([sys.executable, "-c", _COMPILE, model, str(batch)], capture_output=True, text=True, env=env,
                         cwd=root, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    use = json.loads(run.stdout.strip().splitlines()[-1])
    assert use["tma"] and use["mma"] and use["mbarrier"], use
    assert use["shared_meta"] <= SMEM_PER_SM, use
    if batch == 1:
        assert use["spill_stores"] == 0, use
