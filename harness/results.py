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
compaction; `load(with_source=True)` adds `source_file`, the file a row was read from. `load` also gives every row
a boolean `clean`: whether the code that measured it was a clean commit (`is_clean_sha` of its `git_sha`, the one
definition the gate, the report and the figures use). A row is not clean when its sha ends in "-dirty" (tracked
files differed from HEAD, or from the commit that .commit-manifest names) or is empty (no commit known).

Resume: a row's `point_key` hashes everything that changes its measurement (POINT_KEY_FIELDS); `done_keys` gives
the keys of rows whose status means "measured" (DONE_STATUSES: a failed point is retried). Two processes
measuring the same points into one store take a claim per key first (`claim` / `release`: a file
<root>/<gpu_slug>/.claims/<key>.claim created with O_EXCL), so that each point is measured once.
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

# Fields that identify a measurement point: everything that changes what is measured (what a resumed sweep must not
# measure again, and must measure again when it differs). model_id: the model's content (checkpoint_id for a local
# checkpoint, so that two checkpoints in directories of one name never share a key); mega_config: the megakernel's
# schedule, programs per SM, tile options and (when not "triton", the only backend rows from before its column ran)
# the backend that ran (megakernel.backend=auto resolved) as JSON, None for impls that do not read them; extra: free,
# unused here.
POINT_KEY_FIELDS = ("model", "model_id", "quant", "group_size", "impl", "fusion", "mega_config", "batch", "ctx",
                    "seed", "cache_fill", "cuda_graphs", "tag", "gpu_name", "extra")
# Statuses of a point that resume skips: measured (ok, or timed but numerically wrong), or refused by the impl's own
# rule for this configuration. "failed" (and anything else) is measured again.
DONE_STATUSES = ("ok", "wrong", "unsupported")
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
# Tracked files that runs write (committed measurements: timelines overwrite theirs in place). They are data, not the
# code that ran, so a change under them does not make a tree dirty: otherwise the second timeline of one call would
# record "-dirty" because the first rewrote a committed table.
OUTPUT_DIR = "results/"


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


def snapshot_commit(rev: str, dest: Path, repo: Path = REPO_ROOT) -> str:
    """Writes the code of commit `rev` into the new directory `dest` with its own .commit-manifest, so that rows
    measured from that copy record `rev` (clean) in the same run as the checkout's own: a same-call A/B of two commits
    (copy `dest` to the GPU machine beside the tree, run `scripts/gpu_session.sh` from inside it). Measurements
    (OUTPUT_DIR) are left out: a snapshot holds code. Returns the commit's full sha; raises ValueError with one
    sentence for a revision git does not know or a `dest` that exists and is not empty."""
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ValueError(f"{dest} exists and is not an empty directory; give a new path for the snapshot")
    got = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
                         capture_output=True, text=True)
    if got.returncode != 0:
        raise ValueError(f"{rev!r} is not a commit of {repo}; give a sha, tag or branch that `git log` shows")
    sha = got.stdout.strip()
    listing = subprocess.run(["git", "-C", str(repo), "ls-tree", "-r", "--full-tree", sha], capture_output=True,
                             text=True, check=True).stdout.splitlines()
    entries = []
    for line in listing:
        meta, _, name = line.partition("\t")
        mode, kind, blob = meta.split()
        if kind == "blob" and not name.startswith(OUTPUT_DIR):
            entries.append((mode, blob, name))
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", sha, "--"]
                             + [name for _, _, name in entries], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    (dest / COMMIT_MANIFEST).write_text(f"commit {sha}\n" + "".join(f"{m} {b} 0\t{n}\n" for m, b, n in entries))
    return sha


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
        if mode == "160000" or name.startswith(OUTPUT_DIR):  # a submodule, or measurements (OUTPUT_DIR): not checked
            continue
        if not (f.is_file() or f.is_symlink()) or _blob_sha(f, mode) != blob:
            return sha + "-dirty"
    return sha


def is_clean_sha(sha) -> bool:
    """Whether a row's `git_sha` names a clean commit, one the row's code can be checked out at: a sha without
    "-dirty" (empty or missing = unknown = not clean). The only definition of "clean": the gate, the report, the
    figures and `load`'s `clean` column all use it."""
    return isinstance(sha, str) and sha.strip() != "" and not sha.endswith("-dirty")


def short_sha(sha) -> str:
    """A git sha as figures and tables name it: 8 hex digits, "-dirty" kept; "unknown" when there is none."""
    s = str(sha).strip() if isinstance(sha, str) else ""
    return s.removesuffix("-dirty")[:8] + ("-dirty" if s.endswith("-dirty") else "") if s else "unknown"


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
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", f":(exclude){OUTPUT_DIR}")
    return sha.strip() + ("-dirty" if status and status.strip() else "")


def unclean_tree(repo: Path = REPO_ROOT) -> Optional[str]:
    """None when rows measured from `repo` would record a clean commit (is_clean_sha of git_sha(repo)), else one
    sentence saying what is wrong and what to do: scripts/gpu_session.sh refuses to start on it."""
    sha = git_sha(repo)
    if is_clean_sha(sha):
        return None
    if not sha:
        return (f"no commit is known for {repo} (neither a git checkout nor a {COMMIT_MANIFEST}); commit first and run "
                f"from the checkout, or from a copy with the {COMMIT_MANIFEST} that `python -m harness.results "
                f"--manifest` writes there, so that every row records the commit that produced it")
    return (f"the tracked files in {repo} differ from commit {sha[:12]}; commit first, then run again, so that every "
            f"row records the commit that produced it (a copy whose .git is older than that commit also needs the "
            f"{COMMIT_MANIFEST} that `python -m harness.results --manifest` writes in the checkout)")


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


CHECKPOINT_SAMPLE_BYTES = 1 << 16


def checkpoint_id(path: str | os.PathLike, files: Optional[Iterable[Path]] = None) -> str:
    """Content hash of a local Hugging Face checkpoint, the same wherever it lies: config.json's bytes, then per
    .safetensors file (`files`, default every one in `path`) its name, size and header, plus the first and last
    64 KiB of its tensor data. Headers and sizes alone are equal for two fine-tunes of one architecture; the data
    sample tells them apart without reading gigabytes."""
    path = Path(path).expanduser()
    h = hashlib.sha256()
    h.update((path / "config.json").read_bytes())
    for f in sorted(Path(f) for f in (files if files is not None else path.glob("*.safetensors"))):
        size = f.stat().st_size
        h.update(f"\0{f.name}\0{size}\0".encode())
        with open(f, "rb") as fh:
            head = fh.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else 0
            n = min(n, max(size - 8, 0))  # a corrupt length (check_hf_checkpoint refuses such files anyway)
            h.update(head + fh.read(n))
            h.update(fh.read(CHECKPOINT_SAMPLE_BYTES))
            fh.seek(max(8 + n, size - CHECKPOINT_SAMPLE_BYTES))
            h.update(fh.read())
    return h.hexdigest()[:POINT_KEY_LEN]


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
        self._tokens: dict[str, str] = {}  # point key -> token of the claim this store holds on it

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

        Every row gets a `run_id` and a boolean `clean` (see the module docstring); with_source=True adds
        `source_file`.
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
            df["clean"] = (df["git_sha"].map(is_clean_sha) if "git_sha" in df.columns
                           else pd.Series(False, index=df.index)).astype(bool)
            if not with_source:
                df = df.drop(columns="source_file")
        return df

    def done_keys(self, gpu: Optional[str] = None, statuses: Optional[Iterable[str]] = DONE_STATUSES) -> set[str]:
        """point_key of every stored row whose status is in `statuses` (None: any status; a row without a status
        counts as done), to skip points of an interrupted sweep on resume. Reads only the columns it needs."""
        wanted = {"point_key", "status", *POINT_KEY_FIELDS}
        for _ in range(5):
            try:
                frames = [_read_columns(f, wanted) for f in self.files(gpu)]
                break
            except FileNotFoundError:  # a concurrent compact() removed a file we listed: list again
                continue
        else:
            frames = [_read_columns(f, wanted) for f in self.files(gpu)]
        keep = None if statuses is None else set(statuses)
        out: set[str] = set()
        for df in frames:
            for r in df.to_dict("records"):
                status = r.get("status")
                if keep is not None and isinstance(status, str) and status not in keep:
                    continue
                k = r.get("point_key")
                out.add(str(k) if isinstance(k, str) and k else point_key(r))
        return out

    # ------------------------------------------------------------------------------------------ claims

    def _claims_dir(self, gpu: str) -> Path:
        return self.root / gpu_slug(gpu) / ".claims"

    def claim(self, gpu: str, keys: Iterable[str]) -> tuple[set[str], dict[str, str]]:
        """Claims each point key for this process: returns (the keys it now holds, {key: who holds it} for the
        others). A claim is <root>/<gpu_slug>/.claims/<key>.claim, created with O_CREAT | O_EXCL and naming the
        holder; one whose holder died (same host: its pid is gone or was reused) or that is older than
        CLAIM_STALE_S is taken over. Checking and taking over happen under an flock of the claims folder, so two
        processes never both take over one stale claim."""
        folder = self._claims_dir(gpu)
        folder.mkdir(parents=True, exist_ok=True)
        mine, others = set(), {}
        with _folder_lock(folder):
            for key in keys:
                if key in self._tokens:
                    mine.add(key)
                    continue
                path = folder / f"{key}.claim"
                token = uuid.uuid4().hex
                if not _create_claim(path, token):
                    holder = _read_claim(path)
                    if not _claim_is_stale(path, holder):
                        others[key] = _describe_claim(holder, path)
                        continue
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                    if not _create_claim(path, token):  # only without flock support: someone else was faster
                        others[key] = _describe_claim(_read_claim(path), path)
                        continue
                self._tokens[key] = token
                mine.add(key)
        return mine, others

    def release(self, gpu: str, keys: Iterable[str]) -> None:
        """Removes this process's claims on `keys` (a claim another process took over as stale stays)."""
        keys = [k for k in keys if k in self._tokens]
        if not keys:
            return
        folder = self._claims_dir(gpu)
        with _folder_lock(folder):
            for key in keys:
                token = self._tokens.pop(key)
                path = folder / f"{key}.claim"
                holder = _read_claim(path)
                if holder is not None and holder.get("token") == token:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()

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


def _read_columns(f: Path, wanted: set[str]) -> pd.DataFrame:
    """The columns of one file that are in `wanted` (a file may lack some: rows written before they existed)."""
    import pyarrow.parquet as pq

    names = [c for c in pq.read_schema(f).names if c in wanted]
    return pd.read_parquet(f, columns=names) if names else pd.DataFrame()


# A claim older than this is stale whoever holds it (a holder on another host cannot be asked whether it lives);
# HARNESS_CLAIM_STALE_S overrides it. One point with every impl takes minutes, not hours.
CLAIM_STALE_S = float(os.environ.get("HARNESS_CLAIM_STALE_S", 6 * 3600))
CLAIM_UNREADABLE_S = 60.0  # a claim file without content (holder killed while writing it) is stale after this


def _pid_start(pid: int) -> Optional[int]:
    """The start time (clock ticks since boot) of process `pid` from /proc, None where unknown: with the pid it
    names one process, so a dead holder whose pid was reused is not taken for alive."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _pid_alive(pid: int, start: Optional[int]) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        pass
    except OSError:
        return False
    now = _pid_start(pid)
    return start is None or now is None or now == start


def _create_claim(path: Path, token: str) -> bool:
    """Creates the claim file atomically (O_CREAT | O_EXCL); False if it exists."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    info = {"pid": os.getpid(), "pid_start": _pid_start(os.getpid()), "host": socket.gethostname(),
            "time": _dt.datetime.now(_dt.timezone.utc).timestamp(), "token": token}
    with os.fdopen(fd, "w") as fh:
        json.dump(info, fh)
        fh.flush()
        os.fsync(fh.fileno())
    return True


def _read_claim(path: Path) -> Optional[dict]:
    try:
        d = json.loads(path.read_text())
        return d if isinstance(d, dict) else None
    except (OSError, ValueError):
        return None


def _claim_is_stale(path: Path, holder: Optional[dict]) -> bool:
    now = _dt.datetime.now(_dt.timezone.utc).timestamp()
    if holder is None:
        try:
            return now - path.stat().st_mtime > CLAIM_UNREADABLE_S
        except FileNotFoundError:
            return True
    try:
        if now - float(holder["time"]) > CLAIM_STALE_S:
            return True
        if holder.get("host") != socket.gethostname():
            return False
        pid = int(holder["pid"])
    except (KeyError, TypeError, ValueError):
        return True
    if pid == os.getpid():  # this process left it (a call that never released): run_point calls are sequential
        return True
    return not _pid_alive(pid, holder.get("pid_start"))


def _describe_claim(holder: Optional[dict], path: Path) -> str:
    if not holder:
        return f"a process that is writing {path}"
    when = _dt.datetime.fromtimestamp(float(holder.get("time", 0)), _dt.timezone.utc).isoformat(timespec="seconds")
    return f"pid {holder.get('pid')} on {holder.get('host')} since {when} ({path})"


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
    """All result rows under `root` (optionally one GPU's); empty DataFrame if none. Every row has `run_id` and
    `clean` (is_clean_sha of its git_sha: False for a dirty tree or an unknown commit)."""
    return ResultsStore(root).load(gpu, with_source=with_source)


def decode_json(df: pd.DataFrame, column: str = "config_json") -> pd.Series:
    """The JSON strings of `column` parsed back into Python objects (None where null)."""
    return df[column].map(lambda s: None if s is None or (isinstance(s, float) and math.isnan(s)) else json.loads(s))


__all__ = [
    "DONE_STATUSES", "NON_GPU_DIRS", "POINT_KEY_FIELDS", "RUN_KEY_FIELDS", "ResultsStore", "checkpoint_id",
    "decode_json", "env_info", "git_sha", "gpu_slug", "is_clean_sha", "load_results", "point_key", "run_key",
    "snapshot_commit", "unclean_tree",
]


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Result-store helpers.")
    ap.add_argument("--manifest", action="store_true",
                    help=f"write {COMMIT_MANIFEST} (HEAD and its tracked files' blob ids) before running elsewhere")
    ap.add_argument("--sha", action="store_true", help="print the commit rows written here would record")
    ap.add_argument("--require-clean", action="store_true",
                    help="exit 1 with one sentence on stderr unless that commit is clean (not -dirty, not unknown)")
    ap.add_argument("--snapshot", nargs=2, metavar=("REV", "DIR"),
                    help="write commit REV's code (no results/) into the new directory DIR with its own "
                         f"{COMMIT_MANIFEST}, for a same-call A/B against another commit on the GPU machine")
    ap.add_argument("--repo", default=str(REPO_ROOT), help="the tree to look at (default: this checkout)")
    a = ap.parse_args()
    repo = Path(a.repo)
    if a.snapshot:
        try:
            print(snapshot_commit(a.snapshot[0], Path(a.snapshot[1]), repo))
        except ValueError as e:
            import sys

            print(f"error: {e}.", file=sys.stderr)
            raise SystemExit(2)
        raise SystemExit(0)
    if a.manifest:
        print(write_commit_manifest(repo))
    if a.require_clean:
        why = unclean_tree(repo)
        if why:
            import sys

            print(f"error: {why}.", file=sys.stderr)
            raise SystemExit(1)
    if a.sha or not (a.manifest or a.require_clean):
        print(git_sha(repo))
