#!/usr/bin/env bash
# Training and inference benchmark of WRN-40-2 and DenseNet-BC-100 (float32, bfloat16) on a GPU.
#
#   bash scripts/gpu_bench.sh                      # from the repository root or anywhere
#   BENCH_SMOKE=1 PYTHON=/path/to/python bash scripts/gpu_bench.sh   # tiny CPU dry run
#
# Writes everything under ${OUT:-out}: env.txt (GPU, versions), one folder per stage with
# launch.bench's bench.json/bench.csv/log.txt, and the merged bench_gpu.json/bench_gpu.csv. The
# merged table and the Fisher/train ratios are printed at the end.
#
# Setup, only what is missing: without $PYTHON it uses .venv (created with python3 -m venv
# --system-site-packages if absent); if jaxbud's dependencies do not import it runs
# `pip install -e .`; if jax has no GPU backend while nvidia-smi sees a GPU it installs
# jax[cuda12] (JAX_CUDA=cuda13 for the other extra) at the installed jax version (JAX_VERSION,
# default 0.10.2, when pip installs jax too). NO_INSTALL=1 forbids installing: missing packages
# are an error, and a CPU-only jax just runs on the CPU.
#
# SETUP_ONLY=1 stops after the setup (a separate call can then run the stages on the same
# machine). Stages (BATCH_STAGES, default "128 1,32 256"; each one process over both networks,
# both dtypes, modes infer/train/fisher) run in order; after the first, a stage is not started
# once BENCH_BUDGET_S seconds (default 360) have passed since the script started, so one call of
# at most 10 minutes keeps the most useful numbers: a finished stage has its JSON on disk even if
# a later one is cut off.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
JAX_VERSION="${JAX_VERSION:-0.10.2}"
JAX_CUDA="${JAX_CUDA:-cuda12}"  # the jax extra: cuda12, or cuda13 for a CUDA 13 driver
BUDGET="${BENCH_BUDGET_S:-360}"
if [[ -n "${BENCH_SMOKE:-}" ]]; then
  CONFIG="configs/bench_gpu.py:smoke"
  STAGES="${BATCH_STAGES:-2}"
else
  CONFIG="configs/bench_gpu.py"
  STAGES="${BATCH_STAGES:-128 1,32 256}"
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
log() { echo "[gpu_bench $(date +%T)] $*"; }

# --- environment ---------------------------------------------------------------------------
if [[ -z "${PYTHON:-}" ]]; then
  if [[ ! -x .venv/bin/python ]]; then
    [[ -n "${NO_INSTALL:-}" ]] && { echo "no .venv and NO_INSTALL set; give PYTHON=" >&2; exit 2; }
    log "creating .venv"
    python3 -m venv --system-site-packages .venv
  fi
  PYTHON="$ROOT/.venv/bin/python"
fi
has_gpu=0
if command -v nvidia-smi > /dev/null && nvidia-smi -L > /dev/null 2>&1; then has_gpu=1; fi

pip_install() {
  [[ -n "${NO_INSTALL:-}" ]] && { echo "missing packages and NO_INSTALL set: $*" >&2; exit 2; }
  log "pip install $*"
  "$PYTHON" -m pip install -q "$@"
}

deps='import jax, flax, optax, orbax.checkpoint, ml_collections, absl'
if ! "$PYTHON" -c "$deps" 2> /dev/null; then
  if [[ $has_gpu == 1 ]]; then
    pip_install -e . "jax[$JAX_CUDA]==$JAX_VERSION"
  else
    pip_install -e .
  fi
fi
backend="$("$PYTHON" -c 'import jax; print(jax.default_backend())')"
if [[ $has_gpu == 1 && $backend != gpu && -z "${NO_INSTALL:-}" ]]; then
  version="$("$PYTHON" -c 'import jax; print(jax.__version__)')"
  pip_install "jax[$JAX_CUDA]==$version"
  backend="$("$PYTHON" -c 'import jax; print(jax.default_backend())')"
fi
if [[ $has_gpu == 1 && $backend != gpu ]]; then
  echo "nvidia-smi sees a GPU but jax's backend is $backend; see $OUT/env.txt" >&2
fi

{
  echo "date: $(date -Is)"
  echo "host: $(hostname)"
  echo "git: $(git rev-parse HEAD 2> /dev/null || echo '?')," \
       "$(git status --porcelain 2> /dev/null | wc -l) changed files"
  if [[ $has_gpu == 1 ]]; then nvidia-smi; fi
  "$PYTHON" -c 'import sys, jax, jaxlib, flax
print("python", sys.version.split()[0])
print("jax", jax.__version__, "jaxlib", jaxlib.__version__, "flax", flax.__version__)
print("backend", jax.default_backend(), jax.devices())'
  "$PYTHON" -m pip list 2> /dev/null \
      | grep -i -E '^(jax|jaxlib|jax-cuda|nvidia-(cudnn|cublas|cuda-runtime))' || true
  echo "XLA_FLAGS=${XLA_FLAGS:-}"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
if [[ -n "${SETUP_ONLY:-}" ]]; then
  log "setup done in ${SECONDS}s (SETUP_ONLY)"
  exit 0
fi

# --- stages --------------------------------------------------------------------------------
start=$SECONDS
i=0
failed=()
for batches in $STAGES; do
  i=$((i + 1))
  elapsed=$SECONDS
  if ((i > 1 && elapsed >= BUDGET)); then
    log "skipping stage $i (batch sizes $batches): ${elapsed}s used of BENCH_BUDGET_S=$BUDGET"
    continue
  fi
  dir="$OUT/stage$i-b${batches//,/-}"
  log "stage $i: batch sizes ($batches) -> $dir"
  if ! "$PYTHON" -m launch.bench --config="$CONFIG" \
      --config.bench.batch_sizes="($batches,)" --config.bench.out_dir="$dir" \
      2>&1 | tee "$dir.log"; then
    failed+=("$batches")  # e.g. out of memory at a large batch: keep going, report at the end
  fi
  mkdir -p "$dir" && mv "$dir.log" "$dir/log.txt"
done
log "stages took $((SECONDS - start))s"

# --- merge ---------------------------------------------------------------------------------
"$PYTHON" - "$OUT" << 'EOF'
import glob, json, os, sys
from jaxbud import bench
out = sys.argv[1]
rows = []
for path in sorted(glob.glob(os.path.join(out, 'stage*', 'bench.json'))):
  with open(path) as f:
    rows += json.load(f)
specs = list(dict.fromkeys(r['spec'] for r in rows))  # config order, then dtype, batch, mode
rows.sort(key=lambda r: (specs.index(r['spec']), bench.DTYPES.index(r['dtype']), r['batch_size'],
                         bench.MODES.index(r['mode'])))
json_path, csv_path = bench.write(rows, out, 'bench_gpu')
print()
print(bench.format_table(rows))
print('\n'.join(bench.fisher_overheads(rows)))
print(f'{len(rows)} rows; wrote {json_path} and {csv_path}')
EOF
if ((${#failed[@]})); then
  echo "stages that failed (see their log.txt): ${failed[*]}" >&2
  exit 1
fi
