#!/usr/bin/env bash
# A same-call A/B of commits on one GPU: the checkout's commit (the candidate) and one or more base commits, each
# measured from a clean tree of its own commit, interleaved point by point in one device session, then compared
# with the regression gate's noise-aware verdict (python -m harness.report --compare). Ratios across sessions are
# not comparisons; this is how a change earns its line in docs/perf-notes.md.
#
# 1. Where the git history is, with the candidate committed:
#      bash scripts/ab.sh prepare BASE_REV [BASE_REV...]
#    writes the candidate's .commit-manifest and a copy of each base commit's tree (its code, no results/) with its
#    own manifest under scratch/ab/<sha12>/ (python -m harness.results --snapshot); older copies there are removed.
# 2. On the GPU machine, with .whl (if it has no package registry), .commit-manifest and scratch/ab carried:
#      bash scripts/ab.sh run DIR REPEATS "POINT" ["POINT"...]
#    POINT: run.py overrides of one point, e.g. "model=llama8b quant=int8 bench.batch=1" (impl=megakernel unless
#    given). Per point, REPEATS rounds of the candidate then each base; rows under DIR (e.g.
#    results/tuning/NAME), tagged ab-<sha8>; every round a fresh run (results.resume=false). Then one
#    `harness.report --compare` per base: B is the candidate, A the base, ratios B/A.
#    AB_TIME_LIMIT: seconds per measured point (default 120; a cut point stores nothing). AB_TESTS: pytest arguments
#    for the GPU tests, run on the candidate first (e.g. "tests/mega/test_mega_gluon_gpu.py"). OUT: where the logs
#    and a tarball of DIR go. AB_DRY=1 prints the plan instead of running it.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
AB=scratch/ab
step=${1:-}; shift || true

manifest_sha() {  # the commit a tree's .commit-manifest names
  sed -n 's/^commit \([0-9a-f]*\)$/\1/p' "$1/.commit-manifest" | head -1
}

case "$step" in
  prepare)
    [ $# -ge 1 ] || { echo "error: name at least one base commit: bash scripts/ab.sh prepare REV [REV...]" >&2; exit 2; }
    python3 -m harness.results --require-clean --repo "$ROOT" || exit 2
    python3 -m harness.results --manifest --repo "$ROOT" > /dev/null || exit 2
    rm -rf "$AB"; mkdir -p "$AB"
    for rev in "$@"; do
      sha=$(git -C "$ROOT" rev-parse --verify -q "$rev^{commit}") || { echo "error: $rev is not a commit here." >&2; exit 2; }
      python3 -m harness.results --snapshot "$sha" "$AB/${sha:0:12}" --repo "$ROOT" > /dev/null || exit 2
      echo "base ${sha:0:12} in $AB/${sha:0:12}"
    done
    echo "candidate $(manifest_sha "$ROOT" | cut -c1-12): carry .commit-manifest and $AB (and .whl) to the GPU machine"
    ;;
  run)
    [ $# -ge 3 ] || { echo "error: bash scripts/ab.sh run DIR REPEATS \"POINT\" [\"POINT\"...]" >&2; exit 2; }
    dir=$1 repeats=$2; shift 2
    [[ "$repeats" =~ ^[1-9][0-9]*$ ]] || { echo "error: REPEATS must be a positive integer, not $repeats." >&2; exit 2; }
    [ -f .commit-manifest ] || { echo "error: no .commit-manifest here: run bash scripts/ab.sh prepare first." >&2; exit 2; }
    trees=(.)
    for t in "$AB"/*/; do [ -f "$t.commit-manifest" ] && trees+=("${t%/}"); done
    [ ${#trees[@]} -ge 2 ] || { echo "error: no base tree under $AB: run bash scripts/ab.sh prepare first." >&2; exit 2; }
    run() {  # in tree $1: its own code first on the path, the checkout's never (a base must not import the candidate)
      (cd "$ROOT/$1" && shift \
        && clean=$(printf '%s' "${PYTHONPATH:-}" | tr ':' '\n' | grep -vxF -e "$ROOT" -e "" | paste -sd: -) \
        && export PYTHONPATH="${clean:+$clean:}$PWD" && "$@")
    }
    if [ -n "${AB_TESTS:-}" ]; then
      echo "[ab] GPU tests of the candidate: $AB_TESTS"
      # shellcheck disable=SC2086  # AB_TESTS is a list of pytest arguments
      [ "${AB_DRY:-0}" = 1 ] || bash scripts/gpu_session.sh tests $AB_TESTS | tail -25
    fi
    for point in "$@"; do
      extra=(); [[ " $point " == *" impl="* ]] || extra=(impl=megakernel)
      for ((r = 1; r <= repeats; r++)); do
        for t in "${trees[@]}"; do
          sha=$(manifest_sha "$t")
          echo "[ab] round $r/$repeats ${sha:0:12} $point"
          [ "${AB_DRY:-0}" = 1 ] && continue
          # shellcheck disable=SC2086  # a point is a list of overrides
          run "$t" env TIME_LIMIT="${AB_TIME_LIMIT:-120}" bash scripts/gpu_session.sh sweep -m "${extra[@]}" $point \
            results.resume=false results.dir="$ROOT/$dir" results.tag="ab-${sha:0:8}" > /dev/null
        done
      done
    done
    [ "${AB_DRY:-0}" = 1 ] && exit 0
    [ -n "${OUT:-}" ] && [ -d "$dir" ] && tar czf "$OUT/ab-rows-$(date +%H%M%S).tgz" "$dir"
    cand=$(manifest_sha .)
    for t in "${trees[@]:1}"; do
      base=$(manifest_sha "$t")
      echo "[ab] B = candidate ${cand:0:12}, A = base ${base:0:12}"
      python3 -m harness.report --results "$dir" --compare "sha:${base:0:12}" "sha:${cand:0:12}"
    done
    ;;
  *)
    echo "usage: bash scripts/ab.sh prepare REV... | bash scripts/ab.sh run DIR REPEATS \"POINT\"... (see the top of the script)" >&2
    exit 2
    ;;
esac
