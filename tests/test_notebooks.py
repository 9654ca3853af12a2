"""Figure notebooks run headless (nbclient, kernel python3), and every figure draws exactly the rows of its table:
its expected series with their expected number of points on a synthetic full sweep, every row of figure_rows on
the committed results, and the same picture from the notebook as from harness.figures. A notebook pointed at a tag
that no row carries fails; "no rows yet" is drawn only where there are truly no rows."""
import math
import re
from collections import defaultdict
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.colors import to_hex
from matplotlib.container import BarContainer, ErrorbarContainer

from harness import figures as F
from harness.results import ResultsStore, load_results
from kernels import gpu_slug
from tests.synthetic_results import GPU, H200, full_sweeps, run_rows, stamp

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# The value each line figure plots on y; the speedup figures draw the reference as a dashed line at 1, not a series.
LINE_Y = {"speedup_vs_context": F.SPEEDUP, "speedup_vs_model": F.SPEEDUP, "batch_sweep": "latency_us_median"}
REF_AS_LINE = {"speedup_vs_context", "speedup_vs_model"}
FUSION_BARS = [f"megakernel/{f}" for f in F.FUSION_ORDER] + ["layerwise", F.REF]
NON_REF = ["torch-eager", "torch-graph", "flash-attn", "layerwise", "megakernel/model"]

# What each figure draws from tests/synthetic_results.full_sweeps (the design of that sweep, written out):
# panels -> series -> points.
PAIRS = ["llama1b bf16", "llama1b int4 g128", "llama8b bf16", "llama8b int4 g128"]
EXPECTED_LINES = {
    "speedup_vs_context": {p: {s: 5 for s in NON_REF} for p in PAIRS},  # ctx 128 .. 32768
    "batch_sweep": {p: {s: 5 for s in [*NON_REF[:2], F.REF, *NON_REF[2:]]} for p in PAIRS},  # batch 1 .. 16
    "speedup_vs_model": {q: {s: 3 for s in NON_REF} for q in ["bf16", "int8", "int4"]},  # 1B, 3B, 8B
}
EXPECTED_BARS = {
    "fusion_ablation": {p: FUSION_BARS for p in PAIRS},  # one bar per fusion, layerwise and the reference
    "bandwidth_by_impl": {"% of copy": 6 * 6, "TB/s": 6 * 6},  # (1B, 8B) x (bf16, int8, int4) x 6 impls
}


def _png_ok(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


def _texts(fig) -> str:
    return " ".join(t.get_text() for ax in fig.axes for t in ax.texts) + " " + \
        " ".join(t.get_text() for t in fig.texts) + " " + (fig._suptitle.get_text() if fig._suptitle else "")


def _panel(ax) -> str:
    """A line panel's model and weight format: its title without the "(n of m ... measured)" count."""
    return ax.get_title().split(" (")[0]


def drawn_lines(fig) -> dict[str, dict[str, list[float]]]:
    """Panel -> series -> the y values of its labelled error-bar lines, one per run (a line figure's data, as drawn;
    the NaN that break a line where a value was not measured are left out)."""
    out: dict = defaultdict(dict)
    for ax in fig.axes:
        for c in ax.containers:
            if isinstance(c, ErrorbarContainer) and not c.get_label().startswith("_"):
                out[_panel(ax)].setdefault(c.get_label(), []).extend(
                    float(v) for v in c.lines[0].get_ydata() if not math.isnan(v))
    return dict(out)


def drawn_bars(ax) -> list[tuple[int, str, float]]:
    """(x slot, edge colour, height) of every bar of an axes, in drawing order."""
    bars = [c.patches[0] for c in ax.containers if isinstance(c, BarContainer)]
    return [(round(p.get_x() + p.get_width() / 2), to_hex(p.get_edgecolor()), float(p.get_height())) for p in bars]


def fusion_bars(fig) -> dict[str, dict[str, float]]:
    """fusion_ablation: panel -> x tick (series) -> bar height."""
    out = {}
    for ax in fig.axes:
        if ax.get_visible():
            ticks = [t.get_text().replace("mega\n", "megakernel/") for t in ax.get_xticklabels()]
            out[ax.get_title()] = {ticks[x]: h for x, _, h in drawn_bars(ax)}
    return out


def table_of(experiment: str, rows: pd.DataFrame, gpu: str) -> pd.DataFrame:
    """The rows the figure must draw, each with its series name."""
    return F._with_series(F.figure_rows(experiment, rows, gpu))


def assert_draws_its_table(experiment: str, rows: pd.DataFrame, gpu: str) -> None:
    """Every row of figure_rows is drawn, with its value, and nothing else is."""
    fig = F.make_figure(experiment, rows, gpu)
    df = table_of(experiment, rows, gpu)
    assert "no rows yet" not in _texts(fig), f"{experiment} on {gpu}: a placeholder for a table of {len(df)} rows"
    if experiment in LINE_Y:
        y = LINE_Y[experiment]
        d = df[df[y].notna() & ~((df["series"] == F.REF) & (experiment in REF_AS_LINE))]
        want = {s: sorted(g[y]) for s, g in d.groupby("series")}
        got = defaultdict(list)
        for series in drawn_lines(fig).values():
            for s, ys in series.items():
                got[s] += ys
        assert sorted(got) == sorted(want), f"{experiment} on {gpu}: series drawn {sorted(got)} != {sorted(want)}"
        for s in want:
            assert sorted(got[s]) == pytest.approx(want[s]), f"{experiment} on {gpu}: the points of {s}"
    elif experiment == "fusion_ablation":
        d = df[df["series"].isin(FUSION_BARS) & df[F.SPEEDUP].notna()]
        heights = [h for panel in fusion_bars(fig).values() for h in panel.values()]
        assert sorted(heights) == pytest.approx(sorted(d[F.SPEEDUP])), f"fusion_ablation on {gpu}: the bars"
    else:  # bandwidth_by_impl: % of copy on top, TB/s below, one bar per row
        ax_pct, ax_tb = fig.axes[:2]
        assert sorted(h for *_, h in drawn_bars(ax_pct)) == pytest.approx(sorted(df["pct_of_copy_bw"]))
        assert sorted(h for *_, h in drawn_bars(ax_tb)) == pytest.approx(sorted(df["gbps"] / 1e3))


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("results")
    store = ResultsStore(root)
    full_sweeps(store)
    store.append(run_rows(gpu=H200, model="llama8b", quant="int4", ctx=100))  # in no experiment's grid
    return root


@pytest.fixture(scope="module")
def synthetic_rows(synthetic_root):
    return load_results(synthetic_root)


# ---------------------------------------------------------------- the data behind each figure

@pytest.mark.parametrize("experiment", sorted(LINE_Y))
def test_line_figures_draw_every_series_with_every_point(experiment, synthetic_rows):
    fig = F.make_figure(experiment, synthetic_rows, GPU)
    drawn = {panel: {s: len(ys) for s, ys in series.items()} for panel, series in drawn_lines(fig).items()}
    assert drawn == EXPECTED_LINES[experiment]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    t = table_of(experiment, synthetic_rows, GPU)
    sweeps = t.assign(sweep=F.sweeps(t)).groupby(F.provenance(t))["sweep"].nunique()  # per commit and date
    assert sorted(legend) == sorted({s for series in EXPECTED_LINES[experiment].values() for s in series} |
                                    ({f"{F.REF} (reference = 1)"} if experiment in REF_AS_LINE else set()) |
                                    {f"{p} ({n} sweep{'s' if n > 1 else ''})" for p, n in sweeps.items()})
    assert_draws_its_table(experiment, synthetic_rows, GPU)


def test_fusion_figure_draws_one_bar_per_fusion_and_reference(synthetic_rows):
    fig = F.make_figure("fusion_ablation", synthetic_rows, GPU)
    bars = fusion_bars(fig)
    want = EXPECTED_BARS["fusion_ablation"]
    assert {p: sorted(b) for p, b in bars.items()} == {p: sorted(s) for p, s in want.items()}
    for panel in bars.values():
        assert panel[F.REF] == pytest.approx(1.0)  # the reference over itself
        # the synthetic latencies grow from model to op fusion (tests/synthetic_results._FUSION_FACTOR)
        assert panel["megakernel/model"] > panel["megakernel/layer"] > panel["megakernel/block"] > \
            panel["megakernel/op"]
    assert "not\nmeasured" not in _texts(fig)
    assert_draws_its_table("fusion_ablation", synthetic_rows, GPU)


def test_bandwidth_figure_draws_one_bar_per_impl_and_format(synthetic_rows):
    fig = F.make_figure("bandwidth_by_impl", synthetic_rows, GPU)
    ax_pct, ax_tb = fig.axes[:2]
    for ax, key in ((ax_pct, "% of copy"), (ax_tb, "TB/s")):
        bars = drawn_bars(ax)
        assert len(bars) == EXPECTED_BARS["bandwidth_by_impl"][key]
        per_slot = defaultdict(set)
        for slot, colour, _ in bars:
            per_slot[slot].add(colour)
        assert sorted(per_slot) == list(range(6)) and all(len(c) == 6 for c in per_slot.values())  # 6 impls each
    assert [t.get_text() for t in ax_pct.get_xticklabels()] == [
        "llama1b bf16", "llama1b int8", "llama1b int4 g128", "llama8b bf16", "llama8b int8", "llama8b int4 g128"]
    assert_draws_its_table("bandwidth_by_impl", synthetic_rows, GPU)


@pytest.mark.parametrize("experiment", sorted(F.PLOTTERS))
def test_committed_figures_draw_their_tables(experiment):
    """On the committed results: each GPU's figure draws every row of its table, or says why there is none."""
    rows = load_results(ROOT / "results")
    for g in F.gpus_in(rows):
        df = table_of(experiment, rows, g)
        ok, _ = F.REQUIRES[experiment]
        if df.empty or not ok(df):
            assert "no rows yet" in _texts(F.make_figure(experiment, rows, g))
        else:
            assert_draws_its_table(experiment, rows, g)


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


# ---------------------------------------------------------------- rows not from a clean commit

def _loaded(root: Path, *runs: list) -> pd.DataFrame:
    """The runs' rows as load_results gives them back (run_id, clean)."""
    store = ResultsStore(root)
    for rows in runs:
        store.append(rows)
    return load_results(root)


def _one_dirty_run(root: Path, sha8b: str = "abc123-dirty") -> pd.DataFrame:
    """speedup_vs_model rows of two runs on one GPU: llama1b from a commit, llama8b from a dirty tree."""
    return _loaded(root, run_rows(model="llama1b", baseline="torch-compile", when=stamp(0), git_sha="abc123"),
                   run_rows(model="llama8b", baseline="torch-compile", when=stamp(60), git_sha=sha8b))


def test_a_dirty_row_is_hollow_in_the_figure_data(tmp_path):
    rows = _one_dirty_run(tmp_path)
    df = F.figure_rows("speedup_vs_model", rows, GPU)
    assert len(df) == 2 * 6
    dirty = df["git_sha"].str.endswith("-dirty")
    assert (df["clean"] == ~dirty).all() and (df["hollow"] == dirty).all()
    assert set(df.loc[dirty, "hollow_why"]) == {"not from a clean commit"} and set(df.loc[~dirty, "hollow_why"]) == {""}
    table = F.figure_table("speedup_vs_model", rows)
    assert table.loc[table["model"] == "llama8b", "hollow"].all() and not table.loc[table["model"] == "llama1b",
                                                                                     "hollow"].any()
    # rows that never went through load_results (no `clean` column): the same rule from git_sha
    direct = F.figure_rows("speedup_vs_model", rows.drop(columns="clean"), GPU)
    assert (direct["hollow"] == direct["git_sha"].str.endswith("-dirty")).all()


def _hollow_points(fig) -> list[tuple[float, float]]:
    """(x, y) of every white-faced marker drawn in the panels."""
    out = []
    for ax in fig.axes:
        for line in ax.lines:
            if line.get_marker() not in (None, "None", "") and to_hex(line.get_markerfacecolor()) == "#ffffff":
                out += list(zip(map(float, line.get_xdata()), map(float, line.get_ydata())))
    return out


def test_a_dirty_row_is_drawn_hollow_and_the_legend_and_caption_say_why(tmp_path):
    rows = _one_dirty_run(tmp_path / "dirty")
    fig = F.make_figure("speedup_vs_model", rows, GPU)
    df = F._with_series(F.figure_rows("speedup_vs_model", rows, GPU))
    drawn = df[df["series"] != F.REF]  # the reference is the dashed line at 1
    slot = F._model_order(F.experiment_grid("speedup_vs_model")["model"]).index  # x of a model: 1b 0, 3b 1, 8b 2
    want = sorted((float(slot(m)), y) for m, y, h in zip(drawn["model"], drawn[F.SPEEDUP], drawn["hollow"]) if h)
    assert len(want) == 5 and sorted(_hollow_points(fig)) == pytest.approx(want)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any(t.startswith(F.HOLLOW) and "6 of 12 rows" in t for t in legend), legend
    assert "not a clean commit (git sha -dirty or unknown: 6 of the figure's 12 rows)" in _texts(fig)
    clean = F.make_figure("speedup_vs_model", _one_dirty_run(tmp_path / "clean", sha8b="abc123"), GPU)
    assert _hollow_points(clean) == [] and not any(t.get_text().startswith(F.HOLLOW)
                                                   for t in clean.legends[0].get_texts())
    assert "0 of the figure's 12 rows" in _texts(clean)


def test_a_dirty_run_draws_hollow_bars(tmp_path):
    def rows(sha):
        return _loaded(tmp_path / sha, run_rows(model="llama1b", impls=("megakernel", "layerwise", "torch-compile"),
                                                baseline="torch-compile", git_sha=sha))
    fig = F.make_figure("bandwidth_by_impl", rows("abc123-dirty"), GPU)
    bars = [p for ax in fig.axes[:2] for c in ax.containers if isinstance(c, BarContainer) for p in c.patches]
    assert len(bars) == 6 and all(to_hex(p.get_facecolor()) == "#ffffff" for p in bars)
    assert any(t.get_text().startswith(F.HOLLOW) for t in fig.legends[0].get_texts())
    solid = F.make_figure("bandwidth_by_impl", rows("abc123"), GPU)
    assert not any(to_hex(p.get_facecolor()) == "#ffffff" for ax in solid.axes[:2] for c in ax.containers
                   if isinstance(c, BarContainer) for p in c.patches)


# ---------------------------------------------------------------- tags and empty selections

@pytest.mark.parametrize("experiment", sorted(F.PLOTTERS))
def test_a_missing_tag_is_an_error_not_an_empty_figure(experiment, synthetic_rows, tmp_path):
    with pytest.raises(ValueError, match=r"results.tag='no-such-tag' matches no result row \(tags present: default\)"):
        F.render(experiment, synthetic_rows, tmp_path, tag="no-such-tag")
    with pytest.raises(ValueError, match="no-such-tag"):
        F.figure_table(experiment, synthetic_rows, tag="no-such-tag")
    with pytest.raises(ValueError, match="no-such-tag"):
        F.make_figure(experiment, synthetic_rows, GPU, tag="no-such-tag")
    assert not list(tmp_path.glob("*.png"))


def test_a_tag_draws_only_the_gpus_that_have_it(synthetic_rows, tmp_path):
    rows = pd.concat([synthetic_rows, pd.DataFrame(run_rows(gpu=H200, tag="h200-only", baseline="torch-compile"))],
                     ignore_index=True)
    paths = F.render("speedup_vs_model", rows, tmp_path, tag="h200-only")
    assert [p.name for p in paths] == [f"speedup_vs_model-{gpu_slug(H200)}.png"]  # no placeholder for the H100
    drawn = drawn_lines(F.make_figure("speedup_vs_model", rows, H200, tag="h200-only"))
    assert {p: {s: len(ys) for s, ys in d.items()} for p, d in drawn.items()} == {"bf16": {s: 1 for s in NON_REF}}


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


# ---------------------------------------------------------------- the notebooks themselves

def test_one_notebook_per_figure():
    assert {p.stem for p in NOTEBOOKS} == set(F.FIGURES)
    for p in NOTEBOOKS:
        if p.stem in F.PLOTTERS:  # an experiment's figure; the others draw every row, timelines/ or ops/
            assert (ROOT / "experiments" / f"{p.stem}.yaml").is_file()


def _findings_cell(notebook: Path):
    import nbformat

    return nbformat.read(str(notebook), as_version=4).cells[-1]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_ends_with_findings_computed_from_the_data(notebook):
    """The last cell prints harness.figures.findings of this notebook's figure, from the rows it loaded: code, not
    prose, and no number typed into it."""
    cell = _findings_cell(notebook)
    assert cell.cell_type == "code"
    assert cell.source.strip() == f'print(figures.findings("{notebook.stem}", RESULTS, rows=rows, tag=TAG))'
    assert not re.search(r"\d", cell.source)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_draws_what_the_figure_module_draws(notebook, tmp_path):
    """On the committed results, each notebook writes, for every GPU, the very files that figures.render_named writes
    from the same tables (whose content the tests above and tests/test_figures_honest.py check), and ends with the
    findings that figures.findings computes from them."""
    nb = F.execute_notebook(notebook, {"RESULTS": str(ROOT / "results"), "FIGURES": str(tmp_path / "nb")})
    expected = F.render_named(notebook.stem, ROOT / "results", tmp_path / "module")
    assert expected and sorted(p.name for p in (tmp_path / "nb").iterdir()) == sorted(p.name for p in expected)
    for p in expected:
        assert (p.suffix != ".png" or _png_ok(p)) and (tmp_path / "nb" / p.name).read_bytes() == p.read_bytes(), p.name
    printed = "".join(str(o.get("text", "")) for o in nb.cells[-1].get("outputs", []))
    want = F.findings(notebook.stem, ROOT / "results")
    assert want.strip() and printed.strip() == want.strip()


def test_notebook_with_a_missing_tag_fails(synthetic_root, tmp_path):
    from nbclient.exceptions import CellExecutionError

    nb = ROOT / "notebooks" / "speedup_vs_context.ipynb"
    with pytest.raises(CellExecutionError, match="matches no result row"):
        F.execute_notebook(nb, {"RESULTS": str(synthetic_root), "FIGURES": str(tmp_path), "TAG": "no-such-tag"})
    assert not list(tmp_path.glob("*.png"))


def test_notebook_runs_without_any_rows(tmp_path):
    """With no rows at all (no tag asked for) the notebook still writes the placeholder that says so."""
    nb = ROOT / "notebooks" / "batch_sweep.ipynb"
    executed = F.execute_notebook(nb, {"RESULTS": str(tmp_path / "empty"), "FIGURES": str(tmp_path / "fig")})
    assert _png_ok(tmp_path / "fig" / "batch_sweep-any-gpu.png")
    text = "".join(str(o.get("text", "")) for c in executed.cells for o in c.get("outputs", []))
    assert "Traceback" not in text
