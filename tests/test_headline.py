"""The README opens with the headline: a figure and a table generated from the committed rows. The table in README.md
and results/figures/headline.md are what harness.figure_data.headline_markdown gives for the committed rows now (run
`python -m harness.figures` after committing rows); a run not measured at a clean commit is marked in the table and
drawn hollow in the figure; every number of a line comes from the megakernel row's own run."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
from matplotlib.colors import to_hex
from matplotlib.container import BarContainer

from harness import figures as F
from harness.results import load_results
from tests.synthetic_results import H200, run_rows, stamp, stored_and_loaded

ROOT = Path(__file__).resolve().parent.parent
_loaded = stored_and_loaded


def test_readme_and_headline_md_hold_the_table_the_committed_rows_give():
    want = F.headline_markdown(load_results(ROOT / "results"))
    assert "| model | weights |" in want
    assert F.readme_headline(ROOT / "README.md") == want, \
        "README.md's headline is stale: run .venv/bin/python -m harness.figures"
    assert (ROOT / "results" / "figures" / "headline.md").read_text() == want
    assert (ROOT / "results" / "figures" / "headline.png").is_file()
    readme = (ROOT / "README.md").read_text()
    assert readme.index(F.README_START) < readme.index("\n## ", readme.index("## Headline result") + 1), \
        "the headline is the README's first section"
    assert "](results/figures/headline.png)" in readme.split(F.README_START)[0]


def test_committed_unclean_runs_are_marked():
    t = F.headline_table(load_results(ROOT / "results"))
    md = F.headline_markdown(load_results(ROOT / "results"))
    lines = [ln for ln in md.splitlines() if ln.startswith("| llama")]
    assert len(lines) == len(t)
    for ln, clean in zip(lines, t["clean"]):
        assert ("not a clean commit" in ln) == (not clean), ln


def test_a_dirty_run_is_marked_and_drawn_hollow(tmp_path):
    impls = ("torch-compile", "flash-attn", "layerwise", "megakernel")
    rows = _loaded(tmp_path, run_rows(gpu=H200, model="llama1b", impls=impls, baseline="torch-compile",
                                      git_sha="abc1234567", when=stamp(0)),
                   run_rows(gpu=H200, model="llama8b", impls=impls, baseline="torch-compile",
                            git_sha="def7654321-dirty", when=stamp(5)))
    t = F.headline_table(rows)
    assert t["model"].tolist() == ["llama1b", "llama8b"] and t["clean"].tolist() == [True, False]
    md = F.headline_markdown(rows)
    l1b, l8b = [ln for ln in md.splitlines() if ln.startswith("| llama")]
    assert l1b.endswith("| `abc12345` |") and "not a clean commit" not in l1b
    assert l8b.endswith("| `def76543-dirty` **not a clean commit** |")
    assert "1 of the 2 runs were not measured at a clean commit" in md
    fig = F.headline_figure(t, H200)
    faces = {p.get_gid().split("|")[0].split("\n")[0]: to_hex(p.get_facecolor())
             for ax in fig.axes for c in ax.containers if isinstance(c, BarContainer) for p in c.patches}
    assert faces["llama8b"] == "#ffffff" and faces["llama1b"] != "#ffffff"


def test_each_line_comes_from_the_megakernel_rows_run(tmp_path):
    """The newest megakernel run measured no flash-attn: the line says so, never borrowing an older run's ratio."""
    old = run_rows(gpu=H200, impls=("torch-compile", "flash-attn", "layerwise", "megakernel"),
                   baseline="torch-compile", when=stamp(0), latency={"torch-compile": 1000.0, "megakernel": 500.0})
    new = run_rows(gpu=H200, impls=("torch-compile", "layerwise", "megakernel"), baseline="torch-compile",
                   when=stamp(10), latency={"torch-compile": 1200.0, "megakernel": 1000.0, "layerwise": 800.0})
    t = F.headline_table(_loaded(tmp_path, old, new))
    [r] = t.to_dict("records")
    assert r["mega_us"] == pytest.approx(1000.0) and r["compile_us"] == pytest.approx(1200.0)
    assert r["mega_speedup"] == pytest.approx(1.2) and r["layerwise_speedup"] == pytest.approx(1.5)
    assert math.isnan(r["flash-attn_speedup"])
    assert r["fastest"] == "layerwise"
    assert "| 1.20x | 1.50x | — | — | 1200 | layerwise |" in F.headline_markdown(_loaded(tmp_path, old, new))


def test_sync_readme_replaces_only_the_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# T\n\n{F.README_START}\nold\n{F.README_END}\n\nrest\n")
    assert F.sync_readme("new table\n", readme) is True
    assert readme.read_text() == f"# T\n\n{F.README_START}\nnew table\n{F.README_END}\n\nrest\n"
    assert F.readme_headline(readme) == "new table\n"
    assert F.sync_readme("new table\n", readme) is False


def test_the_megakernel_line_is_the_backend_auto_picks(tmp_path):
    """megakernel.backend=auto runs the Gluon backend where it can: a run that measured both backends gives its Gluon
    row; a point whose newest megakernel run has only the Triton backend (int4, which Gluon cannot run) its Triton
    row, whatever Gluon rows an older run of another point has."""
    both = run_rows(gpu=H200, impls=("torch-compile", "megakernel"), baseline="torch-compile", when=stamp(0),
                    latency={"torch-compile": 1000.0, "megakernel": 1100.0}, mega_backend="triton",
                    git_sha="abc1234567")
    mk = next(r for r in both if r["impl"] == "megakernel")
    both.append(dict(mk, mega_backend="gluon", latency_us_median=800.0, latency_us_p10=796.0, latency_us_p90=804.0,
                     latency_us_mean=800.0, speedup=1.25))
    int4 = run_rows(gpu=H200, quant="int4", impls=("torch-compile", "megakernel"), baseline="torch-compile",
                    when=stamp(5), latency={"torch-compile": 700.0, "megakernel": 1400.0}, mega_backend="triton",
                    git_sha="abc1234567")
    rows = _loaded(tmp_path, both, int4)
    t = F.headline_table(rows)
    assert t[["quant", "backend"]].values.tolist() == [["bf16", "Gluon"], ["int4", "Triton"]]
    assert t["mega_us"].tolist() == pytest.approx([800.0, 1400.0])
    assert t["mega_speedup"].tolist() == pytest.approx([1.25, 0.5])
    md = F.headline_markdown(rows)
    assert "| llama1b | bf16 | Gluon | 800 (796–804) |" in md and "| llama1b | int4 g128 | Triton | 1400 " in md
