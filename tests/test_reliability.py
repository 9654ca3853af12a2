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


def test_results_dir_on_a_full_disk_is_refused_before_measuring(tmp_path, monkeypatch):
    """A results.dir whose disk is (nearly) full is refused in one sentence before anything is measured."""
    import collections

    import harness.runner as runner

    def never(*a, **kw):
        raise AssertionError("measured or built before checking results.dir")

    usage = collections.namedtuple("usage", "total used free")
    cfg = _compose("model=tiny", *QUICK, f"results.dir={tmp_path / 'results'}")
    monkeypatch.setattr(runner, "measure_copy_bandwidth", never)
    monkeypatch.setattr(runner, "prepare_point", never)
    monkeypatch.setattr(runner.shutil, "disk_usage", lambda p: usage(1 << 40, (1 << 40) - (1 << 20), 1 << 20))
    with pytest.raises(ConfigError, match=r"^results.dir=.* has 1 MB free, less than the 67 MB"):
        runner.run_point(cfg)


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


def test_a_model_too_large_stops_with_its_sentence_and_leaves_rows_saying_so(tmp_path, monkeypatch):
    """check_fits refuses before any weight exists; the point's rows keep the sentence (status unsupported), so a
    figure can show that the model does not fit, and a resumed sweep does not try it again."""
    import harness.runner as runner
    from harness.results import load_results

    from harness.errors import TooLargeForDevice

    why = "model=tiny quant=bf16 batch=1 ctx=25 needs 999.0 GB (...) but cpu has 1.0 GB available; choose a smaller model"

    def too_large(*a, **kw):
        raise TooLargeForDevice(why)

    def never(*a, **kw):
        raise AssertionError("weights built for a point that does not fit")

    monkeypatch.setattr(runner, "check_fits", too_large)
    monkeypatch.setattr(runner, "prepare_point", never)
    monkeypatch.setattr(runner, "measure_copy_bandwidth", never)
    cfg = _compose("model=tiny", *QUICK, "impl.names=[torch-eager,layerwise]", f"results.dir={tmp_path}")
    with pytest.raises(ConfigError, match=r"needs 999.0 GB"):
        runner.run_point(cfg)
    rows = load_results(tmp_path)
    assert sorted(rows["impl"]) == ["layerwise", "torch-eager"]
    assert set(rows["status"]) == {"unsupported"} and set(rows["note"]) == {why}
    assert runner.run_point(cfg) == []  # resumed: the point is done, nothing is measured or refused again


def test_memory_only_busy_now_stops_the_run_without_rows(tmp_path, monkeypatch):
    """Free memory short of the need, the device's whole memory not: the sentence, and no row (the next run may fit)."""
    import harness.runner as runner
    import harness.weights as weights
    from harness.errors import TooLargeForDevice
    from harness.models import named_spec
    from harness.results import load_results
    import torch

    spec, dev = named_spec("tiny"), torch.device("cpu")
    need_free = lambda device, total=False: 1 << 40 if total else 1 << 10  # noqa: E731
    monkeypatch.setattr(weights, "available_bytes", need_free)
    with pytest.raises(ConfigError, match=r"needs .* GB .* has .* available") as e:
        weights.check_fits(spec, "bf16", 32, 1, 9, dev)
    assert not isinstance(e.value, TooLargeForDevice)
    monkeypatch.setattr(weights, "available_bytes", lambda device, total=False: 1 << 10)
    with pytest.raises(TooLargeForDevice):
        weights.check_fits(spec, "bf16", 32, 1, 9, dev)
    monkeypatch.setattr(weights, "available_bytes", need_free)
    monkeypatch.setattr(runner, "check_fits", weights.check_fits)
    cfg = _compose("model=tiny", *QUICK, f"results.dir={tmp_path}")
    with pytest.raises(ConfigError, match=r"needs .* GB"):
        runner.run_point(cfg)
    assert not list(tmp_path.rglob("*.parquet")) or load_results(tmp_path).empty


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

    for quant, refused in (("int4", {"torch-eager", "torch-graph", "torch-compile", "flash-attn", "gemlite"}),
                           ("fp32", {"torch-compile", "flash-attn", "gemlite"})):
        cfg = _compose("model=tiny", f"quant={quant}", "quant.group_size=32", "impl.names=[*]")
        spec = validate(cfg, list(REGISTRY))
        early = unsupported_before_build(cfg, spec, torch.device("cpu"), impl_runs(cfg, spec, torch.device("cpu")))
        assert {run.impl for run in early} == refused & set(REGISTRY), early


@pytest.mark.parametrize("override,key", [("+foo=1", "foo"), ("+bench.bogus=1", "bench.bogus")])
def test_added_unknown_key_is_one_sentence(tmp_path, override, key):
    results = tmp_path / "results"
    r = _run(tmp_path, "model=tiny", *QUICK, override, f"results.dir={results}")
    _assert_one_sentence(r, f"error: {key} is not a configuration key; check its spelling", results)


# ---------------------------------------------------------------------------------------------- resume

def _fake_measure(calls: list, fail: set = frozenset(), sleep_s: float = 0.0):
    """Stands in for runner._measure: records (impl, fusion) and returns a plausible result at once (the
    resume logic is under test, not the kernels); raises for impls in `fail`."""
    def measure(name, cfg, *args, **kw):
        import time

        calls.append((name, cfg.fusion))
        if sleep_s:
            time.sleep(sleep_s)
        if name in fail:
            raise RuntimeError(f"{name} broke")
        return {"latency_us_median": 10.0, "latency_us_p10": 9.0, "latency_us_p90": 11.0, "latency_us_mean": 10.0,
                "latency_us_std": 0.5, "repeats": 3, "timing_method": "fake", "rel_err": 0.0, "max_abs_err": 0.0,
                "top1_agree": 1.0}
    return measure


@pytest.fixture
def fake(monkeypatch):
    """run_point in process with a fake measurement and copy bandwidth; yields the list of measured runs."""
    import harness.runner as runner

    calls: list = []
    monkeypatch.setattr(runner, "_measure", _fake_measure(calls))
    monkeypatch.setattr(runner, "measure_copy_bandwidth", lambda device: 1.0)
    return calls


def _point(results: Path, *overrides: str) -> list[dict]:
    from harness.runner import run_point

    return run_point(_compose("model=tiny", *QUICK, f"results.dir={results}", *overrides))


def _impls(rows) -> list[str]:
    return sorted(r["impl"] for r in rows)


def test_resume_measures_again_exactly_what_changes_the_measurement(tmp_path, fake):
    from harness.results import load_results

    both = "impl.names=[torch-eager,megakernel]"
    assert _impls(_point(tmp_path, both)) == ["megakernel", "torch-eager"]
    assert _point(tmp_path, both) == [] and fake == [("torch-eager", "model"), ("megakernel", "model")]
    for change in ("bench.seed=1", "bench.cache_fill=prefill", "bench.cuda_graphs=false", "quant=fp32"):
        assert _impls(_point(tmp_path, both, change)) == ["megakernel", "torch-eager"], change
        assert _point(tmp_path, both, change) == [], change
    # megakernel options are the megakernel's alone: the baseline is measured again only as the same-run reference
    for change in ("megakernel.tiles.num_warps=2", "megakernel.programs_per_sm=1", "megakernel.schedule=cost-balanced"):
        rows = _point(tmp_path, both, change)
        assert _impls(rows) == ["megakernel", "torch-eager"], change
        base = next(r for r in rows if r["impl"] == "torch-eager")
        assert "measured again as this run's baseline" in base["note"] and rows[1]["speedup"] == 1.0
        assert _point(tmp_path, both, change) == [], change
    assert _point(tmp_path, "megakernel.tiles.num_warps=8") == []  # torch-eager alone: tiles change nothing
    mega = load_results(tmp_path).query("impl == 'megakernel'")
    assert len(mega) == 1 + 4 + 3 and mega["point_key"].is_unique


def test_megakernel_backends_are_measured_in_one_run_with_their_own_keys(tmp_path, fake):
    """megakernel.backends=[triton,gluon]: both backends in the same run as one baseline, each with its own point key
    and mega_backend; a backend that cannot run here is an "unsupported" row with its sentence; resume skips all."""
    both = ("impl.names=[torch-eager,megakernel]", "megakernel.backends=[triton,gluon]")
    rows = _point(tmp_path, *both)
    mega = {r["mega_backend"]: r for r in rows if r["impl"] == "megakernel"}
    assert set(mega) == {"triton", "gluon"} and len(rows) == 3
    assert mega["triton"]["status"] == "ok" and mega["triton"]["speedup"] == 1.0
    assert mega["gluon"]["status"] == "unsupported" and "megakernel.backend=gluon" in mega["gluon"]["note"]
    assert len({r["point_key"] for r in rows}) == 3
    assert json.loads(mega["gluon"]["config_json"])["megakernel"]["backend"] == "gluon"  # its own provenance
    assert json.loads(mega["triton"]["config_json"])["megakernel"]["backend"] == "triton"
    assert fake == [("torch-eager", "model"), ("megakernel", "model")]  # the refused run builds nothing
    from harness.runner import format_table
    table = format_table(rows)
    assert "megakernel[triton]" in table and "megakernel[gluon]" in table and "torch-eager[" not in table
    assert _point(tmp_path, *both) == []
    # the default backend's key is the one a run without the list has: nothing new to measure
    assert _point(tmp_path, "impl.names=[torch-eager,megakernel]") == []


def test_auto_backend_rows_record_the_backend_it_resolved_to(tmp_path, fake, monkeypatch):
    """megakernel.backend=auto (the default): each row records the backend that runs at its point, with that
    backend's point key, config and table label, never "auto". On this CPU that is triton; where the Gluon backend
    runs (here: hopper.problem made to accept the CPU) it is gluon, for bf16 but not for int4."""
    import kernels.mega.hopper as hopper
    from harness.results import load_results
    from harness.runner import format_table

    both = "impl.names=[torch-eager,megakernel]"

    def mega_row(rows):
        (r,) = [r for r in rows if r["impl"] == "megakernel"]
        return r
    r = mega_row(_point(tmp_path / "cpu", both))
    assert r["mega_backend"] == "triton" and "backend" not in json.loads(r["mega_config"])
    assert json.loads(r["config_json"])["megakernel"]["backend"] == "triton"
    assert _point(tmp_path / "cpu", both, "megakernel.backend=triton") == []  # the same point as triton by name

    real_problem = hopper.problem  # its rules but the device's: as if this CPU were a Hopper GPU
    monkeypatch.setattr(hopper, "problem", lambda spec, quant, batch, device=None: real_problem(spec, quant, batch))
    both = (both, "model.dim=256", "model.head_dim=64", "model.ffn_dim=512")  # shapes the Gluon backend takes
    rows = _point(tmp_path / "hopper", *both, "quant=bf16")
    r = mega_row(rows)
    assert r["mega_backend"] == "gluon" and r["status"] == "ok"
    assert json.loads(r["mega_config"])["backend"] == "gluon"
    assert json.loads(r["config_json"])["megakernel"]["backend"] == "gluon"
    assert "megakernel[gluon]" in format_table(rows) and "auto" not in format_table(rows)
    assert _point(tmp_path / "hopper", *both, "quant=bf16", "megakernel.backend=gluon") == []
    assert _point(tmp_path / "hopper", *both, "quant=bf16", "megakernel.backend=triton") != []  # another point
    r = mega_row(_point(tmp_path / "hopper", *both, "quant=int4", "quant.group_size=32"))  # no int4 Gluon kernel
    assert r["mega_backend"] == "triton"
    # the same-run comparison names its backends and measures each, auto or not
    rows = _point(tmp_path / "both", *both, "megakernel.backends=[triton,gluon]")
    assert sorted(r["mega_backend"] for r in rows if r["impl"] == "megakernel") == ["gluon", "triton"]
    for where in ("cpu", "hopper", "both"):  # what the store holds for the megakernel: never "auto"
        stored = load_results(tmp_path / where).query("impl == 'megakernel'")
        assert set(stored["mega_backend"]) <= {"triton", "gluon"}, where
        assert {json.loads(c)["megakernel"]["backend"] for c in stored["config_json"]} <= {"triton", "gluon"}, where


def test_a_bad_backends_entry_is_one_sentence(tmp_path):
    from harness.config import validate
    from harness.errors import ConfigError

    cfg = _compose("model=tiny", *QUICK, "megakernel.backends=[triton,cuda]")
    with pytest.raises(ConfigError, match="megakernel.backends entry"):
        validate(cfg, [])


def test_a_failed_impl_is_measured_again_on_resume(tmp_path, monkeypatch, fake):
    import harness.runner as runner
    from harness.results import load_results

    broken = []
    monkeypatch.setattr(runner, "_measure", _fake_measure(broken, fail={"layerwise"}))
    pair = "impl.names=[torch-eager,layerwise]"
    rows = _point(tmp_path, pair)
    assert [(r["impl"], r["status"]) for r in rows] == [("torch-eager", "ok"), ("layerwise", "failed")]
    assert rows[1]["note"] == "RuntimeError: layerwise broke"
    monkeypatch.setattr(runner, "_measure", _fake_measure(fake))
    assert [(r["impl"], r["status"]) for r in _point(tmp_path, pair)] == [("torch-eager", "ok"), ("layerwise", "ok")]
    assert _point(tmp_path, pair) == []
    df = load_results(tmp_path)
    assert sorted(df[df["impl"] == "layerwise"]["status"]) == ["failed", "ok"]


def test_a_point_that_fails_before_measuring_stores_failed_rows_and_is_retried(tmp_path, monkeypatch, fake):
    import harness.runner as runner
    from harness.results import load_results

    real = runner.prepare_point

    def broken(*a, **kw):
        raise RuntimeError("no memory for the KV cache")

    monkeypatch.setattr(runner, "prepare_point", broken)
    with pytest.raises(RuntimeError, match="no memory"):
        _point(tmp_path, "impl.names=[torch-eager,layerwise]")
    df = load_results(tmp_path)
    assert sorted(df["impl"]) == ["layerwise", "torch-eager"] and (df["status"] == "failed").all()
    assert df["note"].str.startswith("point failed before any impl ran: RuntimeError: no memory").all()
    assert not list((tmp_path / "cpu" / ".claims").glob("*.claim"))  # released on the way out
    monkeypatch.setattr(runner, "prepare_point", real)
    assert _impls(_point(tmp_path, "impl.names=[torch-eager,layerwise]")) == ["layerwise", "torch-eager"]


def test_overlapping_impl_lists_measure_each_impl_once(tmp_path, fake):
    """A second impl list measures only its new impls (and the baseline again, as their same-run reference);
    a list whose impls are all done measures nothing."""
    from harness.results import load_results

    _point(tmp_path, "impl.names=[torch-eager,layerwise]")
    assert _impls(_point(tmp_path, "impl.names=[layerwise,megakernel]")) == ["megakernel", "torch-eager"]
    assert _point(tmp_path, "impl.names=[torch-eager,megakernel,layerwise]") == []
    assert _point(tmp_path, "impl.names=[torch-eager]") == []
    df = load_results(tmp_path)
    counts = df.groupby("impl").size().to_dict()
    assert counts == {"layerwise": 1, "megakernel": 1, "torch-eager": 2}, counts  # one baseline per measuring run
    assert df["run_id"].nunique() == 2
    assert [c[0] for c in fake] == ["torch-eager", "layerwise", "torch-eager", "megakernel"]


def test_checkpoints_in_directories_of_one_name_are_different_points(tmp_path, fake):
    """Two checkpoints in directories both named `ck` (same config, other weights): both measured; the same
    checkpoint copied elsewhere is the same point."""
    from harness.results import load_results
    from tests.hf_tiny import write_tiny_checkpoint

    a, b = tmp_path / "a" / "ck", tmp_path / "b" / "ck"
    write_tiny_checkpoint(a, seed=0)
    write_tiny_checkpoint(b, seed=1)
    results = tmp_path / "results"
    assert len(_point(results, "model=hf", f"model.path={a}")) == 1
    assert len(_point(results, "model=hf", f"model.path={b}")) == 1
    shutil.copytree(a, tmp_path / "c" / "ck")
    assert _point(results, "model=hf", f"model.path={tmp_path / 'c' / 'ck'}") == []
    df = load_results(results)
    assert list(df["model"]) == ["ck", "ck"] and df["model_id"].nunique() == 2 and df["point_key"].nunique() == 2


def _concurrent_point(results: str, role: str, to_test, from_test) -> None:
    """One of two processes measuring the same point into one results directory. The first holds its measurement
    until the second has run all of run_point, so that the second meets the claims every time."""
    import harness.runner as runner

    def measure(name, *a, **kw):
        if role == "first" and name == "torch-eager":
            to_test.put("measuring")
            from_test.get(timeout=240)
        return _fake_measure([])(name, *a, **kw)

    runner._measure = measure
    runner.measure_copy_bandwidth = lambda device: 1.0
    rows = runner.run_point(_compose("model=tiny", *QUICK, "impl.names=[torch-eager,layerwise]",
                                     f"results.dir={results}"))
    to_test.put((role, len(rows), getattr(rows, "why", "")))


def test_two_processes_on_one_point_measure_it_once(tmp_path):
    import multiprocessing as mp

    from harness.results import load_results

    ctx = mp.get_context("spawn")
    to_test, from_test = ctx.Queue(), ctx.Queue()
    first = ctx.Process(target=_concurrent_point, args=(str(tmp_path), "first", to_test, from_test))
    second = ctx.Process(target=_concurrent_point, args=(str(tmp_path), "second", to_test, from_test))
    first.start()
    try:
        assert to_test.get(timeout=240) == "measuring"
        second.start()
        role, n, why = to_test.get(timeout=240)
        assert (role, n) == ("second", 0)
        assert why.startswith(f"every impl not yet in {tmp_path} under results.tag=default is being measured by "
                              f"pid {first.pid} on "), why
        from_test.put("go on")
        assert to_test.get(timeout=240)[:2] == ("first", 2)
    finally:
        for p in (first, second):
            p.join(60)
            if p.is_alive():
                p.kill()
    assert first.exitcode == 0 and second.exitcode == 0
    assert sorted(load_results(tmp_path)["impl"]) == ["layerwise", "torch-eager"]
    assert not list((tmp_path / "cpu" / ".claims").glob("*.claim"))


def _killed_point(results: str, q) -> None:
    import harness.runner as runner

    def hang(name, *a, **kw):
        q.put("measuring")
        import time
        # a measurement runs Python code between short waits: a signal the kernel hands to another thread (the
        # queue's feeder, torch's pool) is seen by the main thread at its next bytecode, not after one long sleep
        for _ in range(1200):
            time.sleep(0.1)

    runner._measure = hang
    runner.measure_copy_bandwidth = lambda device: 1.0
    runner.run_point(_compose("model=tiny", *QUICK, "impl.names=[torch-eager,layerwise]", f"results.dir={results}"))


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGINT"])
def test_killed_while_measuring_then_resumed_loses_and_duplicates_nothing(tmp_path, fake, sig):
    """SIGKILL leaves its claims behind (their pid is dead: taken over); SIGINT releases them on the way out."""
    import multiprocessing as mp
    import signal

    from harness.results import load_results

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_killed_point, args=(str(tmp_path), q))
    p.start()
    try:
        assert q.get(timeout=240) == "measuring"
        os.kill(p.pid, getattr(signal, sig))
        p.join(60)
    finally:
        if p.is_alive():
            p.kill()
            p.join(30)
    left = list((tmp_path / "cpu" / ".claims").glob("*.claim"))
    assert len(left) == (2 if sig == "SIGKILL" else 0)
    assert not list(tmp_path.rglob("*.parquet"))
    assert _impls(_point(tmp_path, "impl.names=[torch-eager,layerwise]")) == ["layerwise", "torch-eager"]
    assert _point(tmp_path, "impl.names=[torch-eager,layerwise]") == []
    assert len(load_results(tmp_path)) == 2


# ---------------------------------------------------------------- odd Hugging Face shapes, through every CPU impl

ODD_SHAPES = {
    # head_dim 32 with q_dim (4 x 32 = 128) != hidden 96, one kv head, intermediate 100, tied, llama3 RoPE
    "hd32-q128-h96-kv1-ffn100-tied": dict(hidden_size=96, num_attention_heads=4, head_dim=32, num_key_value_heads=1,
                                          intermediate_size=100, tie=True, llama3_scaling=True),
    # four kv heads (no sharing), untied, plain RoPE, 3 layers, an odd vocabulary
    "hd16-kv4-untied-plain": dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=4,
                                  intermediate_size=96, num_hidden_layers=3, vocab_size=131, tie=False,
                                  llama3_scaling=False),
}


@pytest.mark.parametrize("shape", list(ODD_SHAPES), ids=list(ODD_SHAPES))
def test_odd_hf_checkpoint_matches_transformers_through_every_cpu_impl(tmp_path, shape):
    """save_pretrained of a random odd Llama -> our loader -> every impl that runs on this CPU (decided by its own
    `unsupported`, so none is skipped by hand): one decode step after a prompt, logits equal to transformers' in
    fp32 (the impls agreed to ~3e-7 relative when this battery was first run by hand)."""
    import torch
    from omegaconf import OmegaConf

    from harness.config import RunConfig
    from harness.impls import REGISTRY, ImplContext
    from harness.models import hf_spec
    from harness.reference import LlamaDecoder
    from harness.weights import load_hf_weights
    from kernels.model import KVCache
    from tests.hf_tiny import write_tiny_checkpoint

    kw = dict(ODD_SHAPES[shape])
    hf = write_tiny_checkpoint(tmp_path, tie=kw.pop("tie"), llama3_scaling=kw.pop("llama3_scaling"), seed=5, **kw)
    spec = hf_spec(tmp_path)
    weights = load_hf_weights(tmp_path, spec, "fp32", 32, "cpu")
    batch, prompt = 2, 9
    tokens = torch.randint(0, spec.vocab_size, (batch, prompt), generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        out = hf(tokens, use_cache=True)
        nxt = out.logits[:, -1].argmax(-1)
        expect = hf(nxt[:, None], past_key_values=out.past_key_values, use_cache=True).logits[:, 0].float()
    filled = KVCache.empty(spec, batch, prompt + 1, torch.float32, "cpu")
    LlamaDecoder(weights, max_len=prompt + 1).prefill(tokens, filled)
    cfg = OmegaConf.structured(RunConfig)
    ran = []
    for name, impl_cls in sorted(REGISTRY.items()):
        cache = KVCache(filled.k.clone(), filled.v.clone())
        ctx = ImplContext(cfg=cfg, spec=spec, weights=weights, cache=cache, device=torch.device("cpu"))
        if impl_cls.unsupported(ctx):
            continue
        impl = impl_cls(ctx)
        got = impl.decode(nxt, torch.full((batch,), prompt)).float()
        impl.check()
        impl.close()
        err = float((got - expect).norm() / expect.norm())
        assert err <= 2e-5, f"{name} on {shape}: relative error {err:.2e} against transformers"
        ran.append(name)
    # the CPU impls: the eager reference ops, our per-op kernels and the megakernel under the Triton interpreter
    assert {"torch-eager", "layerwise", "megakernel"} <= set(ran), ran
