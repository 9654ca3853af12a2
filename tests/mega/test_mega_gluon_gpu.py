"""megakernel.backend=gluon (kernels/mega/hopper.py) on a Hopper GPU: the fp32 reference at Llama-3.2-1B and
Llama-3.1-8B shapes (bf16, fp16 and int8 weights, batch 1 / 5 / 16, contexts 128 and 8192), with every output buffer and the cache
position it appends poisoned first; bitwise-repeatable runs and fusion cuts; 128 greedy tokens. Graph replay and the
timeout path are test_mega_gpu.py's, run for both backends. Run with `pytest -m gpu tests/mega/test_mega_gluon_gpu.py`."""
import pytest
import torch

from harness.reference import LlamaDecoder
from harness.weights import random_weights
from kernels.mega.runtime import Megakernel
from conftest import big_memory
from mega_checks import FUSIONS, rel_err, spec_of
from test_mega_gpu import REL_TOL, _act, _setup, _weights

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9,
    reason="megakernel.backend=gluon needs a Hopper GPU")]


def _poison(mk: Megakernel) -> None:
    """NaN in every float buffer an instruction writes, so an unwritten element fails the finite checks."""
    for name in ("h", "q", "attn", "act", "o_part", "lse", "logits", "pmax"):
        getattr(mk.state, name).fill_(float("nan"))


@pytest.mark.parametrize("model,quant,batch,ctx", [
    pytest.param("llama1b", "bf16", 1, 128), pytest.param("llama1b", "bf16", 5, 1024),
    pytest.param("llama1b", "fp16", 16, 8192), pytest.param("llama1b", "bf16", 16, 128),
    pytest.param("gluon-odd", "bf16", 3, 300), pytest.param("gluon-odd", "fp16", 16, 1000),
    pytest.param("llama1b", "int8", 1, 1024), pytest.param("llama1b", "int8", 16, 128),
    pytest.param("gluon-odd", "int8", 5, 300),
    pytest.param("llama8b", "int8", 1, 1024, marks=big_memory(True)),
    pytest.param("llama8b", "bf16", 1, 1024, marks=big_memory(True)),
    pytest.param("llama8b", "bf16", 16, 8192, marks=big_memory(True))])
def test_gluon_matches_reference(model, quant, batch, ctx):
    w, cache, tokens, positions = _setup(model, quant, batch, ctx)
    ref = LlamaDecoder(w, compute_dtype=torch.float32, max_len=ctx + 1).decode(tokens, positions, cache.clone())
    cache.k[:, :, :, ctx] = float("nan")  # the step must write this position
    cache.v[:, :, :, ctx] = float("nan")
    mk = Megakernel(w, cache, backend="gluon")
    _poison(mk)
    out = mk.decode(tokens, positions).clone()
    mk.check()
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) <= REL_TOL[_act(quant)], f"rel err {rel_err(out, ref):.3g}"
    # The argmax agrees wherever the reference's top-2 gap exceeds twice the largest logit error (elsewhere the
    # rounding may flip a near tie; random weights and a 4000-word vocabulary make those common).
    top2 = ref.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * (out - ref).abs().amax(-1)
    assert clear.any(), "no sequence with a clear top-2 gap: the argmax check would check nothing"
    assert torch.equal(out.argmax(-1)[clear], ref.argmax(-1)[clear]), f"argmax differs where the gap is clear"
    assert torch.equal(mk.state.next_tokens.long(), out.argmax(-1))  # the kernel's own argmax, lowest index on ties
    assert torch.isfinite(cache.k[:, :, :, ctx]).all() and torch.isfinite(cache.v[:, :, :, ctx]).all()
    for _ in range(2):  # repeated runs are bitwise identical
        again = mk.decode(tokens, positions)
        mk.check()
        assert torch.equal(again, out)


@pytest.mark.parametrize("model,quant,batch,ctx,programs", [
    ("llama1b", "bf16", 16, 1024, None), ("gluon-odd", "int8", 5, 300, None),
    ("llama1b", "bf16", 16, 1024, 16), ("gluon-odd", "int8", 5, 300, 4)])
def test_gluon_ragged_positions(model, quant, batch, ctx, programs):
    """Every sequence at its own position (its own key count and split slices: a partial covers one sequence group,
    kernels.mega.lower.seq_groups), keys past a sequence's position holding random values it must not read, the
    appended position of each sequence poisoned. On a full grid each partial holds one sequence; with 16 or 4
    programs, several (llama1b: 2 groups of 8; gluon-odd: groups [0, 3) and [3, 5)), so the K/V ring restarts
    between sequences within one instruction."""
    w, cache, tokens, _ = _setup(model, quant, batch, ctx)
    positions = (ctx - 1 - 61 * torch.arange(batch, device=cache.k.device)).clamp(min=0)
    ref = LlamaDecoder(w, compute_dtype=torch.float32, max_len=ctx + 1).decode(tokens, positions, cache.clone())
    b = torch.arange(batch, device=cache.k.device)
    for t in (cache.k, cache.v):
        t[:, b, :, positions] = float("nan")  # the step must write these
    mk = Megakernel(w, cache, backend="gluon", n_programs=programs)
    if programs is not None:
        assert mk.prog.seqs_per_group > 1
    _poison(mk)
    out = mk.decode(tokens, positions).clone()
    mk.check()
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) <= REL_TOL[_act(quant)], f"rel err {rel_err(out, ref):.3g}"
    assert torch.isfinite(cache.k[:, b, :, positions]).all() and torch.isfinite(cache.v[:, b, :, positions]).all()


def test_gluon_fusion_cuts_are_bitwise_identical():
    """Launch cuts change where the ring restarts, not the math."""
    w, cache, tokens, positions = _setup("llama1b", "bf16", 2, 1024)
    outs = {}
    for fusion in FUSIONS:
        mk = Megakernel(w, cache, fusion=fusion, backend="gluon")
        outs[fusion] = mk.decode(tokens, positions).clone()
        mk.check()
    for k, v in outs.items():
        assert torch.equal(v, outs["model"]), f"fusion={k} differs from fusion=model"


def test_gluon_greedy_128_tokens_match_the_reference():
    from greedy import explain, greedy_compare

    _weights.clear()
    torch.cuda.empty_cache()
    out = greedy_compare(random_weights(spec_of("llama1b"), "bf16", 128, "cuda", seed=0), prompt_len=32, steps=128,
                         backend="gluon")
    print(explain(out))
    if out["first_divergence"] is not None:
        assert abs(out["gap"]) < 0.02 * max(out["logit_std"], 1.0) + 0.05, explain(out)
