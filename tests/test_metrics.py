"""bytes_per_step against a hand count for llama1b."""
from harness.metrics import bytes_per_step
from harness.models import named_spec
from harness.weights import random_weights
from kernels.quant import quant_mode


def test_bytes_per_step_llama1b_by_hand():
    s = named_spec("llama1b")
    # per layer: qkv (2048+2*512) x 2048, o 2048x2048, gate+up 2 x 8192x2048, down 2048x8192
    per_layer = 3072 * 2048 + 2048 * 2048 + 3 * 8192 * 2048
    linear_params = 16 * per_layer + 128256 * 2048  # + LM head (tied: the embedding, read as the head)
    kv_per_pos = 16 * 2 * 8 * 64 * 2  # layers x (K,V) x kv heads x head dim x bf16
    norms = (2 * 16 + 1) * 2048 * 2
    for batch, ctx in [(1, 1024), (4, 300)]:
        expect = linear_params * 2 + norms + batch * 2048 * 2 + batch * ctx * kv_per_pos + batch * kv_per_pos \
            + batch * 128256 * 4
        assert bytes_per_step(s, "bf16", 128, batch, ctx)["total"] == expect
    # int4 g128: half a byte per weight + a bf16 scale and zero per 128 weights
    b4 = bytes_per_step(s, "int4", 128, 1, 0)
    assert b4["weights"] + b4["lm_head"] == linear_params // 2 + linear_params // 128 * 4


def test_linear_nbytes_matches_built_weights():
    s = named_spec("tiny")
    for quant in ("bf16", "int8", "int4"):
        w = random_weights(s, quant, 32, "cpu")
        mode = quant_mode(quant)
        counted = s.n_layers * sum(mode.linear_nbytes(n, k, 32) for n, k in s.linear_shapes().values()) \
            + mode.linear_nbytes(s.vocab_size, s.dim, 32)
        assert w.linear_bytes() == counted
