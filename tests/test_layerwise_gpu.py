"""The layerwise impl on a GPU with int8 / int4 weights: its GEMVs take the tensor-core kernel (kernels/qgemv.py)
(the LM head's too) through the fragment copies it makes, its logits match the fp32 reference decoder, and close() frees the copies."""
import pytest
import torch

from harness.impls.base import ImplContext
from harness.impls.layerwise import Layerwise
from harness.models import named_spec
from harness.reference import LlamaDecoder
from harness.weights import random_weights
from kernels.model import KVCache

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("batch", [1, 16], ids=lambda b: f"B{b}")
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
    assert impl.info() == {"gemv_path": "qgemv"}
    assert all(q.frag is not None for lw in w.layers for q in lw.linears().values()) and w.lm_head.frag is not None
    got = impl.decode(tokens, positions).float()
    err = ((got - expect).norm() / expect.norm()).item()
    assert torch.isfinite(got).all() and err <= 3e-2, f"relative error {err:.3g}"
    assert (got.argmax(-1) == expect.argmax(-1)).float().mean() >= 0.9
    impl.close()
    assert all(q.frag is None for lw in w.layers for q in lw.linears().values()) and w.lm_head.frag is None
