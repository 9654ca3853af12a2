"""Result rows as a table to read or hand on: one selection (a run, a tag, a filter), or two side by side.

    python -m harness.report --tag h200-arch                                   # markdown on stdout
    python -m harness.report --gpu h100 --where model=llama1b --where impl=megakernel,torch-compile --latest
    python -m harness.report --tag final --format csv --out final.csv
    python -m harness.report --compare tag:h200 tag:h200-arch --gpu nvidia-h200

Numbers come from the rows as they are, derived the way the figures and the gate derive them (harness.analysis):
same-run ratios are computed on EVERY row first, then the rows are filtered and chosen, so a filter that drops
torch-compile never drops the speedup of the rows it keeps.

    speedup_over_torch_compile = latency(torch-compile of the same run) / latency(row)   (NaN: run had none)
    pct_of_copy_bw             = achieved GB/s / copy bandwidth measured in the same process
    build_s                    = seconds from the impl's constructor to the end of its first, checked step
    peak_mem_gb                = peak GPU memory (PyTorch allocator, 1e9 bytes) while the impl was built and measured,
                                 the weights and KV cache every impl shares included (NaN: CPU, or rows before it)
    clean_commit               = the row's git sha names a commit: not "-dirty", not empty
                                 (harness.results.is_clean_sha, the rule of the gate and the figures)

`--latest` keeps one row per point as the gate chooses (harness.gate.select_runs): the newest run at a clean commit
(a git sha without "-dirty"; an empty sha is not clean), else the newest run; the tag is not part of a point.

`--compare A B`, A and B each tag:NAME, sha:PREFIX or gpu:NAME (after --gpu/--tag/--where): one row per point on
each side (the gate's rule above), matched by what was measured: model, quant, group size, batch, ctx, impl, fusion,
megakernel backend and the GPU, except when each side holds one GPU and the two differ (comparing GPUs). Ratios are
B/A. The verdict is the gate's (harness.gate.compare, B as "current", A as "baseline"): on %copy and the speedup,
threshold = 3 % (--min-threshold) + 2 * sqrt(spread_A^2 + spread_B^2) per metric (harness.gate.threshold_for), with
spread = (p90 - p10) / (2 * median) of the row, for the speedup combined with that of its run's torch-compile row
(harness.analysis); REGRESSION when B is lower by more than that, improved when higher, BROKEN when A was ok and B is
not. Points on one side only are listed as "only in A" / "only in B". Latency ratios are shown, never judged.

Exit status: 0 with a table; 2 with one sentence on stderr (no rows match, a bad --where, an unknown compare spec).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Mapping, NoReturn, Optional, Sequence

import numpy as np
import pandas as pd

from harness import analysis as A
from harness import gate as G
from harness.errors import ConfigError
from harness.figure_data import DRAWN_ORDER, FUSION_ORDER
from harness.results import is_clean_sha, load_results
from kernels import gpu_slug

PROG = "python -m harness.report"
REF = A.DEFAULT_REFERENCE
SPEEDUP = A.speedup_column(REF)
FORMATS = ("md", "csv", "json")
# --where FIELD: the gate's point fields (within a GPU; --gpu picks the GPU) and what names a run or a sweep.
WHERE_FIELDS = (*G.ONLY_FIELDS, "tag", "status", "git_sha", "run_id", "hostname")
COMPARE_KINDS = ("tag", "sha", "gpu")
# Fields two compared points must share (the gate's point, G.GATE_POINT_FIELDS), without the GPU, which is added
# unless the comparison is between GPUs.
MATCH_FIELDS = tuple(f for f in G.GATE_POINT_FIELDS if f != "gpu_slug")

# The report's columns (CSV / JSON keep these names and full precision; markdown formats them).
LIST_COLUMNS = ("gpu", "model", "quant", "group_size", "batch", "ctx", "impl", "fusion", "tag",
                "latency_us_median", "latency_us_p10", "latency_us_p90", "pct_of_copy_bw", SPEEDUP,
                "rel_err", "build_s", "peak_mem_gb", "status", "git_sha", "clean_commit", "timestamp_utc", "run_id",
                "note")
SIDE_COLUMNS = ("gpu", "tag", "git_sha", "clean_commit", "timestamp_utc", "status", "latency_us_median",
                "pct_of_copy_bw", SPEEDUP)
COMPARE_COLUMNS = ("model", "quant", "group_size", "batch", "ctx", "impl", "fusion", "mega_backend", "match",
                   *(f"a_{c}" for c in SIDE_COLUMNS), *(f"b_{c}" for c in SIDE_COLUMNS),
                   "latency_ratio", "pct_of_copy_bw_ratio", "speedup_ratio",
                   "pct_of_copy_bw_threshold", "speedup_threshold", "pct_of_copy_bw_verdict", "speedup_verdict",
                   "verdict", "note")
BOTH, ONLY_A, ONLY_B = "both", "only in A", "only in B"
# What harness.gate.compare reads of a row: the point (its label), status and note, the metrics and their spreads,
# throttling, and the tag / date / sha it names a failing point's rows by.
GATE_READS = (*MATCH_FIELDS, "gpu_name", "tag", "status", "note", "tel_throttled", "git_sha", "timestamp_utc",
              *G.METRICS, *(A.spread_column(m) for m in G.METRICS))


# ---------------------------------------------------------------------------------------------- values

def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _text(v) -> str:
    """A value as --where compares it: batch 1.0 -> "1", NaN / None -> ""."""
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        v = v.item()
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).strip()


def _field(r: Mapping, name: str) -> str:
    if name == G.MEGA_BACKEND_COLUMN:  # the gate's reading: unrecorded = the default backend, "" off the megakernel
        return _text(G.mega_backend(r))
    return _text(r.get(name))


def _natural(s) -> tuple:
    """Sort key that puts llama8b before llama70b."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", _text(s)))


def _order(v: str, known: Sequence[str]) -> tuple:
    return (known.index(v), "") if v in known else (len(known), v)


def _sort(df: pd.DataFrame, first: str = "gpu", last: str = "timestamp_utc") -> pd.DataFrame:
    """Rows in reading order: `first`, model, quant, batch, ctx, impl (references first), fusion, then `last`."""
    def key(r: Mapping) -> tuple:
        return (_text(r.get(first)), _natural(r.get("model")), _text(r.get("quant")), _natural(r.get("group_size")),
                _natural(r.get("batch")), _natural(r.get("ctx")), _order(_text(r.get("impl")), DRAWN_ORDER),
                _order(_text(r.get("fusion")), FUSION_ORDER), _text(r.get(last)))
    recs = df.to_dict("records")
    return df.iloc[sorted(range(len(recs)), key=lambda i: key(recs[i]))].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------- selection

def load_rows(results: str | Path) -> pd.DataFrame:
    """Every row under `results` with its same-run ratios and spreads (computed before any filter) and `gpu_slug`."""
    results = Path(results)
    if not results.is_dir():
        raise ConfigError(f"--results {results} is not a folder; give the results root (it holds <gpu-slug>/*.parquet)")
    rows = load_results(results)
    if rows.empty:
        raise ConfigError(f"--results {results} holds no result rows (<gpu-slug>/*.parquet); measure first with run.py")
    return A.with_gpu_slug(A.add_same_run_ratios(rows))


def parse_where(specs: Sequence[str]) -> dict[str, set[str]]:
    """["model=llama1b", "quant=bf16,int4"] -> {"model": {"llama1b"}, "quant": {"bf16", "int4"}}."""
    out: dict[str, set[str]] = {}
    for s in specs:
        name, sep, values = s.partition("=")
        name = name.strip()
        vals = {v.strip() for v in values.split(",") if v.strip()}
        if not sep or not name or not vals:
            raise ConfigError(f"--where {s!r} is not FIELD=VALUE[,VALUE...]; write e.g. --where quant=bf16,int4")
        if name not in WHERE_FIELDS:
            raise ConfigError(f"--where {s!r} names an unknown field; FIELD is one of {', '.join(WHERE_FIELDS)}")
        if name in out:
            raise ConfigError(f"--where {name} is given twice; list every value in one: --where {name}=A,B")
        out[name] = vals
    return out


def _present(df: pd.DataFrame, field: str) -> str:
    vals = sorted({_field(r, field) for r in df.to_dict("records")} - {""}, key=_natural)
    return ", ".join(vals) if vals else "none"


def _match(df: pd.DataFrame, field: str, values: set[str]) -> pd.DataFrame:
    if field == "git_sha":  # a commit is named by a prefix of its sha, as git does
        keep = [any(_field(r, field).lower().startswith(v.lower()) for v in values) for r in df.to_dict("records")]
    elif field == G.MEGA_BACKEND_COLUMN:  # as the gate's --only: choosing a backend keeps the references' rows
        keep = [_field(r, field) in values or G.mega_backend(r) is None for r in df.to_dict("records")]
    else:
        keep = [_field(r, field) in values for r in df.to_dict("records")]
    return df[keep]


def select(df: pd.DataFrame, tag: Optional[str] = None, gpu: Optional[str] = None,
           where: Optional[Mapping[str, set[str]]] = None, source: str = "results") -> pd.DataFrame:
    """The rows of `df` (as load_rows returns them) with that tag, GPU and --where values; raises ConfigError when a
    filter leaves none, naming the values that filter could have matched."""
    if gpu is not None:
        df = df[df["gpu_slug"] == G.resolve_gpu(df, gpu)]
    filters = ([("tag", {tag}, f"--tag {tag}")] if tag is not None else []) + \
        [(f, v, f"--where {f}={','.join(sorted(v))}") for f, v in (where or {}).items()]
    for field, values, flag in filters:
        kept = _match(df, field, values)
        if kept.empty:
            gpu_note = f" of GPU {df['gpu_slug'].iloc[0]}" if gpu is not None and len(df) else ""
            raise ConfigError(f"no rows under {source}{gpu_note} match {flag} ({field} there: {_present(df, field)})")
        df = kept
    return df.reset_index(drop=True)


def latest(df: pd.DataFrame) -> pd.DataFrame:
    """One row per point, chosen as the gate chooses (harness.gate.select_runs)."""
    return G.select_runs(df).drop(columns="gate_key")


# ---------------------------------------------------------------------------------------------- tables

def _sha_clean(sha) -> bool:
    return is_clean_sha(sha if isinstance(sha, str) else None)


def report_table(df: pd.DataFrame) -> pd.DataFrame:
    """LIST_COLUMNS for each row of `df`, in reading order."""
    out = pd.DataFrame({c: df[c] if c in df.columns else np.nan for c in LIST_COLUMNS}, index=df.index)
    out["gpu"] = df["gpu_slug"]
    out["git_sha"] = [_text(s) for s in out["git_sha"]]
    out["clean_commit"] = [_sha_clean(s) for s in out["git_sha"]]
    out["note"] = [_text(s) for s in out["note"]]
    return _sort(out.reset_index(drop=True))


def parse_spec(spec: str) -> tuple[str, str]:
    kind, sep, value = spec.partition(":")
    if not sep or kind not in COMPARE_KINDS or not value.strip():
        raise ConfigError(f"--compare {spec!r} is not a known selection; write tag:NAME, sha:PREFIX or gpu:NAME")
    return kind, value.strip()


def compare_side(df: pd.DataFrame, spec: str, side: str, source: str = "results") -> pd.DataFrame:
    """The rows of one --compare side, one per point (the gate's choice)."""
    kind, value = parse_spec(spec)
    if kind == "gpu":
        rows = df[df["gpu_slug"] == G.resolve_gpu(df, value, f"--compare side {side} {spec}")]
    elif kind == "tag":
        rows = _match(df, "tag", {value})
    else:
        rows = _match(df, "git_sha", {value})
    if rows.empty:
        field = {"tag": "tag", "sha": "git_sha"}[kind]
        raise ConfigError(f"--compare side {side} {spec} matches no rows under {source} "
                          f"({field} there: {_present(df, field)})")
    return latest(rows.reset_index(drop=True))


def _match_key(r: Mapping, with_gpu: bool) -> str:
    fields = dict(zip(G.GATE_POINT_FIELDS, json.loads(G.gate_key(r))))
    names = G.GATE_POINT_FIELDS if with_gpu else MATCH_FIELDS
    return json.dumps([fields[f] for f in names], default=str)


def compares_gpus(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """True when each side holds one GPU and they differ: the points are then matched without the GPU."""
    ga, gb = set(a["gpu_slug"]), set(b["gpu_slug"])
    return len(ga) == 1 and len(gb) == 1 and ga != gb


def compare_table(a: pd.DataFrame, b: pd.DataFrame, threshold: str | float = "auto",
                  min_threshold: float = G.MIN_THRESHOLD) -> pd.DataFrame:
    """COMPARE_COLUMNS for every point of `a` and `b` (each one row per point, as compare_side returns them)."""
    with_gpu = not compares_gpus(a, b)
    sides = {}
    for name, df in (("a", a), ("b", b)):
        recs = df.to_dict("records")
        sides[name] = {_match_key(r, with_gpu): r for r in recs}
    ka, kb = sides["a"], sides["b"]
    out = []
    for key in list(ka) + [k for k in kb if k not in ka]:
        ra, rb = ka.get(key), kb.get(key)
        first = ra or rb
        row = {f: first.get(f) for f in ("model", "quant", "group_size", "batch", "ctx", "impl", "fusion")}
        row["mega_backend"] = G.mega_backend(first)
        row["match"] = BOTH if ra and rb else ONLY_A if ra else ONLY_B
        for p, r in (("a", ra), ("b", rb)):
            for c in SIDE_COLUMNS:
                src = {"gpu": "gpu_slug"}.get(c, c)
                row[f"{p}_{c}"] = None if r is None else r.get(src)
            row[f"{p}_git_sha"] = None if r is None else _text(r.get("git_sha"))
            row[f"{p}_clean_commit"] = None if r is None else _sha_clean(row[f"{p}_git_sha"])
        row["latency_ratio"] = _ratio(rb, ra, "latency_us_median")
        row["pct_of_copy_bw_ratio"] = _ratio(rb, ra, "pct_of_copy_bw")
        row["speedup_ratio"] = _ratio(rb, ra, SPEEDUP)
        row["pct_of_copy_bw_threshold"] = row["speedup_threshold"] = math.nan
        row["pct_of_copy_bw_verdict"] = row["speedup_verdict"] = None
        if ra and rb:
            # The gate's own comparison of this one point: B plays "current", A "baseline".
            # (only the columns the gate reads: a one-row frame of every column is slow to build and read back)
            one = lambda r: pd.DataFrame([{**{c: r.get(c) for c in GATE_READS}, "gate_key": "point"}])  # noqa: E731
            v = G.compare(one(ra), one(rb), threshold, min_threshold)[0]
            for d in v.deltas:
                m = "pct_of_copy_bw" if d.metric == "pct_of_copy_bw" else "speedup"
                row[f"{m}_threshold"], row[f"{m}_verdict"] = d.threshold, d.verdict
            row["verdict"], row["note"] = v.verdict, v.note
        else:
            row["verdict"], row["note"] = row["match"], ""
        out.append(row)
    table = pd.DataFrame(out, columns=list(COMPARE_COLUMNS))
    if table.empty:
        return table
    # matched points first, then those of one side only; within each, the reading order of a list
    table["_key"] = [f"{(BOTH, ONLY_A, ONLY_B).index(m)} {_text(a) or _text(b)}"
                     for m, a, b in zip(table["match"], table["a_gpu"], table["b_gpu"])]
    return _sort(table, first="_key", last="a_timestamp_utc").drop(columns="_key")


def _ratio(num: Optional[Mapping], den: Optional[Mapping], col: str) -> float:
    if num is None or den is None:
        return math.nan
    n, d = _num(num.get(col)), _num(den.get(col))
    return n / d if d > 0 and not math.isnan(n) else math.nan


# ---------------------------------------------------------------------------------------------- rendering

def _f(v, fmt: str) -> str:
    x = _num(v)
    return "-" if math.isnan(x) else format(x, fmt)


def _short_sha(sha) -> str:
    sha = _text(sha)
    return (sha[:12] + ("-dirty" if sha.endswith("-dirty") else "")) if sha else "-"


def _latency(r: Mapping) -> str:
    med = _num(r.get("latency_us_median"))
    if math.isnan(med):
        return "-"
    return f"{med:.1f} ({_f(r.get('latency_us_p10'), '.1f')}–{_f(r.get('latency_us_p90'), '.1f')})"


def _when(ts) -> str:
    return _text(ts)[:16].replace("T", " ") or "-"


def _impl(r: Mapping) -> str:
    b = G.mega_backend(r)
    return _text(r.get("impl")) + (f" ({b})" if b not in (None, G.DEFAULT_MEGA_BACKEND) else "")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def cell(s) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


LIST_MD_HEADER = ("GPU", "model", "quant", "batch", "ctx", "impl", "fusion", "tag", "latency µs median (p10–p90)",
                  "% copy", "× torch-compile", "rel_err", "build s", "peak GB", "status", "git sha", "clean",
                  "measured (UTC)")


def list_markdown(table: pd.DataFrame, title: str) -> str:
    rows = [(r["gpu"], r["model"], A.quant_label(r["quant"], r["group_size"]), _text(r["batch"]), _text(r["ctx"]),
             _impl(r), _text(r["fusion"]), _text(r["tag"]), _latency(r), _f(r["pct_of_copy_bw"], ".1f"),
             _f(r[SPEEDUP], ".3f"), _f(r["rel_err"], ".2e"), _f(r["build_s"], ".2f"), _f(r["peak_mem_gb"], ".2f"),
             _text(r["status"]), _short_sha(r["git_sha"]),
             "yes" if r["clean_commit"] else "no", _when(r["timestamp_utc"]))
            for r in table.to_dict("records")]
    foot = ("× torch-compile = latency(torch-compile) / latency(row), torch-compile of the same run (- when that run "
            "has none); % copy = achieved GB/s over the copy bandwidth measured in the same process; build s = the "
            "impl's constructor and first checked step; peak GB = peak GPU memory while the impl was built and "
            "measured, shared weights and KV cache included (- on a CPU or where not recorded); clean = a git sha "
            "without -dirty.")
    return f"{title}\n\n{markdown_table(LIST_MD_HEADER, rows)}\n\n{foot}\n"


COMPARE_MD_HEADER = ("GPU", "model", "quant", "batch", "ctx", "impl", "fusion", "A µs", "B µs", "B/A µs",
                     "A % copy", "B % copy", "B/A % copy", "A × compile", "B × compile", "B/A × compile", "verdict")


def _verdict(r: Mapping) -> str:
    """"REGRESSION (%copy -0.1% vs ±3.7%, × -7.6% vs ±4.0%)": each judged metric's change and threshold."""
    parts = [f"{name} {(_num(r[f'{m}_ratio']) - 1) * 100:+.1f}% vs ±{_num(r[f'{m}_threshold']) * 100:.1f}%"
             for name, m in (("%copy", "pct_of_copy_bw"), ("×", "speedup")) if isinstance(r[f"{m}_verdict"], str)]
    extra = ", ".join(parts + ([r["note"]] if _text(r["note"]) else []))
    return r["verdict"] + (f" ({extra})" if extra else "")


def compare_markdown(table: pd.DataFrame, title: str) -> str:
    rows = []
    for r in table.to_dict("records"):
        gpus = {g for g in (r["a_gpu"], r["b_gpu"]) if isinstance(g, str)}
        rows.append((" → ".join([r["a_gpu"], r["b_gpu"]]) if len(gpus) > 1 else gpus.pop(), r["model"],
                     A.quant_label(r["quant"], r["group_size"]), _text(r["batch"]), _text(r["ctx"]), _impl(r),
                     _text(r["fusion"]), _f(r["a_latency_us_median"], ".1f"), _f(r["b_latency_us_median"], ".1f"),
                     _f(r["latency_ratio"], ".3f"), _f(r["a_pct_of_copy_bw"], ".1f"),
                     _f(r["b_pct_of_copy_bw"], ".1f"), _f(r["pct_of_copy_bw_ratio"], ".3f"),
                     _f(r[f"a_{SPEEDUP}"], ".3f"), _f(r[f"b_{SPEEDUP}"], ".3f"), _f(r["speedup_ratio"], ".3f"),
                     _verdict(r)))
    foot = ("B/A: ratio of B to A. Verdict: the regression gate's rule (harness.gate) on % copy and × compile with B "
            "as current and A as baseline: threshold = 3% + 2·sqrt(spread_A² + spread_B²) per metric (shown as ±), "
            "spread = (p90 - p10) / (2 · median); latency itself is not judged (it moves with clocks and drivers).")
    return f"{title}\n\n{markdown_table(COMPARE_MD_HEADER, rows)}\n\n{foot}\n"


def _plain(v):
    """A JSON value: numpy scalars -> Python, NaN -> null."""
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def render(table: pd.DataFrame, fmt: str, title: str, markdown) -> str:
    if fmt == "csv":
        return table.to_csv(index=False)
    if fmt == "json":
        return json.dumps([{k: _plain(v) for k, v in r.items()} for r in table.to_dict("records")], indent=1) + "\n"
    return markdown(table, title)


def _describe(df: pd.DataFrame) -> str:
    shas = sorted({_short_sha(s) for s in df.get("git_sha", pd.Series(dtype=str))} - {"-"})
    return (f"GPU {', '.join(sorted(set(df['gpu_slug'])))}; tag {', '.join(sorted({_text(t) for t in df['tag']}))}; "
            f"measured {A.measurement_dates(df) or '-'}; git {', '.join(shas) or 'unknown'}")


# ---------------------------------------------------------------------------------------------- command

class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, as every other error of this command
        self.exit(2, f"{PROG}: {message}; see {PROG} --help\n")


def _threshold(s: str) -> str | float:
    if s == "auto":
        return s
    v = _num(s)
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"--threshold {s!r}: give auto or a relative threshold such as 0.05")
    return v


def build_parser() -> argparse.ArgumentParser:
    # the whole docstring: which row --latest keeps and how --compare matches and judges belong in --help
    p = _Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog="README.md, 'Reports', has examples.")
    p.add_argument("--results", default="results", help="results root (<root>/<gpu-slug>/*.parquet); default results")
    p.add_argument("--tag", default=None, help="only rows with this results.tag")
    p.add_argument("--gpu", default=None, metavar="NAME_OR_SLUG",
                   help="only this GPU: name, slug, or a part of one slug (h100)")
    p.add_argument("--where", action="append", default=[], metavar="FIELD=V[,V]",
                   help=f"only rows with one of these values (repeatable; git_sha by prefix); FIELD: "
                        f"{', '.join(WHERE_FIELDS)}")
    p.add_argument("--latest", action="store_true",
                   help="one row per point: the newest at a clean commit, else the newest (the gate's choice)")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), default=None,
                   help="two selections side by side, each tag:NAME, sha:PREFIX or gpu:NAME; ratios are B/A")
    p.add_argument("--threshold", type=_threshold, default="auto",
                   help="--compare verdict: auto (the gate's, from measured noise) or a fixed relative one, e.g. 0.05")
    p.add_argument("--min-threshold", type=float, default=G.MIN_THRESHOLD, help="floor of the auto threshold")
    p.add_argument("--format", choices=FORMATS, default="md", help="md (default), csv or json")
    p.add_argument("--out", default=None, metavar="FILE", help="write to FILE instead of stdout")
    return p


def run(a: argparse.Namespace) -> str:
    """The report's text for parsed arguments; raises ConfigError on a usage error."""
    where = parse_where(a.where)
    for spec in a.compare or ():
        parse_spec(spec)  # a bad spec fails before any file is read
    df = select(load_rows(a.results), a.tag, a.gpu, where, source=str(a.results))
    if a.compare:
        sa, sb = a.compare
        side_a, side_b = compare_side(df, sa, "A", str(a.results)), compare_side(df, sb, "B", str(a.results))
        table = compare_table(side_a, side_b, a.threshold, a.min_threshold)
        by = "model, quant, group size, batch, ctx, impl, fusion" + \
            (" (not the GPU: comparing GPUs)" if compares_gpus(side_a, side_b) else " and GPU")
        counts = table["match"].value_counts()
        verdicts = table.loc[table["match"] == BOTH, "verdict"].value_counts()
        title = (f"# Compare A = {sa} with B = {sb}\n\n"
                 f"- A: {len(side_a)} points ({_describe(side_a)})\n- B: {len(side_b)} points ({_describe(side_b)})\n"
                 f"- matched by {by}: {counts.get(BOTH, 0)} in both"
                 + "".join(f", {n} {k}" for k, n in verdicts.items())
                 + f"; {counts.get(ONLY_A, 0)} only in A, {counts.get(ONLY_B, 0)} only in B")
        return render(table, a.format, title, compare_markdown)
    if a.latest:
        df = latest(df)
    table = report_table(df)
    title = f"# {len(table)} {'points (newest of each)' if a.latest else 'rows'}: {_describe(df)}"
    return render(table, a.format, title, list_markdown)


def main(argv: Optional[Sequence[str]] = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        text = run(a)
        if a.out:
            try:
                Path(a.out).parent.mkdir(parents=True, exist_ok=True)
                Path(a.out).write_text(text)
            except OSError as e:
                raise ConfigError(f"--out {a.out} cannot be written ({e.strerror or e}); give a writable file path")
            print(f"wrote {a.out}")
        else:
            sys.stdout.write(text)
    except ConfigError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
