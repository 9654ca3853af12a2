"""The reference decoder equals transformers' LlamaForCausalLM on tiny random checkpoints loaded
through our loader: prefill and several decode steps, tied/untied, with/without llama3 RoPE scaling."""
import pytest
import torch

from harness.models import hf_spec
from harness.reference import LlamaDecoder
from harness.weights import load_hf_weights
from kernels.model import KVCache
from tests.hf_tiny import write_tiny_checkpoint


@pytest.mark.parametrize("batch", [1, 3], ids=lambda b: f"B{b}")
@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("scaling", [True, False], ids=["llama3-rope", "plain-rope"])
@pytest.mark.parametrize("quant,tol", [("fp32", 2e-5), ("bf16", 2e-2)], ids=["fp32", "bf16"])
def test_reference_matches_transformers(tmp_path, batch, tie, scaling, quant, tol):
    hf = write_tiny_checkpoint(tmp_path, tie=tie, llama3_scaling=scaling, seed=batch)
    spec = hf_spec(tmp_path)
    assert spec.tie_embeddings == tie and (spec.rope_scaling is not None) == scaling
    dtype = torch.float32 if quant == "fp32" else torch.bfloat16
    hf = hf.to(dtype)
    ref = LlamaDecoder(load_hf_weights(tmp_path, spec, quant, 32, "cpu"), max_len=64)
    prompt_len, steps = 11, 4
    tokens = torch.randint(0, spec.vocab_size, (batch, prompt_len), generator=torch.Generator().manual_seed(7))
    cache = KVCache.empty(spec, batch, 64, dtype, "cpu")
    with torch.no_grad():
        out = hf(tokens, use_cache=True)
        ours = ref.prefill(tokens, cache, chunk=4)  # chunked: exercises start offsets
        torch.testing.assert_close(ours, out.logits[:, -1].float(), atol=tol, rtol=0)
        pkv, nxt = out.past_key_values, out.logits[:, -1].argmax(-1)
        for step in range(steps):
            out = hf(nxt[:, None], past_key_values=pkv, use_cache=True)
            pkv = out.past_key_values
            ours = ref.decode(nxt, torch.full((batch,), prompt_len + step), cache)
            torch.testing.assert_close(ours, out.logits[:, 0].float(), atol=tol, rtol=0)
            nxt = out.logits[:, 0].argmax(-1)


def test_decode_positions_are_per_sequence(tmp_path):
    """Sequences at different positions in one batch equal each decoded alone."""
    write_tiny_checkpoint(tmp_path)
    spec = hf_spec(tmp_path)
    ref = LlamaDecoder(load_hf_weights(tmp_path, spec, "fp32", 32, "cpu"), max_len=32)
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, spec.vocab_size, (1, n), generator=g) for n in (5, 9)]
    solo = []
    for p in prompts:
        c = KVCache.empty(spec, 1, 32, torch.float32, "cpu")
        ref.prefill(p, c)
        solo.append((c, ref.decode(torch.tensor([7]), torch.tensor([p.shape[1]]), c)))
    both = KVCache(torch.cat([solo[0][0].k, solo[1][0].k], dim=1), torch.cat([solo[0][0].v, solo[1][0].v], dim=1))
    out = ref.decode(torch.tensor([7, 7]), torch.tensor([5, 9]), both)
    torch.testing.assert_close(out, torch.cat([solo[0][1], solo[1][1]]), atol=1e-5, rtol=0)


def test_per_layer_cache_gives_the_same_logits():
    """torch-compile's per-layer cache layout computes exactly what the stacked layout does."""
    from harness.models import named_spec
    from harness.weights import random_weights

    spec = named_spec("tiny")
    ref = LlamaDecoder(random_weights(spec, "fp32", 32, "cpu"), max_len=40)
    cache = KVCache.empty(spec, 2, 40, torch.float32, "cpu")
    ref.prefill(torch.randint(0, spec.vocab_size, (2, 20), generator=torch.Generator().manual_seed(1)), cache)
    split = cache.per_layer()
    tok, pos = torch.tensor([3, 5]), torch.tensor([20, 20])
    torch.testing.assert_close(ref.decode(tok, pos, split), ref.decode(tok, pos, cache), atol=0, rtol=0)
    torch.testing.assert_close(split.k[1], cache.k[1], atol=0, rtol=0)  # both appended at position 20
