"""scripts/gpu_bench.sh end to end on the CPU with configs/bench_gpu.py:smoke (about 15 s)."""
import json
import os
import subprocess
import sys

import pytest

from configs import bench_gpu
from jaxbud import bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_config_covers_both_networks_dtypes_and_modes():
  b = bench_gpu.get_config().bench
  assert [bench.parse_spec(s).label for s in b.specs] == ['wrn-40-2', 'densenet_bc-100-12']
  assert tuple(b.dtypes) == ('float32', 'bfloat16') and tuple(b.modes) == bench.MODES
  assert tuple(b.batch_sizes) == (1, 32, 128, 256)
  with pytest.raises(ValueError, match="no argument or ':smoke'"):
    bench_gpu.get_config('tiny')


def test_script_runs_stages_within_budget_and_merges_json(tmp_path):
  out = tmp_path / 'out'
  env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, NO_INSTALL='1', BENCH_SMOKE='1',
             BATCH_STAGES='2 3', BENCH_BUDGET_S='0')  # stage 2 must be skipped: budget spent
  r = subprocess.run(['bash', os.path.join(ROOT, 'scripts', 'gpu_bench.sh')], env=env,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:] + r.stdout[-2000:]
  assert 'skipping stage 2 (batch sizes 3)' in r.stdout
  assert (out / 'env.txt').read_text().count('jax ') >= 1
  assert (out / 'stage1-b2' / 'log.txt').exists() and not (out / 'stage2-b3').exists()
  rows = json.loads((out / 'bench_gpu.json').read_text())
  assert [(r['dtype'], r['mode'], r['batch_size']) for r in rows] == [
      (d, m, 2) for d in ('float32', 'bfloat16') for m in bench.MODES]
  assert all(r['spec'] == 'wrn-10-1' and r['median_s'] > 0 for r in rows)
  assert [r['vs_train'] is not None for r in rows] == [False, False, True] * 2
  assert 'Fisher step vs train step, wrn-10-1 batch 2 bfloat16' in r.stdout
  assert (out / 'bench_gpu.csv').exists()
