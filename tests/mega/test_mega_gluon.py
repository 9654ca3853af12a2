"""megakernel.backend=gluon on the CPU: its weight streams (every chunk of every weight exactly once per step, in
each program's queue order, with the device functions' chunk counts), the sentences that refuse what it cannot run,
and the kernel compiled for sm_90 (it runs only on a Hopper GPU: tests/mega/test_mega_gluon_gpu.py)."""
import pytest
import torch

from kernels.mega import hopper as H
from kernels.mega.instructions import DownResidual, LmHead, OProjResidual, RmsGateUpSilu, RmsQkvRope
from kernels.mega.lower import cdiv, lower
from kernels.quant import Kind
from kernels.mega.schedule import build_schedule
from mega_checks import FUSIONS, spec_of


def _lowered(model, batch: int = 1, programs: int = 132, quant: str = "bf16"):
    spec = spec_of(model) if isinstance(model, str) else model
    return lower(spec, quant, 0, batch, 1024, H.pick_tiles(spec, batch, 1024, programs))


def _weights_grid(prog):
    """which -> (rows of its 2-D view, K): every chunk a step must stream."""
    s = prog.spec
    qkv_n = (s.n_heads + 2 * s.n_kv_heads) * s.head_dim
    L = s.n_layers
    return {H.W_QKV: (L * qkv_n, s.dim), H.W_O: (L * s.dim, s.q_dim), H.W_GATE: (L * s.ffn_dim, s.dim),
            H.W_UP: (L * s.ffn_dim, s.dim), H.W_DOWN: (L * s.dim, s.ffn_dim), H.W_LM: (s.vocab_size, s.dim)}


@pytest.mark.parametrize("model", ["llama1b", "llama8b", "gluon-odd"])
@pytest.mark.parametrize("fusion", FUSIONS)
def test_streams_cover_every_weight_box_once(model, fusion):
    """Every [BOX, BK] box of every weight is loaded exactly once per step; the only other boxes are zero-filled by the
    TMA unit: past K in the last chunk of a stage with several column groups, past the vocabulary in the LM head's
    last tile (a stacked weight's box past its own rows would read the next layer's: problem() keeps its rows a
    multiple of BN)."""
    prog = _lowered(model)
    grid = _weights_grid(prog)
    sched = build_schedule(prog, 132, "round-robin", fusion, "cpu")
    seen = {}
    for la in sched.launches:
        table, counts = H.weight_stream(prog, la.programs, "cpu")
        assert table.shape[1] == int(counts.max()) + 1  # one spare entry for the read-ahead
        for p, queue in enumerate(la.programs):
            n = int(counts[p])
            assert n == sum(len(H.instr_chunks(prog, prog.instrs[i])) for i in queue)
            for which, *coords in table[p, :n].tolist():
                for r, c in zip(coords[0::2], coords[1::2]):
                    box = (which, r, c)
                    if c >= grid[which][1]:  # past K: the second column group of O's or down's last chunk
                        assert which in (H.W_O, H.W_DOWN) and (r, c) == (coords[0], coords[1] + H.BK), box
                        continue
                    if r >= grid[which][0]:  # past the last row: only the LM head's (the others are stacked)
                        assert which == H.W_LM, box
                        continue
                    assert box not in seen, f"box {box} streamed twice"
                    seen[box] = p
            assert not table[p, n:].any()
    for which, (rows, k) in grid.items():
        want = {(which, r, c) for r in range(0, rows, H.BOX) for c in range(0, k, H.BK)}
        got = {key for key in seen if key[0] == which}
        assert got == want, f"weight {which}: {len(want - got)} boxes never streamed, {len(got - want)} extra"


@pytest.mark.parametrize("model,batch", [("llama8b", 1), ("llama1b", 16)])
def test_int8_streams_the_same_chunks_as_bf16(model, batch):
    """An int8 chunk is the same [BN, BK] block of the stored bytes: the lowering, tiles and weight streams of an
    int8 step are those of the bf16 step, box for box (only the bytes per box halve, and the ring doubles), in the
    same order but for the gate and up chunks where only int8 pairs them (hopper._pairs_gate_up, batch <= 8)."""
    spec = spec_of(model)
    progs = {q: lower(spec, q, 0, batch, 1024, H.pick_tiles(spec, batch, 1024, 132)) for q in ("bf16", "int8")}
    assert progs["int8"].tiles == progs["bf16"].tiles
    assert [str(i) for i in progs["int8"].instrs] == [str(i) for i in progs["bf16"].instrs]
    for fusion in ("op", "model"):
        scheds = {q: build_schedule(p, 132, "round-robin", fusion, "cpu") for q, p in progs.items()}
        for la8, la16 in zip(scheds["int8"].launches, scheds["bf16"].launches):
            t8, c8 = H.weight_stream(progs["int8"], la8.programs, "cpu")
            t16, c16 = H.weight_stream(progs["bf16"], la16.programs, "cpu")
            assert torch.equal(c8, c16)
            if H._pairs_gate_up(False, progs["bf16"].tiles.b_pad):
                assert torch.equal(t8, t16)
            else:  # each program's entries, gate's and up's in another order
                assert [sorted(map(tuple, p.tolist())) for p in t8] == [sorted(map(tuple, p.tolist())) for p in t16]


def _emulate(prog, ins, w: dict, x: torch.Tensor) -> list[torch.Tensor]:
    """What the device computes for one GEMV instruction, from its weight stream alone (hopper._tile): each chunk's
    slot is its boxes stacked (zero past K or past the last row, as TMA fills); with KP = block_k / BK column groups
    per chunk, product g is the whole slot times x^T at the chunk's column + g BK (x zero past K), of which slot rows
    g R .. (g + 1) R (R = BN / KP) count. Returns one [R, B] product per tile, in stream order."""
    chunks = H.instr_chunks(prog, ins)
    stage = {RmsQkvRope: "qkv", OProjResidual: "o", RmsGateUpSilu: "gate_up", DownResidual: "down",
             LmHead: "lm_head"}[type(ins)]
    kp = getattr(prog.tiles, stage).block_k // H.BK
    rr = H.BN // kp
    k = x.shape[1]
    xz = torch.cat([x, torch.zeros(x.shape[0], 4 * H.BK, dtype=x.dtype)], 1)  # x columns past K read as 0

    def box(which, r, c):
        out = torch.zeros(H.BOX, H.BK, dtype=torch.float64)
        blk = w[which][r:r + H.BOX, c:c + H.BK]
        out[:blk.shape[0], :blk.shape[1]] = blk
        return out
    per_tile = cdiv(k, kp * H.BK)
    if isinstance(ins, RmsGateUpSilu):  # a tile's gate chunks, then its up chunks; paired, they alternate
        paired = [chunks[t:t + 2 * per_tile] for t in range(0, len(chunks), 2 * per_tile)]
        first, second = (slice(0, None, 2), slice(1, None, 2)) if H._pairs_gate_up(prog.kind == Kind.INT8,
                                                                                    prog.tiles.b_pad) else \
            (slice(0, per_tile), slice(per_tile, None))
        assert all(c[0] == H.W_GATE for p in paired for c in p[first]) and all(c[0] == H.W_UP for p in paired
                                                                               for c in p[second]), chunks
        chunks = [c for pair in paired for c in (*pair[first], *pair[second])]
    tiles = []
    for t in range(0, len(chunks), per_tile):
        acc = torch.zeros(kp, H.BN, x.shape[0], dtype=torch.float64)
        for i, (which, *coords) in enumerate(chunks[t:t + per_tile]):
            slot = torch.cat([box(which, r, c) for r, c in zip(coords[0::2], coords[1::2])])
            for g in range(kp):
                c0 = i * kp * H.BK + g * H.BK
                acc[g] += slot @ xz[:, c0:c0 + H.BK].T
        tiles.append(sum(acc[g, g * rr:(g + 1) * rr] for g in range(kp)))
    return tiles


@pytest.mark.parametrize("model,batch,programs,qkv_o_kp,quant", [
    ("llama1b", 3, 132, (1, 2), "bf16"), ("gluon-odd", 3, 40, (1, 1), "bf16"), ("gluon-odd", 16, 132, (1, 2), "bf16"),
    ("gluon-odd", 3, 132, (1, 2), "int8")])
def test_device_loops_read_what_the_stream_loads(model, batch, programs, qkv_o_kp, quant):
    """The host's weight stream and the device loops agree: replaying each instruction's chunks the way the device
    consumes them gives W[rows] @ x for the rows the instruction owns (QKV rows i and their rotate-half partners
    i + hd/2, gate and up tiles one after the other or (int8, B_PAD 16) their chunks alternating, O and down tiles of 1 or 2 column groups with the zero-filled boxes
    past K). Every instruction of the first layer and of the LM head is checked."""
    from dataclasses import replace

    torch.manual_seed(0)
    spec = spec_of(model)
    prog = _lowered(replace(spec, n_layers=1, vocab_size=4000), batch, programs, quant)  # 4000: a partial LM-head tile
    s = prog.spec
    assert (prog.tiles.qkv.block_k // H.BK, prog.tiles.o.block_k // H.BK) == qkv_o_kp  # the case it is meant to be
    w = {which: torch.randn(rows, k, dtype=torch.float64) for which, (rows, k) in _weights_grid(prog).items()}
    xs = {k: torch.randn(prog.batch, k, dtype=torch.float64) for k in {s.dim, s.q_dim, s.ffn_dim}}
    kinds = set()
    for ins in prog.instrs:
        if not H.instr_chunks(prog, ins) or getattr(ins, "layer", 0) > 0:
            continue
        kinds.add(type(ins))
        if isinstance(ins, RmsQkvRope):
            slot, pairs = prog.qkv_pairs(ins.row_block)
            lo = slot * s.head_dim + pairs.start
            want = {H.W_QKV: [*range(lo, lo + len(pairs)), *range(lo + prog.half, lo + prog.half + len(pairs))]}
            x = xs[s.dim]
        else:
            mats = {OProjResidual: (H.W_O,), DownResidual: (H.W_DOWN,), RmsGateUpSilu: (H.W_GATE, H.W_UP),
                    LmHead: (H.W_LM,)}[type(ins)]
            want = {m: list(prog.gemv_rows(ins)) for m in mats}
            x = xs[w[mats[0]].shape[1]]
        tiles = _emulate(prog, ins, w, x)
        for i, (which, rows) in enumerate(want.items()):  # gate / up: every other tile
            got = torch.cat(tiles[i::len(want)])[:len(rows)]
            torch.testing.assert_close(got, w[which][rows] @ x.T, rtol=1e-12, atol=1e-9, msg=lambda m: f"{ins}: {m}")
    assert kinds == {RmsQkvRope, OProjResidual, RmsGateUpSilu, DownResidual, LmHead}


@pytest.mark.parametrize("programs,o_kp", [(100, 1), (132, 2), (40, 1)])
def test_chunk_counts_are_what_the_device_functions_consume(programs, o_kp):
    """The device loops: RmsQkvRope one tile; the others min(TPI, tiles left below N) tiles of block_n rows (gate and
    up two each); every tile K / (KP BK) chunks (KP column groups per chunk: 2 for O and down on 132 SMs). 100 and
    40 programs: tiles per instruction that leave partial row blocks."""
    prog = _lowered("llama8b", programs=programs)
    s, t = prog.spec, prog.tiles
    assert t.o.block_k // H.BK == o_kp and t.down.block_k // H.BK == o_kp
    for stage in (t.qkv, t.o, t.gate_up, t.down, t.lm_head):
        assert stage.block_k // H.BK in H.KPS and stage.block_k % H.BK == 0
    assert (t.gate_up.block_k, t.lm_head.block_k) == (H.BK, H.BK)
    assert t.o.block_n * t.o.block_k == H.BN * H.BK  # R rows x KP column groups fill one slot
    assert (t.qkv.block_n, t.qkv.block_k) == (H.BN // 2, H.BK)
    for ins in prog.instrs:
        n = len(H.instr_chunks(prog, ins))
        if isinstance(ins, RmsQkvRope):
            assert n == cdiv(s.dim, t.qkv.block_k)
            continue
        stage, rows, k, mats = {OProjResidual: (t.o, s.dim, s.q_dim, 1), RmsGateUpSilu: (t.gate_up, s.ffn_dim, s.dim, 2),
                                DownResidual: (t.down, s.dim, s.ffn_dim, 1), LmHead: (t.lm_head, s.vocab_size, s.dim, 1)
                                }.get(type(ins), (None, 0, 0, 0))
        if stage is None:
            assert n == 0
            continue
        bn = stage.block_n
        tiles_here = min(stage.tiles_per_instr, cdiv(rows - ins.row_block * stage.tiles_per_instr * bn, bn))
        assert n == tiles_here * mats * cdiv(k, stage.block_k)
        assert len(prog.gemv_rows(ins)) == min(tiles_here * bn, rows - ins.row_block * stage.tiles_per_instr * bn)


@pytest.mark.parametrize("quant,batch,spec_change,match", [
    ("int4", 1, {}, "bf16, fp16 or int8 weights; quant=int4 runs on megakernel.backend=triton"),
    ("fp32", 1, {}, "quant=fp32 runs on megakernel.backend=triton"),
    ("bf16", 17, {}, "batch 1..16"),
    ("bf16", 1, {"head_dim": 96}, "head_dim 64 or 128"),
    ("bf16", 1, {"head_dim": 32}, "head_dim 64 or 128"),
    ("bf16", 1, {"head_dim": 256}, "head_dim 64 or 128; llama1b has 256"),
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
    assert H.problem(spec_of("llama8b"), "int8", 16) is None


@pytest.fixture
def capability(monkeypatch):
    """Sets the compute capability that hopper.problem reads for a "cuda" device (no GPU is touched)."""
    cc = {"major": 9}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (cc["major"], 0))
    return cc


@pytest.mark.parametrize("model,quant,batch,device,major,tiles,expect", [
    ("llama1b", "bf16", 1, "cuda", 9, False, "gluon"),
    ("llama1b", "fp16", 16, "cuda", 9, False, "gluon"),
    ("llama8b", "int8", 16, "cuda:0", 9, False, "gluon"),
    ("llama8b", "int4", 1, "cuda", 9, False, "triton"),  # no int4 chunks in the Gluon backend
    ("llama1b", "fp32", 1, "cuda", 9, False, "triton"),
    ("llama1b", "bf16", 17, "cuda", 9, False, "triton"),  # batch 1..16
    ("tiny", "bf16", 1, "cuda", 9, False, "triton"),  # head_dim 32: not a multiple of BN (64)
    ("llama1b", "bf16", 1, "cuda", 8, False, "triton"),  # an A100: not Hopper
    ("llama1b", "bf16", 1, "cuda", 10, False, "triton"),  # a Blackwell GPU: not sm_90
    ("llama1b", "bf16", 1, "cpu", 9, False, "triton"),  # the CPU interpreter
    ("llama1b", "bf16", 1, "cuda", 9, True, "triton"),  # megakernel.tiles options are the Triton backend's
], ids=lambda v: str(v))
def test_auto_resolves_to_gluon_exactly_where_it_runs(capability, model, quant, batch, device, major, tiles, expect):
    """megakernel.backend=auto: gluon where kernels.mega.gluon_problem (hopper.problem, and no tile options) is None
    for the point on the device, triton elsewhere; a named backend is taken as it is, on any device."""
    from kernels.mega import gluon_problem, resolve_backend

    capability["major"] = major
    spec, dev = spec_of(model), torch.device(device)
    got = resolve_backend("auto", spec, quant, batch, dev, tiles_given=tiles)
    assert got == expect
    assert (gluon_problem(spec, quant, batch, dev, tiles) is None) == (expect == "gluon")
    assert resolve_backend("auto", spec, quant, batch, device, tiles_given=tiles) == expect  # a device name too
    for name in ("triton", "gluon"):
        assert resolve_backend(name, spec, quant, batch, dev, tiles_given=tiles) == name


def test_resolve_backend_refuses_an_unknown_name_and_auto_without_a_device():
    from kernels.mega import resolve_backend

    with pytest.raises(ValueError, match=r"megakernel.backend='tritn' is not a backend; choose one of auto, triton, "
                                         r"gluon"):
        resolve_backend("tritn", spec_of("llama1b"), "bf16", 1, torch.device("cpu"))
    with pytest.raises(ValueError, match="auto is resolved on a device"):
        resolve_backend("auto", spec_of("llama1b"), "bf16", 1, None)


def test_the_ring_holds_the_same_bytes_for_every_weight_dtype():
    """bf16 and fp16 chunks are 32 KB, int8 chunks 16 KB: twice as many of them keep the same bytes in flight."""
    assert (H.nbuf("bf16"), H.nbuf("fp16"), H.nbuf("int8")) == (4, 4, 8)
    for quant in ("bf16", "int8"):
        assert H.nbuf(quant) * H.BN * H.BK * (2 if quant == "bf16" else 1) == H.RING_BYTES


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
c = hopper.compile_sm90(named_spec(sys.argv[1]), sys.argv[3], int(sys.argv[2]), 1024, 132)
ptx = c.asm["ptx"]
print(json.dumps(dict(ptxas_usage(c), shared_meta=c.metadata.shared,
                      tma="cp.async.bulk.tensor" in ptx, mma="mma.sync" in ptx, mbarrier="mbarrier.try_wait" in ptx,
                      f16_mma="mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32" in ptx,
                      int8_ptx=f"mov.b32 bias, {hopper._F16_1152};" in ptx)))
"""


@pytest.mark.parametrize("model,batch,quant", [("llama1b", 1, "bf16"), ("llama8b", 16, "bf16"), ("llama8b", 1, "int8")])
def test_compiles_for_sm90_within_one_sm(model, batch, quant):
    """The whole kernel compiles for sm_90 here (in a process without the interpreter): its shared memory fits one
    SM, the ring's TMA loads, mbarrier waits and tensor-core products are in the PTX, at most a few spilled bytes at
    batch 1; int8 weights become fp16 operands through INT8_F16_PTX (and only then)."""
    import json
    import os
    import subprocess
    import sys

    from kernels.mega.resources import SMEM_PER_SM

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = root
    run = subprocess.run([sys.executable, "-c", _COMPILE, model, str(batch), quant], capture_output=True, text=True,
                         env=env, cwd=root, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    use = json.loads(run.stdout.strip().splitlines()[-1])
    assert use["tma"] and use["mma"] and use["mbarrier"], use
    assert use["shared_meta"] <= SMEM_PER_SM, use
    assert use["int8_ptx"] == use["f16_mma"] == (quant == "int8"), use
    if batch == 1:  # a few bytes in the setup at most (llama1b bf16: one word); none in a chunk loop (test_gemv_sass)
        assert use["spill_stores"] <= 16, use
