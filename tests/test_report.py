"""harness.report: the table of a selection and the side-by-side comparison, checked against the rows themselves.

Expected values are derived here from the raw rows (latencies, p10/p90, run ids), not through harness.analysis,
so that a report that borrowed a wrong helper would disagree with them. Most cases call main() in the test
process (fast); the CLI path (exit status, one line on stderr) is run once as a subprocess.
"""
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from harness import gate as G
from harness import report as R
from harness.results import ResultsStore, load_results
from tests.synthetic_results import GPU, H200, frozen_results, run_rows, stamp

ROOT = Path(__file__).resolve().parent.parent
H100_SLUG, H200_SLUG = "nvidia-h100-80gb-hbm3", "nvidia-h200"
SPEEDUP = "speedup_over_torch_compile"
POINT = ["model", "quant", "group_size", "batch", "ctx", "impl", "fusion"]
LAT = {"torch-eager": 9000.0, "torch-compile": 3000.0, "layerwise": 2700.0, "megakernel": 2100.0}


# ---------------------------------------------------------------------------------------------- helpers

def _report(capsys, *args, results=None):
    """harness.report's main over `results` (default: the committed rows these tests pin, frozen_results)."""
    code = R.main(["--results", str(results or frozen_results()), *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def _csv(capsys, *args, results=None) -> pd.DataFrame:
    code, out, err = _report(capsys, *args, "--format", "csv", results=results)
    assert code == 0, err
    return pd.read_csv(io.StringIO(out), keep_default_na=False, na_values=[""])


def _json(capsys, *args, results=None) -> list[dict]:
    code, out, err = _report(capsys, *args, "--format", "json", results=results)
    assert code == 0, err
    return json.loads(out)


def _md_table(text: str) -> tuple[list[str], list[list[str]]]:
    """The header and body cells of the one markdown table in `text`."""
    lines = [l for l in text.splitlines() if l.startswith("|")]
    assert len(lines) >= 2 and set(lines[1]) <= {"|", "-"}, text
    cells = [l[2:-2].split(" | ") for l in lines]
    return cells[0], cells[2:]


def _raw() -> pd.DataFrame:
    return load_results(frozen_results())


def _same_run_speedup(raw: pd.DataFrame, run_id: str, latency: float) -> float:
    """latency(torch-compile of that run) / latency, straight from the rows (NaN without a torch-compile row)."""
    tc = raw[(raw["run_id"] == run_id) & (raw["impl"] == "torch-compile") & raw["status"].isin(["ok", "wrong"])]
    return float(tc["latency_us_median"].iloc[0]) / latency if len(tc) else math.nan


def _spread(r) -> float:
    return (r["latency_us_p90"] - r["latency_us_p10"]) / (2 * r["latency_us_median"])


def _store(root, *runs):
    s = ResultsStore(root)
    for rows in runs:
        s.append(rows)
    return root


def _run(when=0, latency=None, **kw):
    return run_rows(impls=tuple(LAT), latency={**LAT, **(latency or {})}, when=stamp(when), seed=when, **kw)


def _close(a, b, rel=1e-12):
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=rel)


# ---------------------------------------------------------------------------------------------- one selection

def test_markdown_of_a_tag_shows_each_row_with_its_same_run_speedup(capsys):
    code, out, _ = _report(capsys, "--tag", "h200-arch")
    assert code == 0
    header, body = _md_table(out)
    assert header == list(R.LIST_MD_HEADER)
    raw = _raw()
    rows = raw[raw["tag"] == "h200-arch"]
    assert len(body) == len(rows) == 6
    col = {h: i for i, h in enumerate(header)}
    for cells in body:
        impl, fusion = cells[col["impl"]], cells[col["fusion"]]
        model, quant = cells[col["model"]], cells[col["quant"]].split()[0]
        r = rows[(rows["model"] == model) & (rows["quant"] == quant) & (rows["impl"] == impl)
                 & (rows["fusion"] == fusion)].iloc[0]
        assert cells[col["GPU"]] == H200_SLUG and cells[col["tag"]] == "h200-arch"
        assert cells[col["latency µs median (p10–p90)"]] == \
            f"{r['latency_us_median']:.1f} ({r['latency_us_p10']:.1f}–{r['latency_us_p90']:.1f})"
        assert cells[col["% copy"]] == f"{r['pct_of_copy_bw']:.1f}"
        assert cells[col["× torch-compile"]] == \
            f"{_same_run_speedup(raw, r['run_id'], r['latency_us_median']):.3f}"
        assert cells[col["rel_err"]] == f"{r['rel_err']:.2e}" and cells[col["status"]] == "ok"
        assert cells[col["git sha"]] == "46824428234c" and cells[col["clean"]] == "yes"
        if quant == "int4":
            assert cells[col["quant"]] == "int4 g128"
    # the numbers docs/figures.md quotes for this run: megakernel 1153 us, 0.939 x torch-compile (1082 us)
    mk = next(c for c in body if c[col["model"]] == "llama1b" and c[col["impl"]] == "megakernel")
    assert mk[col["× torch-compile"]] == "0.939" and mk[col["latency µs median (p10–p90)"]].startswith("1153.2 ")


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_csv_and_json_hold_every_column_at_full_precision(capsys, fmt):
    table = pd.DataFrame(_json(capsys, "--tag", "h200")) if fmt == "json" else _csv(capsys, "--tag", "h200")
    assert list(table.columns) == list(R.LIST_COLUMNS)
    raw = _raw()
    rows = raw[raw["tag"] == "h200"]
    assert len(table) == len(rows) == 49
    assert set(table["gpu"]) == {H200_SLUG}
    by_id = {(r["run_id"], r["impl"], r["fusion"]): r for r in rows.to_dict("records")}
    for t in table.to_dict("records"):
        r = by_id[(t["run_id"], t["impl"], t["fusion"])]
        for c in ("model", "quant", "group_size", "batch", "ctx", "tag", "status", "git_sha", "timestamp_utc"):
            assert t[c] == r[c], c
        for c in ("latency_us_median", "latency_us_p10", "latency_us_p90", "pct_of_copy_bw", "rel_err"):
            assert _close(float(t[c]), float(r[c])), c
        assert _close(float(t[SPEEDUP]), _same_run_speedup(raw, r["run_id"], r["latency_us_median"]))
        assert t["clean_commit"] in (False, "False") and t["git_sha"].endswith("-dirty")


def test_speedup_uses_the_run_of_each_row_even_when_a_filter_drops_torch_compile(capsys):
    # llama1b bf16 megakernel/model on the H200 was measured in two runs, next to two torch-compile timings
    table = _csv(capsys, "--gpu", "h200", "--where", "impl=megakernel", "--where", "fusion=model",
                 "--where", "model=llama1b", "--where", "quant=bf16")
    assert set(table["impl"]) == {"megakernel"}  # no torch-compile row in the selection ...
    assert sorted(table["tag"]) == ["h200", "h200-arch"]
    by_tag = table.set_index("tag")[SPEEDUP]
    assert by_tag["h200"] == pytest.approx(1169.952035 / 1132.384002, rel=1e-8)  # ... yet each run's own ratio
    assert by_tag["h200-arch"] == pytest.approx(1082.383990 / 1153.247952, rel=1e-8)


def test_rows_of_an_empty_sha_are_not_clean(capsys):
    # tag default holds 9 early rows without a git sha and, later, rows measured at a clean commit
    table = _csv(capsys, "--tag", "default")
    empty = table["git_sha"].isna()
    assert empty.sum() == 9 and not table.loc[empty, "clean_commit"].any()
    assert table.loc[~empty, "clean_commit"].all()
    _, body = _md_table(_report(capsys, "--tag", "default")[1])
    assert sum((c[-3], c[-2]) == ("-", "no") for c in body) == 9


def test_filters(capsys):
    raw = _raw()
    assert len(_csv(capsys)) == len(raw)
    for name in ("h100", H100_SLUG, "NVIDIA H100 80GB HBM3"):  # a part of a slug, the slug, the name
        assert set(_csv(capsys, "--gpu", name)["gpu"]) == {H100_SLUG}
    assert len(_csv(capsys, "--gpu", "h100")) == (raw["gpu_name"] == GPU).sum()
    t = _csv(capsys, "--where", "batch=4,16", "--where", "model=llama8b")
    assert len(t) == 8 and set(t["batch"]) == {4, 16} and set(t["model"]) == {"llama8b"}
    t = _csv(capsys, "--where", "quant=int4", "--where", "group_size=128", "--gpu", "h200")
    assert len(t) == ((raw["quant"] == "int4") & (raw["gpu_name"] == H200)).sum()
    assert set(t["group_size"]) == {128}
    t = _csv(capsys, "--where", "git_sha=4682")  # a sha by its prefix
    assert len(t) == 6 and set(t["tag"]) == {"h200-arch"}
    t = _csv(capsys, "--tag", "final", "--where", "impl=torch-compile", "--where", "ctx=32768")
    assert len(t) == 1 and t[SPEEDUP].item() == 1.0


def test_latest_is_the_gates_choice_per_point(capsys):
    t = _csv(capsys, "--gpu", "nvidia-h200", "--latest")
    h200 = _raw()[_raw()["gpu_name"] == H200]
    # the tag is not part of a point: the points measured again at a clean commit (tags h200-arch and default) come
    # from those runs
    assert len(t) == len(h200.drop_duplicates(POINT)) and not t.duplicated(POINT).any()
    assert t["tag"].isin(["h200-arch", "default"]).sum() == t["clean_commit"].sum() == 11
    chosen = G.select_runs(h200)
    assert sorted(t["run_id"] + t["impl"] + t["fusion"]) == sorted(chosen["run_id"] + chosen["impl"] + chosen["fusion"])
    code, out, _ = _report(capsys, "--gpu", "nvidia-h200", "--latest")
    assert code == 0 and out.startswith(f"# {len(t)} points (newest of each)")


def test_latest_prefers_the_newest_clean_commit_on_synthetic_rows(capsys, tmp_path):
    root = _store(tmp_path / "r", _run(0, git_sha="c0ffee"), _run(10, git_sha="c0ffee-dirty"), _run(5, git_sha=""))
    t = _csv(capsys, "--latest", results=root)
    assert len(t) == 4 and set(t["git_sha"]) == {"c0ffee"} and t["clean_commit"].all()
    assert len(_csv(capsys, results=root)) == 12


def test_build_time_and_peak_memory_are_shown(capsys, tmp_path):
    """build_s and peak_mem_gb as recorded (CSV / JSON: full precision), formatted in markdown; "-" where a row has
    none (a CPU row's NaN memory, rows written before the columns existed)."""
    run = _run(0)
    for r, b, m in zip(run, (1.5, 61.25, 3.0, 0.125), (20.0, 24.5, float("nan"), 19.75)):
        r.update(build_s=b, peak_mem_gb=m)
    root = _store(tmp_path / "r", run, _run(10, ctx=4096))
    t = _csv(capsys, results=root).set_index(["ctx", "impl"])
    assert t.loc[(1024, "torch-compile"), "build_s"] == 61.25 and t.loc[(1024, "torch-compile"), "peak_mem_gb"] == 24.5
    assert t.loc[(1024, "layerwise"), "build_s"] == 3.0 and math.isnan(t.loc[(1024, "layerwise"), "peak_mem_gb"])
    assert t.loc[4096, "build_s"].isna().all() and t.loc[4096, "peak_mem_gb"].isna().all()
    header, body = _md_table(_report(capsys, results=root)[1])
    col = {h: i for i, h in enumerate(header)}
    cells = {(c[col["ctx"]], c[col["impl"]]): (c[col["build s"]], c[col["peak GB"]]) for c in body}
    assert cells[("1024", "torch-eager")] == ("1.50", "20.00") and cells[("1024", "megakernel")] == ("0.12", "19.75")
    assert cells[("1024", "layerwise")] == ("3.00", "-") and cells[("4096", "megakernel")] == ("-", "-")


def test_synthetic_speedup_status_and_missing_reference(capsys, tmp_path):
    root = _store(tmp_path / "r",
                  _run(0),  # everything measured
                  # later: torch-compile alone, 20 % faster; must not change run 0's ratios
                  run_rows(impls=("torch-compile",), latency={"torch-compile": 2400.0}, when=stamp(5)),
                  # a run without torch-compile, and one whose megakernel failed
                  run_rows(impls=("layerwise",), latency={"layerwise": 2500.0}, when=stamp(7), seed=7),
                  _run(9, status={"megakernel": "failed"}, ctx=4096))
    rows = _json(capsys, results=root)
    assert len(rows) == 4 + 1 + 1 + 4
    first = [r for r in rows if r["timestamp_utc"] == stamp(0)]
    for r in first:
        assert r[SPEEDUP] == pytest.approx(LAT["torch-compile"] / LAT[r["impl"]])
    lone = next(r for r in rows if r["timestamp_utc"] == stamp(7))
    assert lone[SPEEDUP] is None and lone["latency_us_median"] == 2500.0  # NaN -> null, never a cross-run ratio
    failed = next(r for r in rows if r["status"] == "failed")
    assert failed["latency_us_median"] is None and failed[SPEEDUP] is None and failed["ctx"] == 4096
    _, out, _ = _report(capsys, "--where", "status=failed", results=root)
    header, body = _md_table(out)
    assert len(body) == 1 and body[0][header.index("latency µs median (p10–p90)")] == "-"
    assert body[0][header.index("status")] == "failed" and body[0][header.index("× torch-compile")] == "-"
    table = _csv(capsys, "--where", "impl=layerwise", results=root)
    assert table[SPEEDUP].isna().sum() == 1 and len(table) == 3


def test_markdown_csv_and_json_agree(capsys):
    csv = _csv(capsys, "--tag", "final", "--where", "model=llama3b")
    js = pd.DataFrame(_json(capsys, "--tag", "final", "--where", "model=llama3b"))
    _, body = _md_table(_report(capsys, "--tag", "final", "--where", "model=llama3b")[1])
    assert len(csv) == len(js) == len(body) == 7
    assert list(csv["impl"]) == list(js["impl"]) == [c[5] for c in body]
    assert [f"{v:.3f}" for v in csv[SPEEDUP]] == [c[10] for c in body]
    assert js["latency_us_median"].tolist() == pytest.approx(csv["latency_us_median"].tolist(), rel=1e-12)


def test_out_writes_the_file(capsys, tmp_path):
    code, out, _ = _report(capsys, "--tag", "h200-arch", "--format", "csv", "--out", tmp_path / "sub" / "t.csv")
    assert code == 0 and out.strip() == f"wrote {tmp_path / 'sub' / 't.csv'}"
    assert (tmp_path / "sub" / "t.csv").read_text() == _report(capsys, "--tag", "h200-arch", "--format", "csv")[1]


# ---------------------------------------------------------------------------------------------- compare

def test_compare_h200_with_h200_arch(capsys):
    t = _csv(capsys, "--compare", "tag:h200", "tag:h200-arch", "--gpu", "nvidia-h200")
    assert list(t.columns) == list(R.COMPARE_COLUMNS)
    assert (t["match"] == "both").sum() == 6 and (t["match"] == "only in A").sum() == 43
    assert (t["match"] == "only in B").sum() == 0
    assert list(t["match"][:6]) == ["both"] * 6  # matched points first
    raw = _raw()
    h200 = raw[raw["tag"] == "h200"]
    arch = raw[raw["tag"] == "h200-arch"]
    for r in t[t["match"] == "both"].to_dict("records"):
        key = {f: r[f] for f in POINT}
        a = h200[(h200[POINT] == pd.Series(key)).all(axis=1)].iloc[0]
        b = arch[(arch[POINT] == pd.Series(key)).all(axis=1)].iloc[0]
        assert r["latency_ratio"] == pytest.approx(b["latency_us_median"] / a["latency_us_median"], rel=1e-12)
        assert r["pct_of_copy_bw_ratio"] == pytest.approx(b["pct_of_copy_bw"] / a["pct_of_copy_bw"], rel=1e-12)
        sa = _same_run_speedup(raw, a["run_id"], a["latency_us_median"])
        sb = _same_run_speedup(raw, b["run_id"], b["latency_us_median"])
        assert r["speedup_ratio"] == pytest.approx(sb / sa, rel=1e-12)
        # the gate's threshold: 3 % + 2 * sqrt(spread_A^2 + spread_B^2)
        assert r["pct_of_copy_bw_threshold"] == pytest.approx(0.03 + 2 * math.hypot(_spread(a), _spread(b)))
        assert (r["a_tag"], r["b_tag"], r["a_gpu"], r["b_gpu"]) == ("h200", "h200-arch", H200_SLUG, H200_SLUG)
        assert r["b_clean_commit"] and not r["a_clean_commit"]
    verdicts = {(r["model"], r["impl"]): r["verdict"] for r in t[t["match"] == "both"].to_dict("records")}
    # docs/figures.md: the llama1b bf16 layerwise and megakernel speedups fell 7.6 % and 9.2 % beyond the threshold
    assert verdicts == {("llama1b", "torch-compile"): "improved", ("llama1b", "layerwise"): "REGRESSION",
                        ("llama1b", "megakernel"): "REGRESSION", ("llama8b", "torch-compile"): "ok",
                        ("llama8b", "layerwise"): "ok", ("llama8b", "megakernel"): "ok"}
    mk = t[(t["model"] == "llama1b") & (t["impl"] == "megakernel") & (t["match"] == "both")].iloc[0]
    assert mk["speedup_ratio"] - 1 == pytest.approx(-0.092, abs=5e-4) and mk["speedup_verdict"] == "REGRESSION"
    assert t.loc[t["match"] == "only in A", "verdict"].eq("only in A").all()
    assert t.loc[t["match"] == "only in A", "b_latency_us_median"].isna().all()


def test_compare_verdicts_are_the_gates(capsys):
    raw = _raw()
    t = _csv(capsys, "--compare", "tag:h200", "tag:h200-arch")
    base = G.prepare(raw[raw["tag"] == "h200"])
    cur = G.prepare(raw[raw["tag"] == "h200-arch"])
    gate = {v.label: v.verdict for v in G.compare(base, cur) if v.verdict != G.MISSING}
    mine = {G.point_label(r): r["verdict"] for r in t[t["match"] == "both"].to_dict("records")}
    assert mine == gate and len(mine) == 6


def test_compare_markdown(capsys):
    code, out, _ = _report(capsys, "--compare", "tag:h200", "tag:h200-arch", "--gpu", "nvidia-h200")
    assert code == 0
    assert "6 in both, 3 ok, 2 REGRESSION, 1 improved; 43 only in A, 0 only in B" in out
    header, body = _md_table(out)
    assert header == list(R.COMPARE_MD_HEADER) and len(body) == 49
    mk = next(c for c in body if c[1] == "llama1b" and c[5] == "megakernel" and c[6] == "model")
    assert mk[header.index("B/A × compile")] == "0.908"
    assert mk[-1].startswith("REGRESSION (") and "× -9.2% vs ±" in mk[-1]
    assert sum(c[-1] == "only in A" for c in body) == 43


def test_compare_gpus_matches_without_the_gpu(capsys):
    t = _csv(capsys, "--compare", "gpu:h100", "gpu:nvidia-h200")
    latest = {slug: G.select_runs(_raw()[_raw()["gpu_name"] == name]) for slug, name in
              ((H100_SLUG, GPU), (H200_SLUG, H200))}
    keys = {s: set(map(tuple, df[POINT].astype(str).to_numpy())) for s, df in latest.items()}
    both = keys[H100_SLUG] & keys[H200_SLUG]
    assert (t["match"] == "both").sum() == len(both) > 40  # as committed: 49 in both, 40 only on the H100
    assert (t["match"] == "only in A").sum() == len(keys[H100_SLUG] - both)
    assert (t["match"] == "only in B").sum() == len(keys[H200_SLUG] - both)
    matched = t[t["match"] == "both"]
    assert set(matched["a_gpu"]) == {H100_SLUG} and set(matched["b_gpu"]) == {H200_SLUG}
    tc = matched[(matched["model"] == "llama1b") & (matched["quant"] == "bf16") & (matched["impl"] == "torch-compile")
                 & (matched["batch"] == 1) & (matched["ctx"] == 1024)].iloc[0]
    # H200: the clean h200-arch run (1082 us); H100: the newest run, tagged final
    assert tc["b_tag"] == "h200-arch" and tc["a_tag"] == "final"
    assert tc["latency_ratio"] == pytest.approx(tc["b_latency_us_median"] / tc["a_latency_us_median"], rel=1e-12)
    # two tags measured on different GPUs are a comparison of GPUs too; two tags of one GPU are not
    t2 = _csv(capsys, "--compare", "tag:final", "tag:h200")
    tagged = {tag: set(map(tuple, _raw().loc[_raw()["tag"] == tag, POINT].astype(str).to_numpy()))
              for tag in ("final", "h200")}
    assert (t2["match"] == "both").sum() == len(tagged["final"] & tagged["h200"]) == len(tagged["h200"])
    _, out, _ = _report(capsys, "--compare", "gpu:h100", "gpu:h200")
    assert "(not the GPU: comparing GPUs)" in out and f"| {H100_SLUG} → {H200_SLUG} |" in out


def test_compare_synthetic_regression_broken_and_one_sided(capsys, tmp_path):
    root = _store(tmp_path / "r",
                  _run(0, tag="a", spread=0.004),
                  _run(10, tag="b", spread=0.004, latency={"megakernel": 2100.0 * 1.3},
                       status={"layerwise": "failed"}),
                  run_rows(impls=("torch-compile", "megakernel"), latency=LAT, ctx=4096, tag="b", when=stamp(20)))
    t = _csv(capsys, "--compare", "tag:a", "tag:b", results=root)
    v = {(r["impl"], r["ctx"]): r for r in t.to_dict("records")}
    mk = v[("megakernel", 1024)]
    assert mk["verdict"] == "REGRESSION" and mk["speedup_ratio"] == pytest.approx(1 / 1.3)
    assert mk["pct_of_copy_bw_verdict"] == mk["speedup_verdict"] == "REGRESSION"
    # spread 0.4 % on every row: %copy 3 % + 2*sqrt(2)*0.4 %, the speedup (two rows per side) 3 % + 2*2*0.4 %
    assert mk["pct_of_copy_bw_threshold"] == pytest.approx(0.03 + 2 * math.sqrt(2) * 0.004)
    assert mk["speedup_threshold"] == pytest.approx(0.03 + 2 * 2 * 0.004)
    assert v[("layerwise", 1024)]["verdict"] == "BROKEN" and v[("layerwise", 1024)]["b_status"] == "failed"
    assert v[("torch-eager", 1024)]["verdict"] == "ok"
    assert v[("megakernel", 4096)]["verdict"] == "only in B" and v[("torch-compile", 4096)]["match"] == "only in B"
    fixed = _csv(capsys, "--compare", "tag:a", "tag:b", "--threshold", "0.5", results=root)
    assert fixed.loc[fixed["impl"] == "megakernel", "verdict"].iloc[0] == "ok"


def test_compare_by_sha_on_one_gpu_keeps_the_gpu_in_the_match(capsys):
    t = _csv(capsys, "--compare", "sha:d38f", "sha:46824428")
    assert (t["match"] == "both").sum() == 6 and set(t["a_gpu"].dropna()) == {H200_SLUG}


# ---------------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("args, says", [
    (["--tag", "nope"], "no rows under"),
    (["--gpu", "h200", "--where", "batch=3"], "--where batch=3"),
    (["--where", "model"], "FIELD=VALUE"),
    (["--where", "colour=red"], "unknown field"),
    (["--where", "model=a", "--where", "model=b"], "given twice"),
    (["--compare", "tag:h200", "branch:main"], "tag:NAME, sha:PREFIX or gpu:NAME"),
    (["--compare", "tag:h200", "tag:"], "tag:NAME, sha:PREFIX or gpu:NAME"),
    (["--compare", "tag:h200", "tag:nope"], "side B tag:nope matches no rows"),
    (["--compare", "gpu:a100", "gpu:h200"], "matches no GPU"),
    (["--gpu", "h"], "matches several GPUs"),
    (["--format", "xml"], "invalid choice"),
    (["--threshold", "2"], "--threshold"),
])
def test_errors_are_one_line_and_exit_2(capsys, args, says):
    try:
        code = R.main(["--results", str(frozen_results()), *args])
    except SystemExit as e:  # argparse's own errors leave through exit(), as on the command line
        code = e.code
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.endswith("\n") and err.count("\n") == 1 and says in err, err
    assert err.startswith("python -m harness.report: ")


def test_results_folder_errors(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    for path, says in ((tmp_path / "missing", "is not a folder"), (tmp_path / "empty", "holds no result rows")):
        code, out, err = _report(capsys, results=path)
        assert code == 2 and says in err and err.count("\n") == 1


def test_cli_errors_leave_no_traceback():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    for args in (["--tag", "nope"], ["--compare", "tag:h200", "bogus"]):
        p = subprocess.run([sys.executable, "-m", "harness.report", *args], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=120)
        assert p.returncode == 2 and p.stdout == "", p.stderr
        assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr, p.stderr
