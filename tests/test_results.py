"""harness.results: parquet store round trips, concurrent appends, resume keys, compaction."""
import multiprocessing as mp
import os

import pandas as pd
import pytest

from harness.results import ResultsStore, decode_json, env_info, load_results, point_key
from kernels import gpu_slug

GPU = "NVIDIA H100 80GB HBM3"


def _row(i: int, gpu: str = GPU, **kw) -> dict:
    r = {"model": "llama1b", "quant": "int4" if i % 2 else "bf16", "group_size": 128 if i % 2 else None,
         "impl": "megakernel", "fusion": "model", "batch": 1, "ctx": 1024 + i, "tag": "", "gpu_name": gpu,
         "extra": "", "latency_us": 800.0 + i, "pct_of_copy_bw": None if i % 3 == 0 else 0.5,
         "config": {"model": {"name": "llama1b", "dims": [1, 2]}, "bench": {"repeats": 100}}}
    r.update(kw)
    return r


def test_gpu_slug():
    assert gpu_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert gpu_slug("NVIDIA H200") == "nvidia-h200"
    assert gpu_slug("cpu: x86_64") == "cpu"
    assert gpu_slug("nvidia-h200") == "nvidia-h200"  # a slug is its own slug


def test_point_key_stable_and_order_independent():
    a = {"model": "llama8b", "quant": "int4", "group_size": 128, "impl": "megakernel", "fusion": "layer",
         "batch": 1, "ctx": 1024, "tag": "x", "gpu_name": GPU, "extra": "", "latency_us": 1.0}
    b = dict(reversed(list(a.items())))
    b["latency_us"] = 2.0  # not an identity field
    assert point_key(a) == point_key(b)
    assert len(point_key(a)) == 16
    assert point_key(a) != point_key({**a, "ctx": 2048})
    # what parquet gives back: floats for ints, NaN for None
    assert point_key({**a, "batch": 1.0}) == point_key(a)
    assert point_key({**a, "group_size": float("nan")}) == point_key({**a, "group_size": None})


def test_env_info_cpu():
    e = env_info("cpu")
    assert e["gpu_name"].startswith("cpu: ")
    assert gpu_slug(e["gpu_name"]) == "cpu"
    for k in ("gpu_count", "driver_version", "cuda_version", "torch_version", "triton_version",
              "python_version", "hostname", "git_sha", "timestamp_utc"):
        assert k in e
    assert e["timestamp_utc"].endswith("+00:00")


def test_append_load_round_trip(tmp_path):
    store = ResultsStore(tmp_path)
    rows = [_row(i) for i in range(6)]
    path = store.append(rows)
    assert path.parent == tmp_path / "nvidia-h100-80gb-hbm3" and path.suffix == ".parquet"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".") and p.suffix == ".tmp"]
    df = store.load()
    assert len(df) == 6 and df["row_id"].is_unique
    assert list(df["ctx"]) == [1024 + i for i in range(6)]
    assert "config" not in df.columns
    assert decode_json(df)[0] == rows[0]["config"]
    # mixed None / float columns come back as NaN where None
    assert df["pct_of_copy_bw"].isna().tolist() == [i % 3 == 0 for i in range(6)]
    assert df["group_size"].isna().tolist() == [i % 2 == 0 for i in range(6)]
    assert store.load(gpu=GPU).shape == df.shape
    assert store.load(gpu="NVIDIA H200").empty
    assert load_results(tmp_path).shape == df.shape


def test_load_empty_store(tmp_path):
    assert ResultsStore(tmp_path / "nothing").load().empty
    assert ResultsStore(tmp_path / "nothing").done_keys() == set()
    assert ResultsStore(tmp_path).append([]) is None


def test_append_rejects_rows_of_two_gpus(tmp_path):
    with pytest.raises(ValueError, match="several GPUs"):
        ResultsStore(tmp_path).append([_row(0), _row(1, gpu="NVIDIA H200")])


def test_done_keys_after_append(tmp_path):
    store = ResultsStore(tmp_path)
    rows = [_row(i) for i in range(4)]
    store.append(rows)
    assert store.done_keys() == {point_key(r) for r in rows}
    assert point_key(_row(99)) not in store.done_keys()


def test_rows_with_different_columns_and_mixed_types(tmp_path):
    store = ResultsStore(tmp_path)
    store.append([_row(0, error=None), _row(1, error="OOM")])
    store.append([_row(2, new_metric=3.5, odd=[1, "a"]), _row(3, odd=7)])
    df = store.load()
    assert len(df) == 4
    assert df["new_metric"].isna().sum() == 3
    assert df["error"].tolist()[1] == "OOM"


def _append_worker(root, worker, n_appends, barrier):
    store = ResultsStore(root)
    barrier.wait()
    for k in range(n_appends):
        store.append([_row(i, worker=worker, k=k) for i in range(5)])


def test_concurrent_appends_lose_nothing(tmp_path):
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_append_worker, args=(str(tmp_path), w, 10, barrier)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    df = ResultsStore(tmp_path).load()
    assert len(df) == 2 * 10 * 5
    assert df["row_id"].is_unique
    assert len(ResultsStore(tmp_path).files()) == 20
    assert sorted(df.groupby(["worker", "k"]).size().unique()) == [5]


def test_compact_keeps_every_row_once(tmp_path):
    store = ResultsStore(tmp_path)
    for k in range(4):
        store.append([_row(i, k=k) for i in range(3)])
    store.append([_row(0, gpu="NVIDIA H200")])
    before = store.load(GPU)
    # a duplicated file (as a compaction interrupted after writing its output would leave)
    f0 = store.files(GPU)[0]
    (f0.parent / ("dup-" + f0.name)).write_bytes(f0.read_bytes())
    assert len(store.load(GPU)) == 12  # load already deduplicates on row_id
    merged = store.compact(GPU)
    assert store.files(GPU) == [merged]
    after = store.load(GPU)
    assert len(after) == 12 and after["row_id"].is_unique
    assert set(after["row_id"]) == set(before["row_id"])
    pd.testing.assert_frame_equal(
        after.sort_values("row_id").reset_index(drop=True)[sorted(before.columns)],
        before.sort_values("row_id").reset_index(drop=True)[sorted(before.columns)])
    assert len(store.load("NVIDIA H200")) == 1  # other GPU untouched
    assert store.compact(GPU) is not None and len(store.load(GPU)) == 12  # idempotent
    assert store.compact("NVIDIA A100") is None


def test_git_sha(tmp_path):
    import shutil
    import subprocess

    from harness.results import git_sha

    assert git_sha(tmp_path) == ""  # not a checkout
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(git + ["init", "-q"], check=True)
    assert git_sha(tmp_path) == ""  # no commit yet
    (tmp_path / "a.txt").write_text("1")
    subprocess.run(git + ["add", "a.txt"], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "init"], check=True)
    sha = git_sha(tmp_path)
    assert len(sha) == 40
    (tmp_path / "untracked.txt").write_text("x")
    assert git_sha(tmp_path) == sha  # untracked files do not make it dirty
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "t.parquet").write_text("measured")
    subprocess.run(git + ["add", "results"], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "a table"], check=True)
    sha = git_sha(tmp_path)
    (tmp_path / "results" / "t.parquet").write_text("measured again")  # a run rewrote a committed table
    assert git_sha(tmp_path) == sha  # measurements are not the code that ran
    (tmp_path / "a.txt").write_text("2")
    assert git_sha(tmp_path) == sha + "-dirty"


def test_commit_manifest_names_the_commit_of_a_copied_tree(tmp_path):
    """A tree copied elsewhere with stale .git metadata proves its commit through .commit-manifest: the sha when
    every tracked file's blob id matches, sha-dirty when one differs; without a manifest, git itself decides."""
    import shutil
    import subprocess

    from harness.results import git_sha, write_commit_manifest

    repo = tmp_path / "repo"
    repo.mkdir()
    run = lambda *a: subprocess.run(["git", "-C", str(repo), *a], check=True, capture_output=True, text=True)  # noqa: E731
    run("init", "-q")
    (repo / "a.py").write_text("x = 1\n")
    (repo / "link").symlink_to("a.py")
    (repo / "results").mkdir()
    (repo / "results" / "t.txt").write_text("a committed table\n")
    run("add", ".")
    run("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "one")
    sha = run("rev-parse", "HEAD").stdout.strip()
    assert git_sha(repo) == sha
    write_commit_manifest(repo)
    copy = tmp_path / "copy"
    shutil.copytree(repo, copy, symlinks=True, ignore=shutil.ignore_patterns(".git"))
    assert git_sha(copy) == sha  # no .git at all: the manifest alone
    (copy / "results" / "t.txt").write_text("rewritten by a run\n")
    assert git_sha(copy) == sha  # measurements (results/) are not the code that ran
    (copy / "a.py").write_text("x = 2\n")
    assert git_sha(copy) == sha + "-dirty"


def test_snapshot_of_an_older_commit_records_that_commit(tmp_path):
    """harness.results.snapshot_commit (--snapshot REV DIR): the code of an older commit in a new directory with its
    own manifest records that commit, clean, while the checkout has moved on; an edited file makes it -dirty;
    results/ stays out; a revision git does not know, or a directory in use, ends in one sentence."""
    import subprocess

    from harness.results import git_sha, snapshot_commit

    repo = tmp_path / "repo"
    repo.mkdir()
    run = lambda *a: subprocess.run(["git", "-C", str(repo), *a], check=True, capture_output=True, text=True)  # noqa: E731
    commit = lambda m: run("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qam", m)  # noqa: E731
    run("init", "-q")
    (repo / "pkg").mkdir()
    (repo / "pkg" / "k.py").write_text("BLOCK = 64\n")
    (repo / "results").mkdir()
    (repo / "results" / "t.txt").write_text("a committed table\n")
    run("add", ".")
    commit("one")
    old = run("rev-parse", "HEAD").stdout.strip()
    (repo / "pkg" / "k.py").write_text("BLOCK = 32\n")
    commit("two")
    snap = tmp_path / "ab" / "old"
    assert snapshot_commit(old[:7], snap, repo) == old
    assert (snap / "pkg" / "k.py").read_text() == "BLOCK = 64\n" and not (snap / "results").exists()
    assert git_sha(snap) == old and git_sha(repo) != old
    (snap / "pkg" / "k.py").write_text("BLOCK = 16\n")
    assert git_sha(snap) == old + "-dirty"
    with pytest.raises(ValueError, match="not a commit of"):
        snapshot_commit("no-such-rev", tmp_path / "x", repo)
    with pytest.raises(ValueError, match="is not an empty directory"):
        snapshot_commit(old, snap, repo)


def test_load_marks_each_row_clean_by_its_commit(tmp_path):
    """`clean` is is_clean_sha of the row's git_sha: a commit is clean; a dirty tree, an empty sha, a missing one (a
    row from before git_sha existed, or a file without the column) are not."""
    from harness.results import is_clean_sha

    store = ResultsStore(tmp_path)
    shas = ["4682442", "4682442-dirty", "", None]
    store.append([_row(i, git_sha=s) for i, s in enumerate(shas)])
    store.append([_row(9)])  # a file whose rows have no git_sha column at all
    df = load_results(tmp_path).sort_values("ctx").reset_index(drop=True)
    assert df["clean"].dtype == bool
    assert df["clean"].tolist() == [True, False, False, False, False]
    assert df["clean"].tolist() == [is_clean_sha(s) for s in df["git_sha"]]
    assert load_results(tmp_path, GPU)["clean"].sum() == 1  # one GPU's rows: the same column
    assert "clean" not in ResultsStore(tmp_path)._read(ResultsStore(tmp_path).files()).columns  # derived, not stored


def _git_repo(path):
    from git_repo import committed_repo, git

    return git(committed_repo(path, {"a.py": "x = 1\n"}), "rev-parse", "HEAD")


def test_unclean_tree_says_commit_first(tmp_path):
    """The check scripts/gpu_session.sh runs: None at a clean commit (untracked files allowed), one sentence saying
    to commit first when a tracked file changed or no commit is known; the CLI exits 1 with it on stderr."""
    import shutil
    import subprocess
    import sys

    from harness.results import unclean_tree

    if shutil.which("git") is None:
        pytest.skip("git not installed")
    repo = tmp_path / "repo"
    sha = _git_repo(repo)
    (repo / "new.txt").write_text("untracked")
    assert unclean_tree(repo) is None
    def cli():
        return subprocess.run([sys.executable, "-m", "harness.results", "--require-clean", "--repo", str(repo)],
                              capture_output=True, text=True, timeout=120)
    ok = cli()
    assert ok.returncode == 0 and ok.stderr == "", ok.stderr
    (repo / "a.py").write_text("x = 2\n")
    why = unclean_tree(repo)
    assert why.startswith(f"the tracked files in {repo} differ from commit {sha[:12]}; commit first")
    bad = cli()
    assert bad.returncode == 1 and bad.stderr.splitlines() == [f"error: {why}."]
    assert unclean_tree(tmp_path / "nowhere").startswith(f"no commit is known for {tmp_path / 'nowhere'}")


# ---------------------------------------------------------------------------------------------- resume and claims

def test_point_key_covers_every_measurement_field():
    """Each field that changes a measurement changes the key; fields of the row's result do not."""
    from harness.results import POINT_KEY_FIELDS

    base = {"model": "tiny", "model_id": "tiny:abc", "quant": "int4", "group_size": 128, "impl": "megakernel",
            "fusion": "model", "mega_config": '{"programs_per_sm": 2}', "batch": 1, "ctx": 8, "seed": 0,
            "cache_fill": "random", "cuda_graphs": True, "tag": "t", "gpu_name": GPU, "extra": ""}
    changed = {"model": "tiny2", "model_id": "hf:def", "quant": "int8", "group_size": 64, "impl": "layerwise",
               "fusion": "layer", "mega_config": '{"programs_per_sm": 1}', "batch": 2, "ctx": 16, "seed": 1,
               "cache_fill": "prefill", "cuda_graphs": False, "tag": "u", "gpu_name": "NVIDIA H200", "extra": "x"}
    assert set(changed) == set(POINT_KEY_FIELDS)
    keys = {point_key({**base, f: v}) for f, v in changed.items()}
    assert len(keys) == len(changed) and point_key(base) not in keys
    assert point_key({**base, "latency_us_median": 5.0, "status": "failed"}) == point_key(base)


def test_done_keys_leave_out_failed_rows(tmp_path):
    """A failed (or any unknown-status) row is measured again on resume; ok, wrong and unsupported rows are done,
    and so are rows written before `status` existed."""
    store = ResultsStore(tmp_path)
    by_status = {s: _row(i, status=s) for i, s in enumerate(["ok", "wrong", "unsupported", "failed", "config-error"])}
    store.append(list(by_status.values()))
    old = _row(10)  # no status column in its file
    store.append([old])
    done = store.done_keys()
    assert done == {point_key(by_status[s]) for s in ("ok", "wrong", "unsupported")} | {point_key(old)}
    assert store.done_keys(statuses=None) == {point_key(r) for r in [*by_status.values(), old]}


def _hold_claim(root, key, q):
    import time

    from harness.results import ResultsStore as S

    q.put(sorted(S(root).claim(GPU, [key])[0]))
    time.sleep(120)  # until killed (an Event would deadlock its setter once its waiter is SIGKILLed)


def test_claims_are_exclusive_and_a_dead_holders_claim_is_taken_over(tmp_path):
    import signal

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    holder = ctx.Process(target=_hold_claim, args=(str(tmp_path), "k1", q))
    holder.start()
    try:
        assert q.get(timeout=60) == ["k1"]
        store = ResultsStore(tmp_path)
        mine, others = store.claim(GPU, ["k1", "k2"])
        assert mine == {"k2"} and f"pid {holder.pid} on " in others["k1"]
        store.release(GPU, mine)
        os.kill(holder.pid, signal.SIGKILL)  # its claim file stays behind, naming a dead process
        holder.join(30)
        claim = tmp_path / gpu_slug(GPU) / ".claims" / "k1.claim"
        assert claim.is_file()
        mine, others = store.claim(GPU, ["k1"])
        assert mine == {"k1"} and not others
        store.release(GPU, mine)
        assert not claim.exists()
    finally:
        if holder.is_alive():
            holder.kill()
        holder.join(30)


def test_claims_of_other_hosts_go_stale_by_age(tmp_path, monkeypatch):
    """A holder on another host cannot be asked whether it lives: its claim holds until CLAIM_STALE_S; a claim
    taken over meanwhile is not removed by its first holder's release."""
    import json
    import time

    import harness.results as R

    folder = tmp_path / gpu_slug(GPU) / ".claims"
    folder.mkdir(parents=True)
    claim = folder / "k1.claim"
    claim.write_text(json.dumps({"pid": 1, "host": "elsewhere", "time": time.time(), "token": "x"}))
    store = ResultsStore(tmp_path)
    mine, others = store.claim(GPU, ["k1"])
    assert not mine and "pid 1 on elsewhere" in others["k1"]
    monkeypatch.setattr(R, "CLAIM_STALE_S", 0.0)
    mine, _ = store.claim(GPU, ["k1"])
    assert mine == {"k1"}
    claim.write_text(json.dumps({"pid": 1, "host": "elsewhere", "time": time.time(), "token": "y"}))
    store.release(GPU, mine)  # not its claim any more
    assert json.loads(claim.read_text())["token"] == "y"


def test_checkpoint_id_is_content_not_path(tmp_path):
    """Two checkpoints of one architecture in directories both named `ck` (equal config.json, headers and sizes,
    other weights) get different ids; a copy of one elsewhere gets the same id."""
    import shutil

    from harness.results import checkpoint_id
    from tests.hf_tiny import write_tiny_checkpoint

    a, b = tmp_path / "a" / "ck", tmp_path / "b" / "ck"
    write_tiny_checkpoint(a, seed=0)
    write_tiny_checkpoint(b, seed=1)
    assert (a / "config.json").read_bytes() == (b / "config.json").read_bytes()
    assert (a / "model.safetensors").stat().st_size == (b / "model.safetensors").stat().st_size
    assert checkpoint_id(a) != checkpoint_id(b)
    shutil.copytree(a, tmp_path / "c" / "ck")
    assert checkpoint_id(tmp_path / "c" / "ck") == checkpoint_id(a)
