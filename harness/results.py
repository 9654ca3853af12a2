"""Tidy result rows on disk: one parquet file per append, one folder per GPU.

Layout: <root>/<gpu_slug>/<UTC timestamp>-<pid>-<random>.parquet. Every `append` writes a NEW
file (temp name, then atomic rename), so concurrent processes (Hydra multirun with the joblib
launcher, one process per GPU) never lose or clobber each other's rows. `compact` merges one GPU's
files into one, deduplicating on `row_id`; `load` also deduplicates on `row_id`, so a compaction
interrupted between writing the merged file and deleting its inputs loses and duplicates nothing.

Nested row values (dicts, lists: e.g. the resolved config) are stored as JSON strings in a column
named `<name>_json` (`config` -> `config_json`).

Folders under <root> that are not GPUs (`baselines/`, `figures/`: NON_GPU_DIRS) are never read as
result rows. `load` gives every row a `run_id` (the rows of one `run_point` call share it): the
row's own `run_id` where it has one, otherwise one derived from what the rows of one run share
(RUN_KEY_FIELDS: host, timestamp, same-process copy bandwidth, resolved config), which survives
compaction; `load(with_source=True)` adds `source_file`, the file a row was read from.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import secrets
import socket
import subprocess
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Optional

import pandas as pd

from kernels import gpu_slug

REPO_ROOT = Path(__file__).resolve().parent.parent

# Fields that identify a measurement point (what a resumed sweep must not measure again).
POINT_KEY_FIELDS = ("model", "quant", "group_size", "impl", "fusion", "batch", "ctx", "tag", "gpu_name", "extra")
POINT_KEY_LEN = 16  # hex chars of sha256: 64 bits, ample for a sweep's points

# What the rows of one run_point call share and no two runs do (the copy bandwidth is measured
# afresh in every run): the fields a missing `run_id` is derived from.
RUN_KEY_FIELDS = ("hostname", "timestamp_utc", "copy_tbps", "config_json", "git_sha")

# Folders under a results root that hold no result rows.
NON_GPU_DIRS = frozenset({"baselines", "figures"})


# ----------------------------------------------------------------------------------------------
# Environment
# ----------------------------------------------------------------------------------------------

def env_info(device: Any) -> dict:
    """What a result row needs to say about where it was measured (never raises)."""
    import torch

    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if dev.type == "cuda" and torch.cuda.is_available():
        gpu_name = torch.cuda.get_device_name(dev)
        gpu_count = torch.cuda.device_count()
    else:
        gpu_name = f"cpu: {platform.processor() or platform.machine()}"
        gpu_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return {
        "gpu_name": gpu_name,
        "gpu_count": gpu_count,
        "driver_version": _driver_version(),
        "cuda_version": torch.version.cuda or "",
        "torch_version": torch.__version__,
        "triton_version": _dist_version("triton"),
        "python_version": platform.python_version(),
        "hostname": socket.gethostname(),
        "git_sha": git_sha(),
        "timestamp_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _dist_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return ""


def _driver_version() -> str:
    try:
        import pynvml
    except ImportError:
        return ""
    try:
        pynvml.nvmlInit()
    except Exception:
        return ""
    try:
        v = pynvml.nvmlSystemGetDriverVersion()
        return v.decode() if isinstance(v, bytes) else str(v)
    except Exception:
        return ""
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


COMMIT_MANIFEST = ".commit-manifest"  # written by `python -m harness.results --manifest` before a remote run


def _blob_sha(path: Path, mode: str) -> str:
    """The git blob id of a file as it is on disk (a symbolic link's blob is its target)."""
    data = os.readlink(path).encode() if mode == "120000" else path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def write_commit_manifest(repo: Path = REPO_ROOT) -> Path:
    """Writes <repo>/.commit-manifest: HEAD's sha and `git ls-files -s` (mode, blob id, path of every tracked
    file). A copy of the tree sent elsewhere with stale git metadata can then prove which commit it is."""
    sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                         check=True).stdout.strip()
    files = subprocess.run(["git", "-C", str(repo), "ls-files", "-s"], capture_output=True, text=True,
                           check=True).stdout
    path = Path(repo) / COMMIT_MANIFEST
    path.write_text(f"commit {sha}\n{files}")
    return path


def manifest_sha(repo: Path = REPO_ROOT) -> Optional[str]:
    """The manifest's commit if every file it lists is on disk with the blob id it lists, that commit + "-dirty"
    if not; None without a manifest."""
    path = Path(repo) / COMMIT_MANIFEST
    if not path.is_file():
        return None
    lines = path.read_text().splitlines()
    sha = lines[0].split()[1]
    for line in lines[1:]:
        meta, _, name = line.partition("\t")
        mode, blob = meta.split()[:2]
        f = Path(repo) / name
        if mode == "160000":  # a submodule: not checked
            continue
        if not (f.is_file() or f.is_symlink()) or _blob_sha(f, mode) != blob:
            return sha + "-dirty"
    return sha


def git_sha(repo: Path = REPO_ROOT) -> str:
    """The commit of the code that runs: from .commit-manifest when there is one (a copy of the tree on another
    machine, whose .git may be stale), else HEAD's sha; "-dirty" if tracked files differ from it; "" if neither
    a manifest nor a git checkout."""
    from_manifest = manifest_sha(repo)
    if from_manifest is not None:
        return from_manifest

    def git(*args: str) -> Optional[str]:
        try:
            p = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return p.stdout if p.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    if not sha:
        return ""
    status = git("status", "--porcelain", "--untracked-files=no")
    return sha.strip() + ("-dirty" if status and status.strip() else "")


# ----------------------------------------------------------------------------------------------
# Point identity
# ----------------------------------------------------------------------------------------------

def _norm(v: Any) -> Any:
    """A JSON-able canonical form: numpy scalars -> Python, NaN -> None, 128.0 -> 128."""
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        with contextlib.suppress(Exception):
            v = v.item()
    if v is None:
        return None
    if isinstance(v, bool):
        return v
    if isinstance(v, float):
        if math.isnan(v):
            return None
        if v.is_integer():
            return int(v)
        return v
    if isinstance(v, (int, str)):
        return v
    try:
        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    return str(v)


def point_key(d: dict) -> str:
    """Stable short hash of a point's identity fields (POINT_KEY_FIELDS); missing fields count as None."""
    ident = [[f, _norm(d.get(f))] for f in POINT_KEY_FIELDS]
    blob = json.dumps(ident, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:POINT_KEY_LEN]


def run_key(d: dict) -> Optional[str]:
    """Short hash of a row's RUN_KEY_FIELDS (the run it belongs to); None if it has none of them."""
    ident = [[f, _norm(d.get(f))] for f in RUN_KEY_FIELDS]
    if all(v is None for _, v in ident):
        return None
    blob = json.dumps(ident, separators=(",", ":"), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:POINT_KEY_LEN]


# ----------------------------------------------------------------------------------------------
# Store
# ----------------------------------------------------------------------------------------------

def _is_nested(v: Any) -> bool:
    return isinstance(v, (dict, list, tuple, set))


def _json_default(o: Any) -> Any:
    if isinstance(o, set):
        return sorted(o, key=str)
    with contextlib.suppress(Exception):
        return o.item()
    return str(o)


def _prepare_frame(rows: list[dict]) -> pd.DataFrame:
    """Rows -> DataFrame with row_id and point_key assigned, nested values as JSON strings."""
    out = []
    for r in rows:
        r = dict(r)
        if not r.get("row_id"):
            r["row_id"] = uuid.uuid4().hex
        if not r.get("point_key"):
            r["point_key"] = point_key(r)
        out.append(r)
    nested_cols = {k for r in out for k, v in r.items() if _is_nested(v)}
    for r in out:
        for k in nested_cols:
            if k not in r:
                continue
            v = r.pop(k)
            name = k if k.endswith("_json") else f"{k}_json"
            if name != k and name in r:
                raise ValueError(f"row has both {k!r} (nested) and {name!r}; keep only one of them")
            r[name] = None if v is None else json.dumps(v, sort_keys=True, default=_json_default)
    df = pd.DataFrame.from_records(out)
    for col in df.columns:
        if df[col].dtype == object:
            kinds = {type(v) for v in df[col] if v is not None and not (isinstance(v, float) and math.isnan(v))}
            if len(kinds) > 1 and not kinds <= {int, float}:
                # Mixed types (e.g. str and int) cannot form one parquet column: keep them as text.
                df[col] = [None if (v is None or (isinstance(v, float) and math.isnan(v))) else str(v) for v in df[col]]
    return df


def _stamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def _write_atomic(df: pd.DataFrame, folder: Path, suffix: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{_stamp()}-{os.getpid()}-{secrets.token_hex(4)}{suffix}.parquet"
    final = folder / name
    tmp = folder / f".{name}.tmp"
    try:
        df.to_parquet(tmp, index=False)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return final


class ResultsStore:
    """Append-only parquet store of result rows, one folder per GPU (see module docstring)."""

    def __init__(self, root: str | os.PathLike = "results"):
        self.root = Path(root)

    def _folders(self, gpu: Optional[str]) -> list[Path]:
        if gpu is not None:
            return [self.root / gpu_slug(gpu)]
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and p.name not in NON_GPU_DIRS)

    def files(self, gpu: Optional[str] = None) -> list[Path]:
        """Result files (all GPUs, or one GPU by name or slug), oldest first."""
        out: list[Path] = []
        for folder in self._folders(gpu):
            if folder.is_dir():
                out += sorted(p for p in folder.glob("*.parquet") if not p.name.startswith("."))
        return out

    def append(self, rows: Iterable[dict]) -> Optional[Path]:
        """Writes the rows as one new file under root/<gpu_slug>/ and returns its path (None if no rows).

        All rows must come from one GPU (their `gpu_name`); `row_id` (uuid) and `point_key` are
        filled in where missing.
        """
        rows = list(rows)
        if not rows:
            return None
        slugs = {gpu_slug(r.get("gpu_name")) for r in rows}
        if len(slugs) > 1:
            raise ValueError(f"append() got rows from several GPUs {sorted(slugs)}; append each GPU's rows separately")
        return _write_atomic(_prepare_frame(rows), self.root / slugs.pop())

    def _read(self, files: list[Path], source: bool = False) -> pd.DataFrame:
        """The rows of `files`; with source=True, a `source_file` column (path relative to root)."""
        frames = []
        for f in files:
            df = pd.read_parquet(f)
            if source and len(df):
                df["source_file"] = f.relative_to(self.root).as_posix() if f.is_relative_to(self.root) else str(f)
            frames.append(df)
        frames = [f for f in frames if len(f)]
        if not frames:
            return pd.DataFrame()
        return pd.concat(frames, ignore_index=True, sort=False)

    def load(self, gpu: Optional[str] = None, *, with_source: bool = False) -> pd.DataFrame:
        """All rows (of every GPU, or of one GPU by name or slug); empty DataFrame if none.

        Every row gets a `run_id` (see the module docstring); with_source=True adds `source_file`.
        """
        for _ in range(5):
            try:
                df = self._read(self.files(gpu), source=True)
                break
            except FileNotFoundError:  # a concurrent compact() removed a file we listed: list again
                continue
        else:
            df = self._read(self.files(gpu), source=True)
        if "row_id" in df.columns:
            dup = df["row_id"].notna() & df["row_id"].duplicated()
            df = df[~dup].reset_index(drop=True)
        if len(df):
            df = _with_run_id(df)
            if not with_source:
                df = df.drop(columns="source_file")
        return df

    def done_keys(self, gpu: Optional[str] = None) -> set[str]:
        """point_key of every stored row (to skip points of an interrupted sweep on resume)."""
        df = self.load(gpu)
        if df.empty:
            return set()
        if "point_key" in df.columns:
            return {str(k) for k in df["point_key"].dropna()}
        return {point_key(r) for r in df.to_dict("records")}

    def compact(self, gpu: str) -> Optional[Path]:
        """Merges one GPU's files into one file, each row_id once; returns it (None if no files)."""
        folder = self.root / gpu_slug(gpu)
        if not folder.is_dir():
            return None
        with _folder_lock(folder):
            files = self.files(gpu)
            if not files:
                return None
            df = self._read(files)
            if df.empty:
                merged = None
            else:
                df["row_id"] = df["row_id"].astype(object) if "row_id" in df.columns else None
                missing = df["row_id"].isna()
                df.loc[missing, "row_id"] = [uuid.uuid4().hex for _ in range(int(missing.sum()))]
                df = df.drop_duplicates("row_id").reset_index(drop=True)
                merged = _write_atomic(df, folder, suffix="-compact")
            for f in files:  # only the files merged above; rows appended meanwhile stay in theirs
                with contextlib.suppress(FileNotFoundError):
                    f.unlink()
            return merged


def _with_run_id(df: pd.DataFrame) -> pd.DataFrame:
    """Fills `run_id` where missing: from RUN_KEY_FIELDS, or (rows without any) from `source_file`."""
    df = df.copy()
    given = df["run_id"].astype(object) if "run_id" in df.columns else pd.Series([None] * len(df), index=df.index)
    present = [f for f in RUN_KEY_FIELDS if f in df.columns]
    derived = [run_key(r) for r in df[present].to_dict("records")] if present else [None] * len(df)
    sources = df["source_file"].tolist() if "source_file" in df.columns else [None] * len(df)
    out = []
    for g, d, src in zip(given.tolist(), derived, sources):
        if g is not None and not (isinstance(g, float) and math.isnan(g)) and g != "":
            out.append(str(g))
        elif d is not None:
            out.append(d)
        else:
            out.append("file:" + str(src))
    df["run_id"] = out
    return df


@contextlib.contextmanager
def _folder_lock(folder: Path):
    """Exclusive advisory lock on <folder>/.lock (so two compactions never interleave)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock; load() still deduplicates on row_id
        yield
        return
    with open(folder / ".lock", "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def load_results(root: str | os.PathLike = "results", gpu: Optional[str] = None, *,
                 with_source: bool = False) -> pd.DataFrame:
    """All result rows under `root` (optionally one GPU's); empty DataFrame if none."""
    return ResultsStore(root).load(gpu, with_source=with_source)


def decode_json(df: pd.DataFrame, column: str = "config_json") -> pd.Series:
    """The JSON strings of `column` parsed back into Python objects (None where null)."""
    return df[column].map(lambda s: None if s is None or (isinstance(s, float) and math.isnan(s)) else json.loads(s))


__all__ = [
    "NON_GPU_DIRS", "POINT_KEY_FIELDS", "RUN_KEY_FIELDS", "ResultsStore", "decode_json", "env_info", "git_sha",
    "gpu_slug", "load_results", "point_key", "run_key",
]


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Result-store helpers.")
    ap.add_argument("--manifest", action="store_true",
                    help=f"write {COMMIT_MANIFEST} (HEAD and its tracked files' blob ids) before running elsewhere")
    ap.add_argument("--sha", action="store_true", help="print the commit rows written here would record")
    a = ap.parse_args()
    if a.manifest:
        print(write_commit_manifest())
    if a.sha or not a.manifest:
        print(git_sha())
