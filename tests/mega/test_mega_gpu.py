"""The megakernel on a real GPU (run on the GPU machine: `pytest -m gpu tests/mega`): Llama-3.2-1B, 3B and
Llama-3.1-8B shapes with random weights, every quant mode, batch 1 and 16, contexts 128 and 8192,
programs_per_sm 1 and 2 (see _matrix), against the fp32 reference; bitwise-identical repeated runs and across fusion
levels and policies; a graph-replayed multi-token generation; the timeout path (no hang)."""
import time

import pytest
import torch

from harness.reference import LlamaDecoder
from kernels.model import KVCache
from harness.weights import kv_cache_nbytes, random_weights, weight_nbytes
from kernels.mega.instructions import AttnPartial
from kernels.mega.lower import TileOptions
from kernels.mega.runtime import Megakernel, MegakernelError
from conftest import big_memory, wait_for_gpu_memory
from mega_checks import FUSIONS, POLICIES, rel_err, spec_of

pytestmark = pytest.mark.gpu
DEVICE = "cuda"
GROUP = 128
# harness.runner.REL_TOL by activation dtype name (not imported: the runner needs Hydra)
REL_TOL = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 3e-2}
_weights: dict = {}  # one (model, quant) at a time: an 8B model in fp32 takes 32 GB


def _weights_for(model: str, quant: str):
    key = (model, quant)
    if key not in _weights:
        _weights.clear()
        torch.cuda.empty_cache()
        _weights[key] = random_weights(spec_of(model), quant, GROUP, DEVICE, seed=0)
    return _weights[key]


def _setup(model, quant, batch, ctx, seed=1):
    spec = spec_of(model)
    # cache + the reference's clone (+ its fp32 temporaries), weights unless already built
    kv = 3 * kv_cache_nbytes(spec, batch, ctx + 1) * (2 if quant == "fp32" else 1)
    if (model, quant) not in _weights:  # drop the last test's weights before waiting for memory, not after
        _weights.clear()
        torch.cuda.empty_cache()
    need = kv + (0 if (model, quant) in _weights else weight_nbytes(spec, quant, GROUP))
    wait_for_gpu_memory(need, f"{model} {quant} batch {batch} ctx {ctx}")
    w = _weights_for(model, quant)
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    cache = KVCache.empty(spec, batch, ctx + 1, w.dtype, DEVICE)
    for t in (cache.k, cache.v):
        for i in range(t.shape[0]):
            t[i, :, :, :ctx].normal_(generator=gen)
    tokens = torch.randint(0, spec.vocab_size, (batch,), generator=gen, device=DEVICE)
    positions = torch.full((batch,), ctx, dtype=torch.long, device=DEVICE)
    return w, cache, tokens, positions


def _act(quant):
    return quant if quant in ("fp32", "fp16") else "bf16"


def _matrix():
    """Every model x quant mode x batch 1/16 x ctx 128/8192 at the default 2 programs per SM; 1 program per SM
    for every model x quant at batch 1 and 16, ctx 128; fp32 (a CPU-check mode) on llama1b only."""
    out = []
    for model in ("llama1b", "llama3b", "llama8b"):
        for quant in ("bf16", "fp16", "int8", "int4") + (("fp32",) if model == "llama1b" else ()):
            for batch in (1, 16):
                for ctx in (128, 8192):
                    # the 3B / 8B caches at batch 16, ctx 8192 take ~17 GB (x3 with the reference's copies)
                    heavy = batch == 16 and ctx == 8192 and model != "llama1b"
                    out.append(pytest.param(model, quant, batch, ctx, 2, id=f"{model}-{quant}-B{batch}-ctx{ctx}-pps2",
                                            marks=big_memory(heavy)))
                out.append(pytest.param(model, quant, batch, 128, 1, id=f"{model}-{quant}-B{batch}-ctx128-pps1"))
    return out


@pytest.mark.parametrize("model,quant,batch,ctx,pps", _matrix())
def test_gpu_matches_reference(model, quant, batch, ctx, pps):
    w, cache, tokens, positions = _setup(model, quant, batch, ctx)
    ref = LlamaDecoder(w, compute_dtype=torch.float32, max_len=ctx + 1).decode(tokens, positions, cache.clone())
    cache.k[:, :, :, ctx] = float("nan")  # the runner's poison: the step must write this position
    cache.v[:, :, :, ctx] = float("nan")
    mk = Megakernel(w, cache, programs_per_sm=pps)
    assert 1 <= mk.programs_per_sm <= pps
    out = mk.decode(tokens, positions).clone()
    mk.check()
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) <= REL_TOL[_act(quant)], f"rel err {rel_err(out, ref):.3g}"
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.9
    assert torch.isfinite(cache.k[:, :, :, ctx]).all() and torch.isfinite(cache.v[:, :, :, ctx]).all()
    for _ in range(2):  # repeated runs are bitwise identical
        again = mk.decode(tokens, positions)
        mk.check()
        assert torch.equal(again, out)


# Tile options off the default path for their point (the default paths are in the matrix above).
GPU_TILE_OPTIONS = [
    ("llama8b", "int8", 1, TileOptions(k_fold=2, gemv_rows=8)),
    ("llama1b", "int4", 1, TileOptions(gemv_rows=8)),
    ("llama1b", "bf16", 4, TileOptions(l2_prefetch=0, num_warps=8)),
    ("llama1b", "bf16", 1, TileOptions(k_fold=2)),
]


@pytest.mark.parametrize("model,quant,batch,tiles", GPU_TILE_OPTIONS, ids=lambda v: str(v))
def test_gpu_tile_options_match_reference(model, quant, batch, tiles):
    w, cache, tokens, positions = _setup(model, quant, batch, 1024)
    ref = LlamaDecoder(w, compute_dtype=torch.float32, max_len=1025).decode(tokens, positions, cache.clone())
    mk = Megakernel(w, cache, tiles=tiles, tuned=False)
    out = mk.decode(tokens, positions).clone()
    mk.check()
    assert rel_err(out, ref) <= REL_TOL[_act(quant)], f"{tiles}: rel err {rel_err(out, ref):.3g}"
    assert torch.equal(mk.decode(tokens, positions), out)


@pytest.mark.parametrize("quant,batch", [("bf16", 1), ("int4", 16), ("int8", 4)])
def test_gpu_fusion_and_policy_are_bitwise_identical(quant, batch):
    """Same instructions, same math: launch cuts and queue policies must not change a single bit."""
    w, cache, tokens, positions = _setup("llama1b", quant, batch, 1024)
    outs = {}
    for fusion in FUSIONS:
        for policy in POLICIES:
            mk = Megakernel(w, cache, fusion=fusion, policy=policy)
            outs[(fusion, policy)] = mk.decode(tokens, positions).clone()
            mk.check()
    base = outs[("model", "round-robin")]
    for k, v in outs.items():
        assert torch.equal(v, base), f"{k} differs from model/round-robin"


# Both megakernel backends; the Gluon one needs a Hopper GPU.
BACKENDS = ["triton", pytest.param("gluon", marks=pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9,
    reason="megakernel.backend=gluon needs a Hopper GPU"))]


@pytest.mark.parametrize("backend", BACKENDS)
def test_gpu_graph_replay_generates_like_eager_steps(backend):
    """advance=True in one captured CUDA graph, replayed: the same tokens and logits as eager launches."""
    w, cache, tokens, positions = _setup("llama1b", "bf16", 4, 512)
    start_k, start_v = cache.k.clone(), cache.v.clone()
    mk = Megakernel(w, cache, backend=backend)
    mk.set_inputs(tokens, positions)
    eager = []
    for _ in range(4):
        eager.append((mk.launch(advance=True).clone(), mk.state.tokens.clone()))
    mk.check()
    cache.k.copy_(start_k)
    cache.v.copy_(start_v)
    mk.set_inputs(tokens, positions)
    mk.launch(advance=True)  # warm-up outside the capture, then rewind
    cache.k.copy_(start_k)
    cache.v.copy_(start_v)
    mk.set_inputs(tokens, positions)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.graph(graph, stream=side):
        mk.launch(advance=True)
    mk.set_inputs(tokens, positions)  # capture ran nothing; start from the initial inputs
    for logits, tok in eager:
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(mk.state.logits, logits) and torch.equal(mk.state.tokens, tok)
    assert mk.state.positions.tolist() == (positions + 4).tolist()
    mk.check()


@pytest.mark.parametrize("backend", BACKENDS)
def test_gpu_timeout_raises_instead_of_hanging(backend):
    """A producer that never releases: the waiting program reports it, every other program stops (the Gluon
    backend's programs also land the ring chunks still in flight)."""
    w, cache, tokens, positions = _setup("llama1b", "bf16", 1, 128)
    mk = Megakernel(w, cache, spin_limit=2000, backend=backend)
    victim = next(i for i, ins in enumerate(mk.prog.instrs) if isinstance(ins, AttnPartial) and ins.layer == 3)
    producer = mk.prog.dependencies()[victim][0]
    la = mk.schedule.launches[0]
    p = next(p for p, q in enumerate(la.programs) if producer in q)
    la.queues[p, la.programs[p].index(producer), 6] = -1  # never released
    t0 = time.time()
    mk.decode(tokens, positions)
    with pytest.raises(MegakernelError, match=r"AttnPartial\(layer=3, kv_head=0.*\(layer 3, QKV, kv head 0\)"):
        mk.check()
    assert time.time() - t0 < 60


@pytest.mark.parametrize("model", [pytest.param(m, marks=big_memory(m == "llama8b")) for m in ("llama1b", "llama3b", "llama8b")])
def test_gpu_greedy_128_tokens_match_the_reference(model):
    """128 greedy tokens of the bf16 model: the megakernel's agree with the reference's, or the first
    divergence is a near tie of the reference's logits (bf16 rounding can flip it)."""
    from greedy import explain, greedy_compare

    _weights.clear()
    torch.cuda.empty_cache()
    out = greedy_compare(random_weights(spec_of(model), "bf16", GROUP, DEVICE, seed=0), prompt_len=32, steps=128)
    print(model, explain(out))
    if out["first_divergence"] is not None:
        assert abs(out["gap"]) < 0.02 * max(out["logit_std"], 1.0) + 0.05, explain(out)
