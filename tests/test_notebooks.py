"""Figure notebooks run headless (nbclient, kernel python3) and write their PNGs; the figure module
draws real rows, and says "no rows yet" where there are none (on synthetic tables in tmp dirs)."""
from pathlib import Path

import pytest

from harness import figures as F
from harness.results import ResultsStore, load_results
from kernels import gpu_slug
from tests.synthetic_results import GPU, H200, full_sweeps, run_rows

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_ok(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


def test_one_notebook_per_figure():
    assert {p.stem for p in NOTEBOOKS} == set(F.PLOTTERS)
    for p in NOTEBOOKS:
        assert (ROOT / "experiments" / f"{p.stem}.yaml").is_file()


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_on_the_committed_results(notebook, tmp_path):
    F.execute_notebook(notebook, {"RESULTS": str(ROOT / "results"), "FIGURES": str(tmp_path)})
    gpus = F.gpus_in(load_results(ROOT / "results")) or [F.NO_GPU]
    for g in gpus:
        assert _png_ok(tmp_path / f"{notebook.stem}-{g}.png")


def test_notebook_runs_without_any_rows(tmp_path):
    nb = ROOT / "notebooks" / "batch_sweep.ipynb"
    executed = F.execute_notebook(nb, {"RESULTS": str(tmp_path / "empty"), "FIGURES": str(tmp_path / "fig")})
    assert _png_ok(tmp_path / "fig" / "batch_sweep-any-gpu.png")
    text = "".join(str(o.get("text", "")) for c in executed.cells for o in c.get("outputs", []))
    assert "Traceback" not in text


def _texts(fig) -> str:
    return " ".join(t.get_text() for ax in fig.axes for t in ax.texts) + " " + \
        " ".join(t.get_text() for t in fig.texts) + " " + (fig._suptitle.get_text() if fig._suptitle else "")


@pytest.fixture(scope="module")
def synthetic_rows(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    store = ResultsStore(root)
    full_sweeps(store)
    store.append(run_rows(gpu=H200, model="llama8b", quant="int4", ctx=100))  # in no experiment's grid
    return load_results(root)


@pytest.mark.parametrize("experiment", sorted(F.PLOTTERS))
def test_every_figure_draws_a_full_sweep(experiment, synthetic_rows, tmp_path):
    fig = F.make_figure(experiment, synthetic_rows, GPU)
    text = _texts(fig)
    assert "no rows yet" not in text
    assert GPU in text and "2026-11-22" in text  # titles carry the GPU and the measurement date
    labels = [ax.get_ylabel() for ax in fig.axes if ax.get_visible() and ax.get_ylabel()]
    assert labels and all("(" in l for l in labels)  # units on every y axis
    [path] = F.render(experiment, synthetic_rows, tmp_path, gpus=[GPU])
    assert path.name == f"{experiment}-{gpu_slug(GPU)}.png" and _png_ok(path)


@pytest.mark.parametrize("experiment", sorted(F.PLOTTERS))
def test_no_rows_figure_says_so(experiment, synthetic_rows, tmp_path):
    fig = F.make_figure(experiment, synthetic_rows, H200)  # an H200 row, but outside every grid
    assert f"no rows yet for {experiment} on {H200}" in _texts(fig)
    paths = F.render(experiment, synthetic_rows.iloc[0:0], tmp_path)
    assert [p.name for p in paths] == [f"{experiment}-any-gpu.png"] and _png_ok(paths[0])


def test_figure_rows_follow_the_experiment_grid(synthetic_rows):
    grid = F.experiment_grid("fusion_ablation")
    assert grid["fusion"] == ["op", "block", "layer", "model"] and grid["impl"] == ["megakernel", "layerwise",
                                                                                    "torch-compile"]
    rows = F.figure_rows("fusion_ablation", synthetic_rows, GPU)
    assert set(rows["impl"]) == {"megakernel", "layerwise", "torch-compile"}
    assert set(rows["batch"]) == {1} and set(rows["ctx"]) == {1024}
    assert set(rows.loc[rows["impl"] == "megakernel", "fusion"]) == {"op", "block", "layer", "model"}
    ctx_rows = F.figure_rows("speedup_vs_context", synthetic_rows, GPU)
    assert set(ctx_rows["ctx"]) == {128, 1024, 4096, 8192, 32768}
    assert set(ctx_rows.loc[ctx_rows["impl"] == "megakernel", "fusion"]) == {"model"}  # other fusions: ablation only
    assert not ctx_rows.duplicated(["model", "quant", "impl", "fusion", "batch", "ctx"]).any()  # newest per point


def test_fusion_figure_needs_megakernel_rows():
    rows = load_results(ROOT / "results")
    rows = rows[rows["impl"] != "megakernel"]  # the figure must say so, not draw an empty ablation
    for g in F.gpus_in(rows):
        text = _texts(F.make_figure("fusion_ablation", rows, g))
        assert "no rows yet for fusion_ablation" in text and "no megakernel rows" in text
