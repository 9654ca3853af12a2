"""Python VM == the fp32 reference (LlamaDecoder, compute_dtype fp32) on the tiny model: every quant mode,
batch 1 and 4, every fusion granularity, both schedule policies, several programs interleaved; plus
the KV-cache append (NaN-poisoned positions) and greedy generation with `advance`."""
import dataclasses

import pytest
import torch

from harness.reference import LlamaDecoder
from kernels.mega.lower import lower, pick_tiles
from kernels.mega.pyvm import PyVM
from kernels.mega.schedule import build_schedule
from mega_checks import (CACHE_LEN, FUSIONS, GROUP_SIZE, POLICIES, QUANTS, assert_cache_written, assert_logits_close,
                         make_case)

VM_TOL = 1e-4  # relative logits error: both sides compute in fp32 on the same quantized weights
N_PROGRAMS = 3  # the VM interleaves the programs of each launch


def _vm(case, n_programs=N_PROGRAMS, fusion="model", policy="round-robin", **tile_fields):
    """The VM of a case; tile_fields replace TileConfig fields of the CPU tiles (odd geometries the lowering must
    handle, beyond what the tile rule picks)."""
    spec = case.w.spec
    t = pick_tiles(spec, case.w.quant, GROUP_SIZE, case.batch, case.cache.max_len, n_programs, interpret=True)
    t = dataclasses.replace(t, **tile_fields)
    prog = lower(spec, case.w.quant, GROUP_SIZE, case.batch, case.cache.max_len, t)
    vm = PyVM(prog, case.w, case.cache)
    return vm, build_schedule(prog, n_programs, policy, fusion)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("batch", [1, 4], ids=lambda b: f"B{b}")
@pytest.mark.parametrize("quant", QUANTS)
def test_vm_matches_reference(quant, batch, fusion, policy):
    case = make_case("tiny", quant, batch)
    vm, sch = _vm(case, fusion=fusion, policy=policy)
    out = vm.decode(sch, case.tokens, case.positions)
    what = f"VM {quant} B{batch} {fusion} {policy}"
    assert_logits_close(out, case.ref_logits, VM_TOL, what)
    assert_cache_written(case, case.cache, what)
    assert vm.state.next_tokens.tolist() == case.ref_logits.argmax(-1).tolist()
    assert vm.state.counters.eq(0).all(), "Argmax leaves the counters zeroed for the next step"


@pytest.mark.parametrize("quant", ["fp16", "int4"])
def test_vm_ragged_model_and_tiles(quant):
    """Dims that are no multiple of any tile, a GQA group of 3, one pair block per head, 5 splits."""
    case = make_case("odd", quant, 3)
    vm, sch = _vm(case, n_programs=4, policy="cost-balanced", n_splits=5, kv_block=8)
    out = vm.decode(sch, case.tokens, case.positions)
    assert_logits_close(out, case.ref_logits, VM_TOL, f"VM odd {quant}")
    assert_cache_written(case, case.cache, f"VM odd {quant}")


def test_vm_advance_generates_greedily():
    """advance: Argmax writes the next token and position; three steps == three reference decodes."""
    case = make_case("tiny", "bf16", 2, positions=[9, 3])
    vm, sch = _vm(case)
    ref = LlamaDecoder(case.w, compute_dtype=torch.float32, max_len=CACHE_LEN)
    ref_cache = case.ref_cache
    tok, pos = case.ref_logits.argmax(-1), case.positions + 1  # the reference after its first step
    vm.state.tokens.copy_(case.tokens)
    vm.state.positions.copy_(case.positions)
    vm.run(sch, advance=True)
    for _ in range(2):
        assert vm.state.tokens.tolist() == tok.tolist() and vm.state.positions.tolist() == pos.tolist()
        logits = ref.decode(tok, pos, ref_cache)
        out = vm.run(sch, advance=True)
        assert_logits_close(out, logits, VM_TOL, "VM advance")
        tok, pos = logits.argmax(-1), pos + 1
