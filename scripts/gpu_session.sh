#!/usr/bin/env bash
# On a GPU machine without a package registry (pure-Python wheels carried in .whl/, built where pip works with
#   pip wheel --no-deps -w .whl hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3 \
#       hydra-joblib-launcher==1.2.0 joblib==1.6.0      # the last two for hydra/launcher=joblib_gpus
# ): install them, then run the given steps.
#   bash scripts/gpu_session.sh tests            # pytest -m gpu (one line per test, so a run cut by TIME_LIMIT
#                                                # shows which tests finished; the 10 slowest at the end)
#   bash scripts/gpu_session.sh sweep ARGS...    # python run.py ARGS... (a Hydra multirun with -m)
# New result files are packed into $OUT/results.tgz (when OUT is set) so they can be committed.
# TIME_LIMIT=S stops the step after S seconds (SIGINT) and still packs what it wrote: a sweep stores each point's
# rows when the point ends, so the points finished before the limit come back (set it below the caller's own
# limit, e.g. 560 under a 600-second call).
#
# It refuses to start unless the tree is a clean commit, as the rows will record it (python -m harness.results
# --require-clean: git status of tracked files, or .commit-manifest on a copy whose .git is stale), so that every
# row names the commit that produced it: commit first. ALLOW_DIRTY=1 runs anyway (its rows say "-dirty").
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ] && ! python3 -c 'import hydra' 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}:$PWD PYTHONUNBUFFERED=1
step=${1:-tests}; shift || true
case "$step" in
  tests|sweep) ;;
  *) echo "unknown step $step (tests | sweep)"; exit 2 ;;
esac
if [ "${ALLOW_DIRTY:-0}" != 1 ]; then
  python3 -m harness.results --require-clean --repo "$PWD" || exit 2
fi
stamp=$(mktemp); touch "$stamp"; sleep 1
limit=()
[ -n "${TIME_LIMIT:-}" ] && limit=(timeout -s INT -k 20 "$TIME_LIMIT")
case "$step" in
  tests) "${limit[@]}" python3 -m pytest -v --durations=10 -m gpu -n 8 --dist loadgroup "$@" 2>&1 | tee ${OUT:+$OUT/pytest_gpu.log} ;;
  sweep) "${limit[@]}" python3 run.py "$@" 2>&1 | tee -a ${OUT:+$OUT/sweep.log} ;;
esac
rc=${PIPESTATUS[0]}
if [ -n "${OUT:-}" ]; then
  new=$(find results -type f -newer "$stamp" 2>/dev/null)
  [ -n "$new" ] && tar czf "$OUT/results-$step-$(date +%H%M%S).tgz" $new
fi
exit $rc
