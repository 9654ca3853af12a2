"""The layerwise impl on a GPU with int8 / int4 weights: its GEMVs take the tensor-core kernel (kernels/qgemv.py)
(the LM head's too) through the fragment copies it makes, its logits match the fp32 reference decoder, and close() frees the copies;
the fragment bookkeeping is checked on the CPU too."""
import pytest
import torch

from harness.impls.base import ImplContext
from harness.impls.layerwise import Layerwise
from harness.models import named_spec
from harness.reference import LlamaDecoder
from harness.weights import random_weights
from kernels.model import KVCache

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("batch", [1, 16], ids=lambda b: f"B{b}")
@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("quant", ["int4", "int8"])
def test_layerwise_quantized_runs_on_tensor_cores_and_matches_reference(quant, batch):
    spec, dev, ctx_len = named_spec("llama1b"), torch.device("cuda"), 300
    w = random_weights(spec, quant, 128, dev, seed=3)
    gen = torch.Generator(device=dev).manual_seed(batch)
    cache = KVCache.empty(spec, batch, ctx_len + 1, w.dtype, dev)
    cache.k[:, :, :, :ctx_len].normal_(generator=gen)
    cache.v[:, :, :, :ctx_len].normal_(generator=gen)
    tokens = torch.randint(0, spec.vocab_size, (batch,), generator=gen, device=dev)
    positions = torch.full((batch,), ctx_len, dtype=torch.long, device=dev)
    expect = LlamaDecoder(w, compute_dtype=torch.float32, max_len=ctx_len + 1).decode(tokens, positions, cache.clone())
    impl = Layerwise(ImplContext(cfg=None, spec=spec, weights=w, cache=cache, device=dev))
    tensor_cores = quant == "int4" or batch <= 8  # kernels.qgemv.preferred
    assert impl.info() == {"gemv_path": "qgemv" if tensor_cores else "fma"}
    made = [q.frag is not None for lw in w.layers for q in lw.linears().values()] + [w.lm_head.frag is not None]
    assert all(made) if tensor_cores else not any(made)
    got = impl.decode(tokens, positions).float()
    err = ((got - expect).norm() / expect.norm()).item()
    assert torch.isfinite(got).all() and err <= 3e-2, f"relative error {err:.3g}"
    assert (got.argmax(-1) == expect.argmax(-1)).float().mean() >= 0.9
    impl.close()
    assert all(q.frag is None for lw in w.layers for q in lw.linears().values()) and w.lm_head.frag is None


@pytest.mark.parametrize("quant", ["int4", "int8"])
def test_layerwise_makes_and_frees_fragments_of_every_linear_and_the_lm_head(quant, monkeypatch):
    """The fragment bookkeeping without a GPU: with the tensor-core check and the free-memory query stubbed, the impl
    makes a fragment copy of every layer linear and of the LM head, and close() frees each of them."""
    spec, dev = named_spec("tiny"), torch.device("cpu")
    w = random_weights(spec, quant, 64, dev, seed=1)
    cache = KVCache.empty(spec, 1, 8, w.dtype, dev)
    monkeypatch.setattr(Layerwise, "_tensor_core_gemv", staticmethod(lambda ctx: True))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1 << 40, 1 << 40))
    impl = Layerwise(ImplContext(cfg=None, spec=spec, weights=w, cache=cache, device=dev))
    linears = [q for lw in w.layers for q in lw.linears().values()] + [w.lm_head]
    assert impl.info() == {"gemv_path": "qgemv"} and all(q.frag is not None for q in linears)
    impl.close()
    assert all(q.frag is None for q in linears)
