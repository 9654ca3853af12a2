"""Scale-out on the CPU: GPU pinning logic (harness.launch), the launcher configs, and rows of
parallel jobs merged without loss or duplication. The plugin tests run only where
hydra-joblib-launcher is installed."""
import importlib.util
import json
import multiprocessing as mp
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from harness import launch
from harness.errors import ConfigError
from harness.results import ResultsStore, load_results
from tests.synthetic_results import GPU, run_rows

ROOT = Path(__file__).resolve().parent.parent
LAUNCHERS = ROOT / "conf" / "hydra" / "launcher"
try:  # find_spec of a dotted name raises when the parent package (hydra_plugins) is not installed at all
    HAS_JOBLIB = importlib.util.find_spec("hydra_plugins.hydra_joblib_launcher") is not None
except ModuleNotFoundError:
    HAS_JOBLIB = False
JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"


@pytest.fixture(autouse=True)
def _no_slot_held():
    launch.release_slot()
    yield
    launch.release_slot()


# ---------------------------------------------------------------------------------------------- pure logic

@pytest.mark.parametrize("env,nvml,expect", [
    ({"CUDA_VISIBLE_DEVICES": "0,1,2,3"}, 8, ["0", "1", "2", "3"]),
    ({"CUDA_VISIBLE_DEVICES": "2, 5"}, 8, ["2", "5"]),
    ({"CUDA_VISIBLE_DEVICES": "GPU-aa,GPU-bb"}, 8, ["GPU-aa", "GPU-bb"]),
    ({"CUDA_VISIBLE_DEVICES": ""}, 8, []),
    ({"CUDA_VISIBLE_DEVICES": "1,-1,2"}, 8, ["1"]),  # CUDA ignores everything from an invalid entry on
    ({}, 4, ["0", "1", "2", "3"]),
    ({}, 0, []),
], ids=["list", "spaces", "uuids", "empty", "invalid-stops", "nvml", "no-gpu"])
def test_visible_devices(env, nvml, expect):
    assert launch.visible_devices(env, nvml_count=nvml) == expect


@pytest.mark.parametrize("value,expect", [(None, "auto"), ("auto", "auto"), (True, "on"), ("true", "on"),
                                          (False, "off"), ("off", "off")])
def test_pin_mode(value, expect):
    assert launch.pin_mode(value) == expect


def test_pin_mode_rejects_nonsense():
    with pytest.raises(ConfigError, match="launch.pin_gpu=sometimes is not allowed"):
        launch.pin_mode("sometimes")


@pytest.mark.parametrize("mode,target,multirun,n,expect", [
    ("auto", JOBLIB, True, 4, True),  # the case it exists for
    ("auto", JOBLIB, True, 1, False),  # one GPU (or SLURM gave the job one): nothing to choose
    ("auto", "hydra._internal.core_plugins.basic_launcher.BasicLauncher", True, 4, False),  # sequential
    ("auto", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher", True, 4, False),
    ("auto", None, False, 4, False),  # a single run
    ("on", None, False, 4, True),
    ("off", JOBLIB, True, 4, False),
])
def test_should_pin(mode, target, multirun, n, expect):
    assert launch.should_pin(mode, target, multirun, n) is expect


def test_claim_slot_is_sticky_and_starts_at_first(tmp_path):
    devs = ["0", "1", "2"]
    assert launch.claim_slot(devs, first=2, lock_dir=tmp_path) == 2
    assert launch.claim_slot(devs, first=0, lock_dir=tmp_path) == 2  # same process: same GPU for every job
    assert (tmp_path / "gpu-2.lock").read_text().strip() == str(os.getpid())


def _claim(devs, first, lock_dir, q, hold):
    from harness import launch as l
    try:
        q.put(l.claim_slot(devs, first=first, lock_dir=lock_dir))
    except Exception as e:  # noqa: BLE001 - reported to the test
        q.put(f"{type(e).__name__}: {e}")
    hold.wait(30)


def test_claim_slot_gives_each_process_its_own_gpu_and_refuses_extra(tmp_path):
    ctx = mp.get_context("spawn")
    q, hold = ctx.Queue(), ctx.Event()
    devs = ["0", "1"]
    procs = [ctx.Process(target=_claim, args=(devs, 0, str(tmp_path), q, hold)) for _ in range(3)]
    for p in procs:
        p.start()
    got = [q.get(timeout=60) for _ in procs]
    hold.set()
    for p in procs:
        p.join(30)
    slots = sorted(g for g in got if isinstance(g, int))
    errors = [g for g in got if isinstance(g, str)]
    assert slots == [0, 1]  # both GPUs, each once, although every process asked for slot 0 first
    assert len(errors) == 1 and errors[0].startswith("ConfigError: every visible GPU (0, 1) is held by another job")
    assert "hydra.launcher.n_jobs=2" in errors[0]
    # the holders exited: their GPUs are free again
    assert launch.claim_slot(devs, first=1, lock_dir=tmp_path) == 1


def test_pin_gpu_outside_hydra_only_when_forced(tmp_path):
    env = {"CUDA_VISIBLE_DEVICES": "4,5"}
    assert launch.pin_gpu(None, env=env, lock_dir=tmp_path) is None  # auto, not a multirun: untouched
    assert env == {"CUDA_VISIBLE_DEVICES": "4,5"}
    cfg = OmegaConf.create({"launch": {"pin_gpu": True}})
    p = launch.pin_gpu(cfg, env=env, lock_dir=tmp_path)
    assert p.device == "4" and p.slot == 0 and p.n_visible == 2
    assert env["CUDA_VISIBLE_DEVICES"] == "4"
    again = launch.pin_gpu(cfg, env=env, lock_dir=tmp_path)  # the next job in the same worker
    assert again.device == "4" and env["CUDA_VISIBLE_DEVICES"] == "4"
    off = {"CUDA_VISIBLE_DEVICES": "4,5"}
    assert launch.pin_gpu(OmegaConf.create({"launch": {"pin_gpu": False}}), env=off, lock_dir=tmp_path) is None


def test_visible_gpus_resolver(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    assert OmegaConf.create({"n": "${visible_gpus:}"}).n == 3
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert OmegaConf.create({"n": "${visible_gpus:}"}).n == 1  # a job count: at least one


# ---------------------------------------------------------------------------------------------- configs

def test_launcher_configs_are_well_formed():
    joblib = OmegaConf.to_container(OmegaConf.load(LAUNCHERS / "joblib_gpus.yaml"), resolve=False)
    assert joblib["defaults"][0] == "joblib" and joblib["n_jobs"] == "${visible_gpus:}"
    slurm = OmegaConf.load(LAUNCHERS / "slurm_gpus.yaml")
    assert slurm.defaults[0] == "submitit_slurm"
    assert slurm.gpus_per_node == 1 and slurm.tasks_per_node == 1 and slurm.nodes == 1


def test_normal_runs_need_no_launcher_plugin():
    from hydra import compose, initialize_config_dir
    from harness.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["model=tiny"], return_hydra_config=True)
    assert "BasicLauncher" in cfg.hydra.launcher._target_


@pytest.mark.skipif(not HAS_JOBLIB, reason="hydra-joblib-launcher not installed")
def test_joblib_launcher_config_composes(monkeypatch):
    from hydra import compose, initialize_config_dir
    from harness.config import register_configs

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hydra/launcher=joblib_gpus"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_ == JOBLIB
    assert cfg.hydra.launcher.n_jobs == 4 and int(cfg.hydra.launcher.batch_size) == 1


# ---------------------------------------------------------------------------------------------- merging

def _job(root, job, n_points):
    from harness.results import ResultsStore as S
    from tests.synthetic_results import run_rows as rr
    for k in range(n_points):  # one run_point call per point, as a sweep job does
        S(root).append(rr(ctx=128 * (k + 1), seed=100 * job + k, when=f"2026-11-22T06:{job:02d}:{k:02d}+00:00",
                          hostname=f"job{job}"))


def test_parallel_jobs_merge_without_loss_or_duplication(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_job, args=(str(tmp_path), j, 3)) for j in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    store = ResultsStore(tmp_path)
    per_run = len(run_rows())
    before = store.load(with_source=True)
    assert len(store.files()) == 12 and len(before) == 12 * per_run and before["row_id"].is_unique
    assert before["run_id"].nunique() == 12  # the runs stay apart, each with every impl
    assert (before.groupby("run_id")["source_file"].nunique() == 1).all()
    merged = store.compact(GPU)
    after = store.load(with_source=True)
    assert store.files() == [merged] and len(after) == len(before)
    assert set(after["row_id"]) == set(before["row_id"])
    # run_id survives compaction (derived from the rows, not from their file): same-run ratios unchanged
    assert dict(zip(after["row_id"], after["run_id"])) == dict(zip(before["row_id"], before["run_id"]))
    assert set(after["source_file"]) == {merged.relative_to(tmp_path).as_posix()}


def test_baselines_and_figures_folders_are_not_results(tmp_path):
    store = ResultsStore(tmp_path)
    store.append(run_rows())
    (tmp_path / "figures").mkdir()
    (tmp_path / "baselines").mkdir()
    load_results(tmp_path).to_parquet(tmp_path / "baselines" / "nvidia-h100-80gb-hbm3.parquet")
    assert len(load_results(tmp_path)) == len(run_rows())
    assert [p.parent.name for p in store.files()] == ["nvidia-h100-80gb-hbm3"]


def test_explicit_run_id_is_kept(tmp_path):
    rows = run_rows()
    for r in rows:
        r["run_id"] = "r1"
    ResultsStore(tmp_path).append(rows)
    ResultsStore(tmp_path).append(run_rows(when="2026-11-23T00:00:00+00:00"))
    df = load_results(tmp_path)
    assert (df["run_id"] == "r1").sum() == len(rows) and df["run_id"].nunique() == 2


# ---------------------------------------------------------------------------------------------- real multirun

PIN_APP = """
import json, os, sys, time
sys.path.insert(0, {root!r})
import hydra
from harness.config import register_configs
from harness import launch
from harness.errors import ConfigError
register_configs()

@hydra.main(version_base="1.3", config_path={conf!r}, config_name="config")
def main(cfg):
    from hydra.core.hydra_config import HydraConfig
    p = launch.pin_gpu(cfg)
    num = HydraConfig.get().job.num
    time.sleep(0.5)  # keep the worker busy so that the other one takes the next job
    with open(os.path.join({out!r}, f"job{{num}}.json"), "w") as fh:
        json.dump({{"job": num, "pid": os.getpid(), "cvd": os.environ.get("CUDA_VISIBLE_DEVICES"),
                   "slot": p.slot if p else None}}, fh)

if __name__ == "__main__":
    main()
"""


def _env(**kw):
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES",)}
    env.update(kw)
    return env


@pytest.mark.skipif(not HAS_JOBLIB, reason="hydra-joblib-launcher not installed")
def test_joblib_multirun_pins_each_worker_to_its_own_gpu(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    app = tmp_path / "pin_app.py"
    app.write_text(PIN_APP.format(root=str(ROOT), conf=str(ROOT / "conf"), out=str(out)))
    r = subprocess.run([sys.executable, str(app), "-m", "hydra/launcher=joblib_gpus", "model=tiny",
                        "bench.seed=0,1,2,3", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env=_env(CUDA_VISIBLE_DEVICES="0,1", HARNESS_GPU_LOCK_DIR=str(tmp_path / "locks")))
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = [json.loads(p.read_text()) for p in sorted(out.glob("job*.json"))]
    assert sorted(j["job"] for j in jobs) == [0, 1, 2, 3]
    by_pid = {}
    for j in jobs:
        by_pid.setdefault(j["pid"], set()).add(j["cvd"])
    assert all(len(v) == 1 for v in by_pid.values())  # a worker keeps its GPU for every job it runs
    assert len(by_pid) == 2 and set().union(*by_pid.values()) == {"0", "1"}  # n_jobs = 2 GPUs, one each


@pytest.mark.skipif(not HAS_JOBLIB, reason="hydra-joblib-launcher not installed")
def test_joblib_multirun_of_run_py_merges_rows(tmp_path):
    results = tmp_path / "results"
    r = subprocess.run([sys.executable, "run.py", "-m", "hydra/launcher=joblib_gpus", "hydra.launcher.n_jobs=2",
                        "model=tiny", "bench=quick", "bench.ctx=16,32", "impl=torch-eager", f"results.dir={results}",
                        f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=180, env=_env())
    assert r.returncode == 0, r.stderr[-3000:]
    store = ResultsStore(results)
    assert len(store.files()) == 2  # one file per job
    df = store.load()
    assert sorted(df["ctx"]) == [16, 32] and df["row_id"].is_unique and df["run_id"].nunique() == 2
    store.compact("cpu")
    again = store.load()
    assert len(store.files()) == 1 and sorted(again["row_id"]) == sorted(df["row_id"])
