"""Lowering and scheduling invariants (no kernel runs): dependencies, counter targets, tile coverage,
serialisation, launch cuts, and the VM's detection of dependency violations and deadlocks."""
import itertools

import pytest
import torch

from harness.models import named_spec
from kernels.mega.instructions import (WORDS, Argmax, AttnPartial, AttnReduce, DownResidual, Embed, LmHead,
                                       OProjResidual, RmsGateUpSilu, RmsQkvRope, from_words)
from kernels.errors import ConfigError
from kernels.mega.lower import TileOptions, lower, pick_tiles, seq_groups
from kernels.mega.pyvm import DeadlockError, DependencyError, PyVM
from kernels.mega.schedule import FUSIONS, POLICIES, Launch, Schedule, build_schedule, simulate
from kernels.mega.state import State
from mega_checks import GROUP_SIZE, make_case, spec_of

# (model, quant, batch, max_len, n_programs, interpret): CPU test tiles and the GPU tiles of real models.
CONFIGS = [
    ("tiny", "fp32", 1, 40, 1, True),
    ("tiny", "int4", 4, 40, 3, True),
    ("odd", "int8", 3, 33, 2, True),
    ("odd", "fp16", 5, 33, 4, True),  # AttnPartial sequence groups [0, 3) and [3, 5)
    ("llama1b", "bf16", 1, 8193, 132, False),
    ("llama1b", "int4", 16, 129, 264, False),
    ("llama8b", "int8", 16, 32769, 132, False),
]


def _lowered(model, quant, batch, max_len, n_programs, interpret):
    spec = spec_of(model)
    tiles = pick_tiles(spec, quant, GROUP_SIZE if model in ("tiny", "odd") else 128, batch, max_len, n_programs,
                       interpret=interpret)
    return lower(spec, quant, GROUP_SIZE if model in ("tiny", "odd") else 128, batch, max_len, tiles)


@pytest.fixture(scope="module", params=CONFIGS, ids=lambda c: f"{c[0]}-{c[1]}-B{c[2]}-S{c[3]}-P{c[4]}")
def prog_cfg(request):
    return _lowered(*request.param), request.param


def test_counter_targets_match_producers(prog_cfg):
    prog, _ = prog_cfg
    producers = prog.producers()
    for i, ins in enumerate(prog.instrs):
        if ins.wait is not None:
            n = len(producers.get(ins.wait.counter, []))
            assert n == ins.wait.count, f"#{i} {ins} waits for {ins.wait.count} bumps of {ins.wait.counter}, {n} exist"
    waited = {ins.wait.counter for ins in prog.instrs if ins.wait}
    assert set(producers) == waited, "every bumped counter is waited on, every waited counter is bumped"
    idx = [prog.space.index(k) for k in producers]
    assert len(set(idx)) == len(idx) and all(0 <= i < prog.space.size for i in idx)
    assert isinstance(prog.instrs[-1], Argmax) and prog.instrs[-1].bump is None
    assert sum(isinstance(i, Argmax) for i in prog.instrs) == 1


def test_stream_is_topological_and_argmax_is_the_only_sink(prog_cfg):
    prog, _ = prog_cfg
    deps = prog.dependencies()
    for i, d in enumerate(deps):
        assert all(j < i for j in d), f"#{i} {prog.instrs[i]} depends on a later instruction"
    has_consumer = set(j for d in deps for j in d)
    assert set(range(len(prog.instrs) - 1)) <= has_consumer, "every instruction but Argmax feeds a later one"


def test_attention_waits_only_for_its_group(prog_cfg):
    prog, _ = prog_cfg
    deps = prog.dependencies()
    for i, ins in enumerate(prog.instrs):
        if isinstance(ins, AttnPartial):
            slots = {prog.qkv_pairs(prog.instrs[j].row_block)[0] for j in deps[i]}
            s, g, gq = prog.spec, ins.kv_head, prog.group
            want = set(range(g * gq, (g + 1) * gq)) | {s.n_heads + g, s.n_heads + s.n_kv_heads + g}
            assert slots == want, f"{ins} waits for head slots {sorted(slots)}, expected {sorted(want)}"


def test_tile_coverage_exactly_once(prog_cfg):
    prog, _ = prog_cfg
    s = prog.spec
    for layer in range(s.n_layers):
        pairs = [(slot, i) for ins in prog.instrs if isinstance(ins, RmsQkvRope) and ins.layer == layer
                 for slot, r in [prog.qkv_pairs(ins.row_block)] for i in r]
        assert sorted(pairs) == [(slot, i) for slot in range(prog.n_slots) for i in range(prog.half)]
        parts = [i for i in prog.instrs if isinstance(i, AttnPartial) and i.layer == layer]
        assert all(len(prog.split_seqs(i.split)) > 0 for i in parts), "a sequence group without sequences"
        units = [(i.kv_head, b, i.split % prog.tiles.n_splits) for i in parts for b in prog.split_seqs(i.split)]
        assert sorted(units) == list(itertools.product(range(s.n_kv_heads), range(prog.batch),
                                                       range(prog.tiles.n_splits)))
        reds = [i.kv_head for i in prog.instrs if isinstance(i, AttnReduce) and i.layer == layer]
        assert sorted(reds) == list(range(s.n_kv_heads))
        for cls, n in ((OProjResidual, s.dim), (RmsGateUpSilu, s.ffn_dim), (DownResidual, s.dim)):
            rows = [r for i in prog.instrs if isinstance(i, cls) and i.layer == layer for r in prog.gemv_rows(i)]
            assert sorted(rows) == list(range(n)), f"{cls.__name__} rows of layer {layer}"
    for cls, n in ((Embed, s.dim), (LmHead, s.vocab_size)):
        rows = [r for i in prog.instrs if isinstance(i, cls) for r in prog.gemv_rows(i)]
        assert sorted(rows) == list(range(n)), cls.__name__


@pytest.mark.parametrize("seq_len", [1, 2, 15, 16, 17, 40, 8193])
def test_split_ranges_partition_the_context(prog_cfg, seq_len):
    prog, _ = prog_cfg
    keys = [k for sp in range(prog.tiles.n_splits) for k in prog.split_range(seq_len, sp)]
    assert keys == list(range(seq_len))


def test_words_roundtrip(prog_cfg):
    prog, _ = prog_cfg
    for i, ins in enumerate(prog.instrs[:: max(1, len(prog.instrs) // 500)]):
        w = ins.words(prog.space, i)
        assert len(w) == WORDS
        back = from_words(w, prog.space)
        assert back == ins and back.wait == ins.wait and back.bump == ins.bump


@pytest.mark.parametrize("policy", list(POLICIES))
@pytest.mark.parametrize("fusion", FUSIONS)
def test_queues_are_topological_and_cover_each_launch(prog_cfg, fusion, policy):
    prog, cfg = prog_cfg
    n_programs = cfg[4]
    sch = build_schedule(prog, n_programs, policy, fusion)
    L = prog.spec.n_layers
    want = {"model": 1, "layer": L, "block": 2 * L + 1, "op": 6 * L + 3}[fusion]
    assert len(sch.launches) == want
    seen, launch_of = [], {}
    for li, la in enumerate(sch.launches):
        assert 1 <= la.grid <= n_programs
        assert la.queues.shape == (la.grid, max(len(q) for q in la.programs), WORDS)
        for p, q in enumerate(la.programs):
            assert q == sorted(q), "each queue is a subsequence of the topological order"
            assert int(la.lengths[p]) == len(q)
            assert la.queues[p, :len(q), 7].tolist() == q
            for i in q:
                launch_of[i] = li
        seen += [i for q in la.programs for i in q]
    assert sorted(seen) == list(range(len(prog.instrs))), "every instruction exactly once"
    for i, d in enumerate(prog.dependencies()):
        assert all(launch_of[j] <= launch_of[i] for j in d), "producers run in the same or an earlier launch"
    assert launch_of[len(prog.instrs) - 1] == len(sch.launches) - 1
    assert State.alloc(prog, "cpu").counters.numel() == sch.n_counters == prog.space.size


def test_policies_differ_but_both_balance():
    prog = _lowered("llama1b", "int4", 1, 8193, 132, False)
    rr = build_schedule(prog, 132, "round-robin", "model")
    cb = build_schedule(prog, 132, "cost-balanced", "model")
    assert rr.launches[0].programs != cb.launches[0].programs

    total = sum(prog.cost_bytes(i) for i in prog.instrs)
    assert simulate(cb) <= simulate(rr), "cost-balanced has the shorter simulated step"
    assert simulate(cb) <= 2.0 * total / 132


def test_vm_detects_a_dependency_violation():
    case = make_case("tiny", "fp32", 1)
    prog = _lowered("tiny", "fp32", 1, 40, 1, True)
    vm = PyVM(prog, case.w, case.cache.clone())
    vm.state.tokens.copy_(case.tokens)
    vm.state.positions.copy_(case.positions)
    first_partial = next(i for i, ins in enumerate(prog.instrs) if isinstance(ins, AttnPartial))
    order = list(range(len(prog.instrs)))
    order.remove(first_partial)
    order.insert(1, first_partial)  # right after the first Embed: before its QKV row blocks
    with pytest.raises(DependencyError, match=r"AttnPartial\(layer=0, kv_head=0, split=0\).*QKV"):
        vm.run_order(order)


def test_vm_detects_a_deadlocking_schedule():
    case = make_case("tiny", "fp32", 1)
    prog = _lowered("tiny", "fp32", 1, 40, 1, True)
    bad = list(reversed(range(len(prog.instrs))))  # consumers before producers in one queue
    words = torch.tensor([[prog.instrs[i].words(prog.space, i) for i in bad]], dtype=torch.int32)
    sch = Schedule(prog, "model", "bad", 1, [Launch([bad], words, torch.tensor([len(bad)], dtype=torch.int32))])
    vm = PyVM(prog, case.w, case.cache.clone())
    with pytest.raises(DeadlockError, match="no program can advance"):
        vm.run(sch)


def test_gpu_tiles_default_to_l2_prefetch_and_the_tile_rule_by_batch():
    """GPU tile choice: L2 prefetch of 2 K steps unless an option says otherwise; the inner product by the tile rule
    (kernels/tiles.py): int4 on the FMA tile below batch 16 and on its tensor-core tile from 16 (group a power of
    two), dense / int8 on tensor cores from batch 4; a prefetch the tiles cannot express falls back, never raises."""
    spec = named_spec("llama8b")
    t1 = pick_tiles(spec, "int4", 128, 1, 1025, 264, interpret=False)
    assert t1.l2_prefetch == 2 and not t1.use_dot and t1.b_pad == 1
    assert pick_tiles(spec, "int4", 128, 1, 1025, 264, interpret=False,
                      options=TileOptions(l2_prefetch=0)).l2_prefetch == 0
    t16 = pick_tiles(spec, "int4", 128, 16, 1025, 264, interpret=False)
    assert t16.use_dot and t16.b_pad == 16
    assert not pick_tiles(spec, "int4", 48, 16, 1025, 264, interpret=False).use_dot  # 48: not a power of two
    assert not pick_tiles(spec, "int8", 0, 3, 1025, 264, interpret=False).use_dot
    t4 = pick_tiles(spec, "int8", 0, 4, 1025, 264, interpret=False)
    assert t4.use_dot and t4.b_pad == 16
    assert pick_tiles(named_spec("tiny"), "bf16", 0, 1, 64, 264, interpret=False).l2_prefetch in (0, 1, 2)


def test_gpu_tile_options():
    """gemv_rows sets the GEMV stages' tile height; k_fold widens the FMA tiles' K step k_fold x for the same
    accumulators, never on tensor cores or int4; values the rule cannot take are refused in one sentence."""
    spec = named_spec("llama8b")
    base = pick_tiles(spec, "int8", 0, 1, 1025, 264, interpret=False)
    assert not base.use_dot and base.k_fold == 1 and base.gate_up.block_n == 16
    fold = pick_tiles(spec, "int8", 0, 1, 1025, 264, interpret=False, options=TileOptions(k_fold=2, gemv_rows=8))
    assert fold.k_fold == 2 and fold.gate_up.block_n == 8 and fold.gate_up.block_k == 4 * base.gate_up.block_k
    assert pick_tiles(spec, "int4", 128, 1, 1025, 264, interpret=False, options=TileOptions(k_fold=2)).k_fold == 1
    assert pick_tiles(spec, "bf16", 0, 16, 1025, 264, interpret=False, options=TileOptions(k_fold=2)).k_fold == 1
    for bad, msg in ((TileOptions(k_fold=3), "k_fold=3 must be one of 1, 2"),
                     (TileOptions(gemv_rows=12), "gemv_rows=12 must be a power of two"),
                     (TileOptions(num_warps=3), "num_warps=3 must be"),
                     (TileOptions(l2_prefetch=3), "l2_prefetch=3 asks for")):
        with pytest.raises(ConfigError, match=msg):
            pick_tiles(spec, "int8", 0, 1, 1025, 264, interpret=False, options=bad)


def test_seq_groups_rule():
    """AttnPartial's sequence groups: enough (kv head, group) units for the grid, at most one group per sequence,
    groups of equal size but the last, none empty."""
    assert seq_groups(1, 8, 132) == 1
    assert seq_groups(16, 8, 132) == 16  # 17 units per kv head wanted: one sequence each
    assert seq_groups(16, 8, 64) == 8  # 8 wanted: two sequences each
    assert seq_groups(5, 2, 4) == 2  # 2 wanted: [0, 3) and [3, 5)
    for batch in range(1, 17):
        for programs in (1, 3, 8, 24, 64, 132, 264):
            g = seq_groups(batch, 8, programs)
            per = -(-batch // g)
            assert 1 <= g <= batch and (g - 1) * per < batch, (batch, programs, g)
            assert per == 1 or 8 * g * 2 > programs, (batch, programs, g)  # larger groups only when units abound


def test_gluon_attention_covers_the_grid_at_batch_16():
    """The Gluon tiles at llama8b batch 16 on 132 programs: one sequence per partial, and the partials of a layer
    fill the grid (72 partials of 16 sequences each before sequence groups)."""
    from kernels.mega import hopper

    t = hopper.pick_tiles(spec_of("llama8b"), 16, 1025, 132)
    assert t.seq_groups == 16
    assert spec_of("llama8b").n_kv_heads * t.seq_groups * t.n_splits >= 132
