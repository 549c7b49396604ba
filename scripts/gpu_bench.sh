#!/usr/bin/env bash
# jaxbud against its PyTorch peer on one GPU, and the whole training loop, offline (docs/gpu.md).
#
#   bash scripts/gpu_wheels.sh              # first, here (with network): the wheels into .whl/
#   bash scripts/gpu_bench.sh               # on the GPU machine, from the repository root
#   DRYRUN=1 bash scripts/gpu_bench.sh      # tiny networks and batches: a CPU dry run
#
# Never uses the network: the packages the machine lacks come from the wheel folder WHEELS
# (default .whl; installed with pip --no-index into $WORK/site); without it, what is missing is
# named and the script stops. jaxbud runs from this checkout (PYTHONPATH), not installed.
#
# Writes to OUT (default out): env.txt (GPU, versions), gpu_bench.json (every record, rewritten
# after each stage), logs.txt (each stage's output), summary.txt (the table printed last).
# Stages run most wanted first, each in its own process with its own timeout
# (scripts/gpu_bench.py lists them); none starts after BUDGET_S seconds (default 450, DRYRUN
# 1500) from this script's start. STAGES=a,b runs a subset; PYTHON (default python3);
# WORK (default /tmp/jaxbud_gpu_bench, emptied first): per-stage files, the JAX compilation
# cache. Exit status 1 if any stage failed or timed out (the others' records are kept).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
START=$(date +%s)
OUT="${OUT:-out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="${WORK:-/tmp/jaxbud_gpu_bench}"
rm -rf "$WORK"
mkdir -p "$WORK"
PYTHON="${PYTHON:-python3}"
WHEELS="${WHEELS:-.whl}"
if [[ -n "${DRYRUN:-}" ]]; then
  BUDGET="${BUDGET_S:-1500}"
  SIZE=(--small --timeout_scale "${TIMEOUT_SCALE:-3}")
else
  BUDGET="${BUDGET_S:-450}"
  SIZE=(--timeout_scale "${TIMEOUT_SCALE:-1}")
fi
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
export JAX_COMPILATION_CACHE_DIR="$WORK/jax_cache"
log() { echo "[gpu_bench $(date +%T)] $*"; }

if compgen -G "$WHEELS/*.whl" > /dev/null; then
  log "installing $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS (no index)"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$WORK/site" "$WHEELS"/*.whl
  export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

missing="$("$PYTHON" - << 'EOF_PY'
import importlib
import sys
need = ('jax', 'flax', 'optax', 'orbax.checkpoint', 'etils', 'absl', 'numpy', 'ml_collections')
wanted = ('tensorboardX', 'torch')  # the loop stage needs the first, the peer's stages the second
missing = []
for name in need + wanted:
  try:
    importlib.import_module(name)
  except Exception as e:  # pylint: disable=broad-except
    why = f'{name} ({type(e).__name__}: {str(e)[:80]})'
    if name in need:
      missing.append(why)
    else:
      print(f'warning: {why}; the stages that need it will fail', file=sys.stderr)
print('; '.join(missing))
EOF_PY
)"
if [[ -n "$missing" ]]; then
  echo "missing Python packages: $missing" >&2
  echo "make the wheel folder with 'bash scripts/gpu_wheels.sh' where pip works and bring it" \
       "as $WHEELS (docs/gpu.md)" >&2
  exit 2
fi

{
  echo "date: $(date -Is)"
  echo "git: $(git rev-parse HEAD 2> /dev/null || echo 'no git here')"
  if command -v nvidia-smi > /dev/null && nvidia-smi -L > /dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm \
        --format=csv
  fi
  "$PYTHON" - << 'EOF_PY'
import importlib, sys
print('python', sys.version.split()[0], sys.executable)
for name in ('jax', 'jaxlib', 'flax', 'optax', 'orbax.checkpoint', 'ml_collections',
             'tensorboardX', 'numpy', 'torch', 'triton'):
  try:
    print(name, getattr(importlib.import_module(name), '__version__', '?'))
  except Exception as e:  # pylint: disable=broad-except
    print(name, 'not importable:', type(e).__name__)
import jax
print('jax backend', jax.default_backend(), jax.devices())
EOF_PY
  echo "XLA_FLAGS=${XLA_FLAGS:-}"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

DEADLINE=$((START + BUDGET))
log "stages until $(date -d "@$DEADLINE" +%T) (BUDGET_S=$BUDGET)"
status=0
"$PYTHON" scripts/gpu_bench.py --out "$OUT" --work "$WORK" --deadline "$DEADLINE" \
    "${SIZE[@]}" ${STAGES:+--stages "$STAGES"} || status=$?
log "done in $(($(date +%s) - START)) s; results in $OUT"
exit $status
