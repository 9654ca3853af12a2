"""The gemlite reference impl: refused in one sentence where it cannot run (no CUDA, dense weights), and on a GPU its
logits (GemLite's kernels for every linear, under torch.compile) match the fp32 reference decoder."""
import pytest
import torch

from harness.impls.base import ImplContext
from harness.impls.gemlite_ref import GemLite
from harness.models import named_spec
from harness.reference import LlamaDecoder
from harness.weights import random_weights
from kernels.model import KVCache


def _ctx(quant, batch, dev, ctx_len=300):
    spec = named_spec("llama1b") if dev.type == "cuda" else named_spec("tiny")
    w = random_weights(spec, quant, 128 if dev.type == "cuda" else 32, dev, seed=5)
    gen = torch.Generator(device=dev).manual_seed(batch)
    cache = KVCache.empty(spec, batch, ctx_len + 1, w.dtype, dev)
    cache.k[:, :, :, :ctx_len].normal_(generator=gen)
    cache.v[:, :, :, :ctx_len].normal_(generator=gen)
    return ImplContext(cfg=None, spec=spec, weights=w, cache=cache, device=dev), gen


def test_gemlite_is_refused_without_cuda_in_one_sentence():
    ctx, _ = _ctx("int8", 1, torch.device("cpu"), ctx_len=8)
    reason = GemLite.unsupported(ctx)
    assert reason and "CUDA" in reason and "\n" not in reason


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gemlite_refuses_dense_weights():
    ctx, _ = _ctx("bf16", 1, torch.device("cuda"), ctx_len=8)
    assert "int8 / int4" in GemLite.unsupported(ctx)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("quant,batch", [("int4", 1), ("int8", 16)])
def test_gemlite_matches_the_reference_decoder(quant, batch, monkeypatch):
    pytest.importorskip("gemlite")
    dev = torch.device("cuda")
    ctx, gen = _ctx(quant, batch, dev)
    assert GemLite.unsupported(ctx) is None
    n = ctx.cache.k.shape[3] - 1
    tokens = torch.randint(0, ctx.spec.vocab_size, (batch,), generator=gen, device=dev)
    positions = torch.full((batch,), n, dtype=torch.long, device=dev)
    expect = LlamaDecoder(ctx.weights, compute_dtype=torch.float32, max_len=n + 1).decode(tokens, positions,
                                                                                          ctx.cache.clone())
    built = []
    real = GemLite.linear_layer

    def counting(w):  # every linear, the LM head's too, must be a GemLite layer (not torch-compile's own)
        layer = real(w)
        built.append(type(layer).__name__)
        return layer

    monkeypatch.setattr(GemLite, "linear_layer", staticmethod(counting))
    impl = GemLite(ctx)
    got = impl.decode(tokens, positions).float()
    info = impl.info()  # the row says which GemLite kernel ran and where its configs came from
    assert info["gemlite_kernel"] == ("GEMV_REVSPLITK" if quant == "int4" and batch == 1 else "GEMM_SPLITK"), info
    hopper = torch.cuda.get_device_capability() == (9, 0)
    assert info["gemlite_configs"] == ("h100.json" if hopper else "autotuned") and info["gemlite_version"], info
    n_linears = sum(len(lw.linears()) for lw in ctx.weights.layers) + 1
    assert len(built) == n_linears and all("GemLite" in name for name in built), built[:3]
    err = ((got - expect).norm() / expect.norm()).item()
    assert torch.isfinite(got).all() and err <= 3e-2, f"relative error {err:.3g}"
    assert (got.argmax(-1) == expect.argmax(-1)).float().mean() >= 0.9


def test_gemlite_rows_name_the_kernel_and_the_config_source(monkeypatch, tmp_path):
    """gemlite_run_info asks GemLite's own dispatcher which kernel a batch gets, and says the shipped H100 configs are
    used only on Hopper (a stand-in gemlite module: the real one needs CUDA)."""
    import sys
    import types

    from harness import torch_ops

    asked = []
    fake = types.ModuleType("gemlite")
    fake.__version__, fake.__file__ = "9.9", str(tmp_path / "gemlite" / "__init__.py")
    core = types.ModuleType("gemlite.core")
    core.get_matmul_type = lambda batch, bits: asked.append((batch, bits)) or f"KERNEL_{batch}_{bits}"
    monkeypatch.setitem(sys.modules, "gemlite", fake)
    monkeypatch.setitem(sys.modules, "gemlite.core", core)
    info = torch_ops.gemlite_run_info(4, 3, torch.device("cpu"))
    assert info == {"gemlite_version": "9.9", "gemlite_kernel": "KERNEL_3_4", "gemlite_configs": "autotuned"}
    assert asked == [(3, 4)]
    (tmp_path / "gemlite" / "configs").mkdir(parents=True)
    (tmp_path / "gemlite" / "configs" / "h100.json").write_text("{}")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert torch_ops.gemlite_config_file(torch.device("cuda")) == str(tmp_path / "gemlite" / "configs" / "h100.json")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert torch_ops.gemlite_config_file(torch.device("cuda")) is None  # not Hopper: GemLite autotunes
