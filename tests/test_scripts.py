"""The investigation scripts: per-convolution breakdown and per-op step profile, on a tiny WRN."""
import json
import os
import subprocess
import sys

from jaxbud import bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'scripts'))

import conv_breakdown  # pylint: disable=wrong-import-position


def test_network_convs_are_the_models_convolutions():
  convs = conv_breakdown.network_convs(bench.parse_spec('wrn-10-1').spec, 4)
  # WRN-10-1: stem, 3 blocks x 2 convs, 2 strided shortcuts (block0's 16->16 has none).
  assert sum(convs.values()) == 1 + 6 + 2
  stem = conv_breakdown.Conv((4, 32, 32, 3), (3, 3, 3, 16), (1, 1), ((1, 1), (1, 1)))
  assert convs[stem] == 1
  assert all(c.lhs[0] == 4 and c.rhs[0] in (1, 3) for c in convs)


def _run(args, tmp_path):
  r = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                     timeout=300, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert r.returncode == 0, r.stderr[-2000:]
  return r.stdout


def test_conv_breakdown_runs_and_sums(tmp_path):
  out = tmp_path / 'cb.json'
  text = _run(['scripts/conv_breakdown.py', '--specs=wrn-10-1@2', '--repeats=1',
               f'--out={out}'], tmp_path)
  result = json.loads(out.read_text())[0]
  assert result['spec'] == 'wrn-10-1' and result['batch_size'] == 2
  rows = result['rows']
  assert {r['kind'] for r in rows} == {'fwd', 'dgrad', 'wgrad'}
  assert sum(r['count'] for r in rows) == 3 * 9 and all(r['jax_s'] > 0 for r in rows)
  total = sum(r['count'] * r['jax_s'] for r in rows)
  assert f'all    jax {total:6.3f} s' in text


def test_profile_step_reports_ops(tmp_path):
  hlo = tmp_path / 'step.hlo'
  text = _run(['scripts/profile_step.py', '--spec=wrn-10-1', '--batch=2', '--mode=train',
               '--warmup=1', '--steps=1', f'--hlo_out={hlo}'], tmp_path)
  assert 'XLA-thread op time' in text and 'op kind' in text
  lines = text.split('op kind', 1)[1].splitlines()[1:]
  ops = [l for l in lines if l.strip() and not l.startswith('optimised HLO')]
  assert ops and all(float(l.split()[-3]) >= 0 for l in ops)
  assert 'fusion' in text and 'HloModule' in hlo.read_text()
