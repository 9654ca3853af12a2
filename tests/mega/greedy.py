"""Greedy generation: the megakernel (tokens and positions advanced on the device) against the
reference decoder in the model's own dtype (what torch-eager runs), from the same prompt.

Tokens must agree; where they first differ, the reference's logit gap between its token and the
megakernel's must be within what the activation dtype's rounding can flip (the megakernel keeps the
residual stream in fp32, the reference rounds to bf16 after every op as transformers does)."""
from __future__ import annotations

import torch

from harness.reference import LlamaDecoder
from kernels.model import KVCache
from kernels.model import ModelWeights
from kernels.mega.runtime import Megakernel


def greedy_compare(w: ModelWeights, prompt_len: int, steps: int, seed: int = 0, backend: str = "triton") -> dict:
    spec, device = w.spec, w.device
    max_len = prompt_len + steps + 1
    gen = torch.Generator(device=device).manual_seed(seed)
    prompt = torch.randint(0, spec.vocab_size, (1, prompt_len), generator=gen, device=device)
    ref = LlamaDecoder(w, max_len=max_len)
    ref_cache = KVCache.empty(spec, 1, max_len, w.dtype, device)
    first = ref.prefill(prompt, ref_cache).argmax(-1)  # [1]
    mk_cache = ref_cache.clone()

    ref_tokens, ref_logits, tok = [], [], first
    for t in range(steps):
        logits = ref.decode(tok, torch.tensor([prompt_len + t], device=device), ref_cache)
        tok = logits.argmax(-1)
        ref_tokens.append(int(tok))
        ref_logits.append(logits[0].float())

    mk = Megakernel(w, mk_cache, backend=backend)
    mk.set_inputs(first, torch.tensor([prompt_len], device=device))
    mk_tokens = []
    for _ in range(steps):
        mk.launch(advance=True)
        mk_tokens.append(int(mk.state.tokens[0]))
    mk.check()
    out = {"steps": steps, "ref_tokens": ref_tokens, "mk_tokens": mk_tokens, "first_divergence": None}
    for t, (a, b) in enumerate(zip(ref_tokens, mk_tokens)):
        if a != b:
            lg = ref_logits[t]
            out.update(first_divergence=t, gap=float(lg[a] - lg[b]), logit_std=float(lg.std()))
            break
    return out


def explain(out: dict) -> str:
    if out["first_divergence"] is None:
        return f"all {out['steps']} greedy tokens agree"
    return (f"first divergence at step {out['first_divergence']}: reference logit gap {out['gap']:.4f} between its "
            f"token and the megakernel's (logit std {out['logit_std']:.3f})")
