"""Every bad checkpoint, path or key ends in one sentence before any expensive work: run.py exits non-zero with
one `error:` line on stderr naming the problem, no traceback, and no result file written. The checkpoint cases
are copies of a tiny valid Hugging Face checkpoint (tests/hf_tiny.py), each corrupted in one way."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.config import register_configs
from harness.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
register_configs()

# A run that gets as far as measuring stays cheap: the tiny model, few repeats, one impl, a short context
# (the tiny checkpoint's max_position_embeddings is 256, below bench's default ctx).
QUICK = ["bench=quick", "bench.ctx=8", "impl.names=[torch-eager]"]


def _compose(*overrides: str):
    """The run configuration as run.py composes it, for the in-process cases."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run.py", *args, f"hydra.run.dir={tmp_path / 'hydra'}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def _assert_one_sentence(r: subprocess.CompletedProcess, expect: str, results: Path) -> None:
    """Non-zero exit, exactly one `error:` line and it names the problem, no traceback, no rows stored."""
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode != 0, r.stdout[-2000:]
    assert len(errors) == 1, r.stderr[-3000:]
    assert expect in errors[0], errors[0]
    assert "Traceback" not in r.stderr + r.stdout
    assert not (results.is_dir() and list(results.rglob("*.parquet")))


@pytest.fixture(scope="module")
def good_ckpt(tmp_path_factory) -> Path:
    from tests.hf_tiny import write_tiny_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "good"
    write_tiny_checkpoint(path)  # 2 layers, hidden 64, ffn 160, vocab 120, 4 heads / 2 KV heads, llama3 RoPE, untied
    return path


# ---------------------------------------------------------------------------------------------- corruptions

def _edit_config(d: Path, edit) -> None:
    c = json.loads((d / "config.json").read_text())
    edit(c)
    (d / "config.json").write_text(json.dumps(c))


def _edit_tensors(d: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    f = d / "model.safetensors"
    tensors = load_file(str(f))
    edit(tensors)
    save_file(tensors, str(f), metadata={"format": "pt"})


def _truncate(d: Path) -> None:
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _garbage(d: Path) -> None:
    (d / "model.safetensors").write_bytes(os.urandom(4096))


def _invalid_json(d: Path) -> None:
    (d / "config.json").write_text('{"model_type": "llama", "hidden_size": 64,')


def _old_style_rope_without_low_freq(c: dict) -> None:
    """transformers < 5 wrote `rope_scaling` (and rope_theta at the top level)."""
    rp = c.pop("rope_parameters")
    c["rope_theta"] = rp.pop("rope_theta")
    del rp["low_freq_factor"]
    c["rope_scaling"] = rp


def _resize(name: str, *shape: int):
    import torch

    def edit(t: dict) -> None:
        t[name] = torch.zeros(*shape)
    return edit


def _vocab_301_embed_300(d: Path) -> None:
    import torch

    _edit_config(d, lambda c: c.update(vocab_size=301))
    _edit_tensors(d, lambda t: t.update({"lm_head.weight": torch.zeros(301, 64),
                                         "model.embed_tokens.weight": torch.zeros(300, 64)}))


CKPT = "model.safetensors"
CASES = {
    "truncated-safetensors": (_truncate, f"{CKPT} is not a readable safetensors file (incomplete metadata"),
    "garbage-safetensors": (_garbage, f"{CKPT} is not a readable safetensors file"),
    "invalid-config-json": (_invalid_json, "config.json is not valid JSON"),
    "no-hidden-size": (lambda d: _edit_config(d, lambda c: c.pop("hidden_size")), "config.json lacks 'hidden_size'"),
    "llama3-rope-no-low-freq": (lambda d: _edit_config(d, lambda c: c["rope_parameters"].pop("low_freq_factor")),
                                "rope_parameters (llama3) lacks 'low_freq_factor'"),
    "llama3-rope-scaling-no-low-freq": (lambda d: _edit_config(d, _old_style_rope_without_low_freq),
                                        "rope_scaling (llama3) lacks 'low_freq_factor'"),
    "gate-proj-shape": (lambda d: _edit_tensors(d, _resize("model.layers.1.mlp.gate_proj.weight", 96, 64)),
                        f"{CKPT} holds model.layers.1.mlp.gate_proj.weight of shape [96, 64], but"),
    "final-norm-length": (lambda d: _edit_tensors(d, _resize("model.norm.weight", 63)),
                          f"{CKPT} holds model.norm.weight of shape [63], but"),
    "extra-layer-2": (lambda d: _edit_tensors(d, _resize("model.layers.2.input_layernorm.weight", 64)),
                      f"{CKPT} holds model.layers.2.input_layernorm.weight of layer 2, but"),
    "config-1-layer-of-2": (lambda d: _edit_config(d, lambda c: c.update(num_hidden_layers=1)),
                            "of layer 1, but"),
    "embed-300-rows-vocab-301": (_vocab_301_embed_300,
                                 f"{CKPT} holds model.embed_tokens.weight of shape [300, 64], but"),
    "missing-lm-head": (lambda d: _edit_tensors(d, lambda t: t.pop("lm_head.weight")), "lacks tensor lm_head.weight"),
    "bias-tensor": (lambda d: _edit_tensors(d, _resize("model.layers.0.self_attn.q_proj.bias", 64)),
                    "holds bias tensor model.layers.0.self_attn.q_proj.bias"),
}
# What else the sentence must say: the expected shape, and which config.json key disagrees
DETAILS = {
    "gate-proj-shape": "implies [160, 64] [intermediate_size, hidden_size]",
    "final-norm-length": "implies [64] [hidden_size]",
    "extra-layer-2": "num_hidden_layers=2",
    "config-1-layer-of-2": "num_hidden_layers=1",
    "embed-300-rows-vocab-301": "implies [301, 64] [vocab_size, hidden_size]",
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_checkpoint_is_one_sentence(tmp_path, good_ckpt, case):
    corrupt, expect = CASES[case]
    ckpt = tmp_path / "ckpt"
    shutil.copytree(good_ckpt, ckpt)
    corrupt(ckpt)
    results = tmp_path / "results"
    r = _run(tmp_path, "model=hf", f"model.path={ckpt}", *QUICK, f"results.dir={results}")
    _assert_one_sentence(r, expect, results)
    assert DETAILS.get(case, "") in r.stderr


def test_good_checkpoint_runs(tmp_path, good_ckpt):
    """The control: the uncorrupted checkpoint passes every check and is measured."""
    from harness.results import load_results

    results = tmp_path / "results"
    r = _run(tmp_path, "model=hf", f"model.path={good_ckpt}", *QUICK, f"results.dir={results}")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = load_results(results)
    assert list(rows["impl"]) == ["torch-eager"] and (rows["status"] == "ok").all() and rows["correct"].all()


def test_tied_checkpoint_passes_and_validator_reads_headers_only(tmp_path, monkeypatch):
    """A tied checkpoint (no lm_head.weight) is complete; the check never loads tensor data."""
    import safetensors

    from harness.models import hf_spec
    from harness.weights import check_hf_checkpoint
    from tests.hf_tiny import write_tiny_checkpoint

    write_tiny_checkpoint(tmp_path, tie=True, llama3_scaling=False)
    spec = hf_spec(tmp_path)
    real_open = safetensors.safe_open

    class HeadersOnly:
        def __init__(self, *a, **kw):
            self.f = real_open(*a, **kw)

        def __enter__(self):
            self.f.__enter__()
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

        def keys(self):
            return self.f.keys()

        def get_slice(self, name):
            return self.f.get_slice(name)

        def get_tensor(self, name):
            raise AssertionError(f"the checkpoint check loaded {name}")

    monkeypatch.setattr(safetensors, "safe_open", HeadersOnly)
    assert [f.name for f in check_hf_checkpoint(tmp_path, spec)] == ["model.safetensors"]


# ---------------------------------------------------------------------------------------------- results.dir

def test_results_dir_that_is_a_file(tmp_path):
    f = tmp_path / "results.parquet"
    f.write_text("not a directory")
    r = _run(tmp_path, "model=tiny", *QUICK, f"results.dir={f}")
    _assert_one_sentence(r, f"results.dir={f} is a file, not a directory", tmp_path / "nothing")
    assert f.read_text() == "not a directory"
    assert "impl torch-eager" not in r.stdout  # refused before any impl was measured


def test_results_dir_read_only(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("this user (root?) can write to a 0o500 directory")
        r = _run(tmp_path, "model=tiny", *QUICK, f"results.dir={ro}")
        _assert_one_sentence(r, f"results.dir={ro} is not writable", ro)
        assert "impl torch-eager" not in r.stdout
    finally:
        ro.chmod(0o700)


def test_results_dir_checked_before_measuring(tmp_path, monkeypatch):
    """In process, whatever the user: an unwritable results.dir is refused before the copy-bandwidth measurement
    and before any weight is built (as root, chmod cannot make a directory unwritable, so the probe write is made
    to fail instead)."""
    import harness.runner as runner

    def never(*a, **kw):
        raise AssertionError("measured or built before checking results.dir")

    def refuse(*a, **kw):
        raise PermissionError(13, "Permission denied")

    cfg = _compose("model=tiny", *QUICK, f"results.dir={tmp_path / 'new' / 'results'}")
    monkeypatch.setattr(runner, "measure_copy_bandwidth", never)
    monkeypatch.setattr(runner, "prepare_point", never)
    monkeypatch.setattr(runner.tempfile, "mkstemp", refuse)  # restored by monkeypatch when the test ends
    with pytest.raises(ConfigError, match=r"^results.dir=.* is not writable \(Permission denied\)"):
        runner.run_point(cfg)
    assert (tmp_path / "new" / "results").is_dir()  # a missing results.dir is created, not refused


# ---------------------------------------------------------------------------------------------- impls, keys

def test_unsupported_everywhere_is_refused_before_building_weights(tmp_path, monkeypatch):
    """int4 torch-eager needs tinygemm on CUDA: on a CPU, llama8b's 8B weights are never built to learn that."""
    import torch

    import harness.runner as runner

    if torch.cuda.is_available():
        pytest.skip("int4 torch-eager runs on CUDA")

    def never(*a, **kw):
        raise AssertionError("weights built or memory checked for a point no impl can run")

    monkeypatch.setattr(runner, "prepare_point", never)
    monkeypatch.setattr(runner, "check_fits", never)
    monkeypatch.setattr(runner, "measure_copy_bandwidth", never)
    cfg = _compose("model=llama8b", "quant=int4", "impl.names=[torch-eager]", f"results.dir={tmp_path}")
    rows = runner.run_point(cfg)  # an "unsupported" row says why; a sweep goes on to its next point
    assert [(r["impl"], r["status"]) for r in rows] == [("torch-eager", "unsupported")]
    assert rows[0]["note"] == "int4 through torch needs tinygemm on CUDA"


def test_unsupported_impl_cli(tmp_path):
    """Through run.py: exit 0, the reason printed, one row stored, in seconds (no 8B weights built)."""
    results = tmp_path / "results"
    r = _run(tmp_path, "model=llama8b", "quant=int4", "impl.names=[torch-eager]", "bench.device=cpu",
             f"results.dir={results}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "impl torch-eager: unsupported: int4 through torch needs tinygemm on CUDA" in r.stdout
    assert len(list(results.rglob("*.parquet"))) == 1


def test_precheck_marks_only_what_config_decides():
    """The stand-in context answers the impls' own rules: on a CPU, CUDA-only impls and int4 through torch are
    refused before any weight exists; the megakernel and layerwise (Triton, interpreted) are not."""
    import torch

    from harness.config import validate
    from harness.impls import REGISTRY
    from harness.runner import impl_runs, unsupported_before_build

    for quant, refused in (("int4", {"torch-eager", "torch-graph", "torch-compile", "flash-attn"}),
                           ("fp32", {"torch-compile", "flash-attn"})):
        cfg = _compose("model=tiny", f"quant={quant}", "quant.group_size=32", "impl.names=[*]")
        spec = validate(cfg, list(REGISTRY))
        early = unsupported_before_build(cfg, spec, torch.device("cpu"), impl_runs(cfg))
        assert {name for name, _ in early} == refused & set(REGISTRY), early


@pytest.mark.parametrize("override,key", [("+foo=1", "foo"), ("+bench.bogus=1", "bench.bogus")])
def test_added_unknown_key_is_one_sentence(tmp_path, override, key):
    results = tmp_path / "results"
    r = _run(tmp_path, "model=tiny", *QUICK, override, f"results.dir={results}")
    _assert_one_sentence(r, f"error: {key} is not a configuration key; check its spelling", results)
