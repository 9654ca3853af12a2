"""The package installs: `pip install .` (into a clean target directory, dependencies from this environment), then,
from another directory, `import kernels.mega` and a tiny CPU benchmark point run from the installed code only."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_pip_install_then_run_a_point_elsewhere(tmp_path):
    site, work = tmp_path / "site", tmp_path / "elsewhere"
    work.mkdir()
    build = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                            "--target", str(site), str(ROOT)], capture_output=True, text=True, timeout=600,
                           cwd=tmp_path)
    assert build.returncode == 0, build.stderr[-3000:]
    assert (site / "harness" / "conf" / "config.yaml").is_file() and (site / "kernels" / "mega" / "tuned.json").is_file()
    assert (site / "harness" / "conf" / "experiment" / "fusion_ablation.yaml").is_file()
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTHONPATH")}
    env["PYTHONPATH"] = str(site)  # the installed copy only: the repository is not on the path
    imp = subprocess.run([sys.executable, "-c", "import kernels.mega, kernels, harness; "
                          "print(kernels.__file__, harness.__file__)"], capture_output=True, text=True, env=env,
                         cwd=work, timeout=300)
    assert imp.returncode == 0, imp.stderr[-2000:]
    assert all(str(site) in p for p in imp.stdout.split()), imp.stdout
    run = subprocess.run([sys.executable, "-m", "harness.run", "model=tiny", "bench=quick", "bench.ctx=16",
                          "bench.repeats=1", "bench.warmup=0", "impl.names=[megakernel]", "baseline=megakernel",
                          f"results.dir={work / 'results'}", f"hydra.run.dir={work / 'out'}"],
                         capture_output=True, text=True, env=env, cwd=work, timeout=900)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert "megakernel" in run.stdout and " ok " in run.stdout, run.stdout[-2000:]
    assert list((work / "results").rglob("*.parquet")), "a result row was written"
