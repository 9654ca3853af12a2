#!/usr/bin/env bash
# Builds .venv/ with everything the project needs, once; later calls return at once.
# A torch that is already importable (e.g. a CUDA build on a GPU machine) is kept: the venv sees
# the system site-packages. Otherwise the CPU wheel torch==2.13.0 is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.installed
if [ -f "$stamp" ] && [ "$stamp" -nt requirements.txt ] && [ "$stamp" -nt scripts/setup_env.sh ]; then exit 0; fi
python3 -m venv --system-site-packages .venv
py=.venv/bin/python
$py -m pip install -q --upgrade pip >/dev/null 2>&1 || true
quiet() { grep -v 'is ignored: it is neither a file nor a directory' || true; }  # local mirrors' noise
if ! $py -c 'import torch' 2>/dev/null; then
  $py -m pip install -q 'torch==2.13.0' 2>&1 | quiet
fi
$py -m pip install -q -r requirements.txt 2>&1 | quiet
$py -m ipykernel install --sys-prefix --name python3 >/dev/null 2>&1 || true
touch "$stamp"
