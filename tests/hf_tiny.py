"""Tiny random Hugging Face Llama checkpoints written with save_pretrained (the parity oracle)."""
from __future__ import annotations

from pathlib import Path

import torch


def write_tiny_checkpoint(path: Path, tie: bool = False, llama3_scaling: bool = True, seed: int = 0,
                          max_position_embeddings: int = 256, **shape) -> "torch.nn.Module":
    """save_pretrained of a random tiny LlamaForCausalLM into `path`; `shape` overrides LlamaConfig's sizes
    (hidden_size, intermediate_size, num_attention_heads, num_key_value_heads, head_dim, num_hidden_layers,
    vocab_size)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    kw = {}
    if llama3_scaling:
        kw["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                              "original_max_position_embeddings": 32}
    sizes = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=120)
    sizes.update(shape)
    cfg = LlamaConfig(max_position_embeddings=max_position_embeddings, rope_theta=500000.0, tie_word_embeddings=tie,
                      rms_norm_eps=1e-5, **sizes, **kw)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # HF's init leaves norms at 1: perturb them so a missed norm weight is caught
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(str(path))
    return model
