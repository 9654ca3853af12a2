"""The persistent interpreter kernel (Triton interpreter on the CPU, ONE program) == the Python VM, on a
subset covering every quant mode, batch 1 and 4, every fusion granularity and both policies; plus the
bounded-wait timeout path, the KV-cache append, greedy generation on the device, the impl through the
harness interface, and the diff tool."""
import math
from types import SimpleNamespace

import pytest
import torch

from harness.weights import random_weights
from kernels import interpreting
from kernels.mega.diff import first_divergence
from kernels.errors import ConfigError
from kernels.mega.instructions import AttnPartial
from kernels.mega.lower import TileOptions
from kernels.mega.pyvm import PyVM
from kernels.mega.runtime import Megakernel, MegakernelError
from kernels.mega.schedule import build_schedule
from mega_checks import (GROUP_SIZE, INTERPRETER_WARNINGS, assert_cache_written, assert_logits_close, make_case,
                         rel_err, spec_of)

pytestmark = [INTERPRETER_WARNINGS,
              pytest.mark.skipif(not interpreting(), reason="CPU tests through the Triton interpreter (TRITON_INTERPRET=1)")]
KERNEL_TOL = 1e-4  # interpreter vs VM and vs the fp32 reference: fp32 math on both sides

# (model, quant, batch, fusion, policy): every quant, batch 1 and 4, every fusion, both policies.
SUBSET = [
    ("tiny", "fp32", 1, "model", "round-robin"),
    ("tiny", "fp16", 4, "layer", "cost-balanced"),
    ("tiny", "bf16", 1, "block", "cost-balanced"),
    ("tiny", "bf16", 4, "op", "round-robin"),
    ("tiny", "int8", 4, "model", "cost-balanced"),
    ("tiny", "int8", 1, "op", "round-robin"),
    ("tiny", "int4", 1, "layer", "round-robin"),
    ("tiny", "int4", 4, "block", "cost-balanced"),
    ("tiny", "int4", 16, "model", "round-robin"),  # int4 on its tensor-core tile (kernels/tiles.INT4_DOT_MIN_BATCH)
    ("odd", "fp16", 3, "model", "round-robin"),
]


@pytest.mark.parametrize("model,quant,batch,fusion,policy", SUBSET, ids=lambda v: str(v))
def test_interpreter_matches_vm(model, quant, batch, fusion, policy):
    case = make_case(model, quant, batch)
    vm_cache = case.cache.clone()
    mk = Megakernel(case.w, case.cache, fusion=fusion, policy=policy)
    assert mk.n_programs == 1
    out = mk.decode(case.tokens, case.positions)
    mk.check()
    vm = PyVM(mk.prog, case.w, vm_cache)
    vm_out = vm.decode(build_schedule(mk.prog, 1, policy, fusion), case.tokens, case.positions)
    what = f"interpreter {model} {quant} B{batch} {fusion} {policy}"
    assert_logits_close(out, vm_out, KERNEL_TOL, what + " vs VM")
    assert_logits_close(out, case.ref_logits, KERNEL_TOL, what + " vs reference")
    assert_cache_written(case, case.cache, what)
    assert mk.state.next_tokens.tolist() == vm.state.next_tokens.tolist()
    for name in ("h", "attn", "act"):
        assert rel_err(getattr(mk.state, name), getattr(vm.state, name)) <= KERNEL_TOL, name
    assert mk.state.counters.eq(0).all() and mk.state.error.eq(0).all()


# Tile options (kernels/mega/lower.TileOptions) change the tile geometry, never the result.
TILE_OPTIONS = [
    ("bf16", 1, TileOptions(k_fold=2)),
    ("int8", 1, TileOptions(k_fold=2, gemv_rows=8)),
    ("int4", 1, TileOptions(gemv_rows=8)),
    ("int8", 4, TileOptions(gemv_rows=32)),
]


@pytest.mark.parametrize("quant,batch,tiles", TILE_OPTIONS, ids=lambda v: str(v))
def test_interpreter_tile_options_match_vm(quant, batch, tiles):
    case = make_case("tiny", quant, batch)
    vm_cache = case.cache.clone()
    mk = Megakernel(case.w, case.cache, tiles=tiles)
    if tiles.gemv_rows:
        assert mk.tiles.o.block_n == mk.tiles.down.block_n == tiles.gemv_rows
    if tiles.k_fold:
        assert mk.tiles.k_fold == tiles.k_fold
    out = mk.decode(case.tokens, case.positions)
    mk.check()
    vm_out = PyVM(mk.prog, case.w, vm_cache).decode(build_schedule(mk.prog, 1, "round-robin", "model"), case.tokens,
                                                     case.positions)
    what = f"{tiles} {quant} B{batch}"
    assert_logits_close(out, vm_out, KERNEL_TOL, what + " vs VM")
    assert_logits_close(out, case.ref_logits, KERNEL_TOL, what + " vs reference")
    assert_cache_written(case, case.cache, what)


def test_tile_options_the_interpreter_cannot_honour_are_refused():
    case = make_case("tiny", "bf16", 1)
    with pytest.raises(ConfigError, match=r"megakernel.tiles.l2_prefetch=1 is GPU-only"):
        Megakernel(case.w, case.cache, tiles=TileOptions(l2_prefetch=1))
    with pytest.raises(ConfigError, match=r"megakernel.tiles.k_fold=4 must be one of 1, 2"):
        Megakernel(case.w, case.cache, tiles=TileOptions(k_fold=4))


def test_timeout_names_the_instruction_and_counter():
    """A producer that never releases its counter: the consumer's bounded wait fails, no hang."""
    case = make_case("tiny", "fp16", 1)
    mk = Megakernel(case.w, case.cache, spin_limit=50)
    prog = mk.prog
    victim = next(i for i, ins in enumerate(prog.instrs) if isinstance(ins, AttnPartial) and ins.layer == 1)
    producer = prog.dependencies()[victim][-1]  # the last QKV row block of kv head 0, layer 1
    q = mk.schedule.launches[0]
    pos = q.programs[0].index(producer)
    q.queues[0, pos, 6] = -1  # it runs, but bumps nothing
    mk.decode(case.tokens, case.positions)
    with pytest.raises(MegakernelError, match=r"instruction #\d+ AttnPartial\(layer=1, kv_head=0, split=0\).*"
                                              r"counter \d+ \(layer 1, QKV, kv head 0\) for \d+ but saw \d+ after 50"):
        mk.check()
    # The error and counters are reset: with the release restored the next step is right again.
    q.queues[0, pos, 6] = prog.space.index(prog.instrs[producer].bump)
    out = mk.decode(case.tokens, case.positions)
    mk.check()
    assert_logits_close(out, case.ref_logits, KERNEL_TOL, "after a timeout")


def test_advance_on_device_matches_vm():
    """advance: Argmax writes the next token and increments positions in the device buffers."""
    case = make_case("tiny", "fp32", 2, positions=[11, 4])
    vm_cache = case.cache.clone()
    mk = Megakernel(case.w, case.cache)
    vm = PyVM(mk.prog, case.w, vm_cache)
    sch = build_schedule(mk.prog, 1, "round-robin", "model")
    mk.set_inputs(case.tokens, case.positions)
    vm.state.tokens.copy_(case.tokens)
    vm.state.positions.copy_(case.positions)
    for step in range(2):
        out = mk.launch(advance=True)
        mk.check()
        vm_out = vm.run(sch, advance=True)
        assert_logits_close(out, vm_out, KERNEL_TOL, f"advance step {step}")
        assert mk.state.tokens.tolist() == vm.state.tokens.tolist() == vm_out.argmax(-1).tolist()
        assert mk.state.positions.tolist() == (case.positions + step + 1).tolist()


def test_impl_through_the_harness_interface():
    from harness.impls import REGISTRY, ImplContext  # needs Hydra (harness.config)

    case = make_case("tiny", "int8", 2)
    cfg = SimpleNamespace(fusion="layer", megakernel=SimpleNamespace(programs_per_sm=1, schedule="cost-balanced"))
    ctx = ImplContext(cfg=cfg, spec=case.w.spec, weights=case.w, cache=case.cache, device=torch.device("cpu"))
    cls = REGISTRY["megakernel"]
    assert cls.unsupported(ctx) is None and cls.fusion == "model"
    impl = cls(ctx)
    out = impl.decode(case.tokens, case.positions)
    impl.check()
    assert out.shape == (2, case.w.spec.vocab_size) and out.dtype == torch.float32
    assert_logits_close(out, case.ref_logits, KERNEL_TOL, "impl")
    assert impl.info()["mega_launches"] == case.w.spec.n_layers
    bad = ImplContext(cfg=cfg, spec=spec_of("odd"), weights=SimpleNamespace(quant="int4", group_size=64),
                      cache=case.cache, device=torch.device("cpu"))
    assert "quant.group_size=64 does not divide model.dim=96" in cls.unsupported(bad)


def test_auto_backend_is_resolved_by_the_runtime_and_the_impl(monkeypatch):
    """backend="auto" runs the Triton backend on the CPU: the runtime and its row say "triton"; the harness impl
    never refuses auto for the backend's sake, and refuses an explicit gluon with hopper.problem's sentence."""
    from harness.impls import REGISTRY, ImplContext
    from kernels.mega import hopper

    case = make_case("tiny", "bf16", 1)
    mk = Megakernel(case.w, case.cache, backend="auto")
    assert mk.backend == "triton" and mk.info()["mega_backend"] == "triton"
    with pytest.raises(ValueError, match="megakernel.backend='cuda' is not a backend; choose one of auto, triton"):
        Megakernel(case.w, case.cache, backend="cuda")

    def ctx(backend, **tiles):
        mk = SimpleNamespace(programs_per_sm=1, schedule="round-robin", backend=backend, tiles=TileOptions(**tiles))
        return ImplContext(cfg=SimpleNamespace(fusion="model", megakernel=mk), spec=case.w.spec, weights=case.w,
                           cache=case.cache, device=torch.device("cpu"))
    cls = REGISTRY["megakernel"]
    why = hopper.problem(case.w.spec, "bf16", 1, torch.device("cpu"))
    assert why and cls.unsupported(ctx("gluon")) == why
    assert cls.unsupported(ctx("auto")) is None and cls.unsupported(ctx("triton")) is None
    # where the Gluon backend runs (hopper.problem made to say so), auto picks it unless tile options are given, and
    # an explicit gluon with tile options is refused with the runtime's sentence
    from harness.config import resolved_backend

    monkeypatch.setattr(hopper, "problem", lambda *a, **k: None)
    spec, cpu = case.w.spec, torch.device("cpu")
    assert resolved_backend(ctx("auto").cfg, spec, "bf16", 1, cpu) == "gluon"
    assert resolved_backend(ctx("auto", gemv_rows=8).cfg, spec, "bf16", 1, cpu) == "triton"
    assert cls.unsupported(ctx("auto")) is None and cls.unsupported(ctx("auto", gemv_rows=8)) is None
    assert "chooses its own tiles" in cls.unsupported(ctx("gluon", gemv_rows=8))
    assert Megakernel(case.w, case.cache, backend="auto", tiles=TileOptions(gemv_rows=8)).backend == "triton"


def test_diff_tool_finds_the_first_divergent_instruction():
    case = make_case("tiny", "fp32", 1)
    corrupt = random_weights(case.w.spec, "fp32", GROUP_SIZE, "cpu", seed=0)
    corrupt.layers[1].w_down.weight[0] *= -1.0  # row 0 of layer 1's down projection, kernel side only
    d = first_divergence(case.w, case.cache, case.tokens, case.positions, kernel_weights=corrupt)
    assert d is not None and d.instr == "DownResidual(layer=1, row_block=0)", str(d)
    assert "h" in d.mismatches


def test_int4_group_size_not_a_power_of_two():
    """int4 with group 48 (padded to 64 in registers) on a model whose dims 48 divides."""
    from kernels.model import ModelSpec
    from harness.reference import LlamaDecoder
    from kernels.model import KVCache

    spec = ModelSpec(name="g48", dim=96, n_layers=2, n_heads=6, n_kv_heads=3, ffn_dim=192, vocab_size=200,
                     max_seq_len=256, head_dim=16)
    w = random_weights(spec, "int4", 48, "cpu")
    cache = KVCache.empty(spec, 2, 30, w.dtype, "cpu")
    gen = torch.Generator().manual_seed(3)
    cache.k.normal_(generator=gen)
    cache.v.normal_(generator=gen)
    tokens, positions = torch.tensor([1, 2]), torch.tensor([29, 7])
    ref = LlamaDecoder(w, compute_dtype=torch.float32, max_len=30).decode(tokens, positions, cache.clone())
    mk = Megakernel(w, cache, policy="cost-balanced")
    out = mk.decode(tokens, positions)
    mk.check()
    assert_logits_close(out, ref, KERNEL_TOL, "int4 g48")


def test_greedy_generation_matches_the_reference_on_cpu():
    """Tokens advanced on the device agree with the reference decoder's greedy tokens (fp32, tiny)."""
    from greedy import explain, greedy_compare

    out = greedy_compare(random_weights(spec_of("tiny"), "fp32", GROUP_SIZE, "cpu", seed=0), prompt_len=6, steps=4)
    assert out["first_divergence"] is None, explain(out)


@pytest.mark.parametrize("batch", [1, 4], ids=lambda b: f"B{b}")
def test_lm_head_exact_tie_goes_to_the_lowest_index(batch):
    """Three identical LM-head rows, scaled to hold the largest logit of every sequence: two in different tiles
    of one LmHead row block (the block's own scan, kernels/mega/interpreter.lm_head) and one in a later block
    (Argmax over the blocks' partials). Their logits are bit-identical, and the next token must be the lowest
    of the three, as torch.argmax picks."""
    w = random_weights(spec_of("tiny"), "fp32", GROUP_SIZE, "cpu", seed=0)  # a private copy: edited below
    base = make_case("tiny", "fp32", batch, w=w)
    mk = Megakernel(w, base.cache.clone())
    rows_per_block, tile = mk.prog.rows_per_instr(mk.tiles.lm_head), mk.tiles.lm_head.block_n
    assert rows_per_block >= 2 * tile and mk.prog.n_lm >= 4, "the tie needs two tiles per block and three blocks"
    first = rows_per_block + 3  # block 1, tile 0
    tied = [first, first + tile + 2, 3 * rows_per_block + 5]  # block 1 tile 1, block 3
    # A row whose logit is positive for every sequence, scaled by a power of two (exact in fp32) past the max.
    logits = base.ref_logits
    donor = int(torch.nonzero((logits > 0).all(dim=0))[0])
    factor = 2.0 ** math.ceil(math.log2(float((logits.max(dim=1).values / logits[:, donor]).max())) + 1)
    row = w.lm_head.weight[donor] * factor
    for r in tied:
        w.lm_head.weight[r] = row
    case = make_case("tiny", "fp32", batch, w=w)
    assert case.ref_logits.argmax(dim=1).tolist() == [tied[0]] * batch  # the reference's own tie rule

    mk = Megakernel(w, case.cache)
    out = mk.decode(case.tokens, case.positions)
    mk.check()
    top = out[:, tied]
    assert (top == top[:, :1]).all(), f"the tied logits must be bit-identical: {top.tolist()}"
    assert (top[:, 0] == out.max(dim=1).values).all(), "the tied rows must hold the largest logit"
    assert mk.state.next_tokens.tolist() == [tied[0]] * batch, (
        f"exact tie over rows {tied}: next tokens {mk.state.next_tokens.tolist()}, want the lowest index {tied[0]}")


def test_interpreter_sequence_groups_match_vm(monkeypatch):
    """AttnPartial over sequence groups in the kernel (one program on the CPU picks one group, so two are forced):
    batch 3 in groups [0, 2) and [2, 3), each partial writing o_part / lse at its context slice, not its split."""
    import kernels.mega.lower as lower_mod

    monkeypatch.setattr(lower_mod, "seq_groups", lambda batch, n_kv_heads, n_programs: 2)
    case = make_case("odd", "fp16", 3)
    vm_cache = case.cache.clone()
    mk = Megakernel(case.w, case.cache)
    assert mk.tiles.seq_groups == 2 and mk.prog.seqs_per_group == 2 and mk.tiles.n_splits > 1
    out = mk.decode(case.tokens, case.positions)
    mk.check()
    vm = PyVM(mk.prog, case.w, vm_cache)
    vm_out = vm.decode(build_schedule(mk.prog, 1, "round-robin", "model"), case.tokens, case.positions)
    assert_logits_close(out, vm_out, KERNEL_TOL, "interpreter sequence groups vs VM")
    assert_logits_close(out, case.ref_logits, KERNEL_TOL, "interpreter sequence groups vs reference")
    assert_cache_written(case, case.cache, "interpreter sequence groups")
