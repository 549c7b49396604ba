"""scripts/gpu_bench.sh and its driver: offline setup, isolated stages, records and summary.

The real run is on a GPU machine; here: the script's offline rules, the driver's bookkeeping
with stand-in stages, one real stage at --small sizes, and the summary from made-up records.
"""
import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest

from configs import bench_gpu
from jaxbud import bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, 'scripts')


def _driver():
  spec = importlib.util.spec_from_file_location('gpu_bench', os.path.join(SCRIPTS, 'gpu_bench.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_config_covers_both_networks_dtypes_and_modes():
  b = bench_gpu.get_config().bench
  assert [bench.parse_spec(s).label for s in b.specs] == ['wrn-40-2', 'densenet_bc-100-12']
  assert tuple(b.dtypes) == ('float32', 'bfloat16') and tuple(b.modes) == bench.DEFAULT_MODES
  with pytest.raises(ValueError, match="no argument or ':smoke'"):
    bench_gpu.get_config('tiny')


def test_script_never_uses_the_network():
  with open(os.path.join(SCRIPTS, 'gpu_bench.sh')) as f:
    sh = f.read()
  installs = [l for l in sh.splitlines() if 'pip install' in l]
  assert installs and all('--no-index' in l for l in installs)
  assert 'PIP_NO_INDEX=1' in sh and 'pip download' not in sh
  with open(os.path.join(SCRIPTS, 'gpu_wheels.sh')) as f:
    wheels = f.read()
  assert '--python-version 3.12' in wheels and '--no-deps' in wheels
  assert 'ml_collections==' in wheels and 'tensorboardX==' in wheels


def test_script_names_missing_packages_and_stops(tmp_path):
  bare = tmp_path / 'python'  # a Python without site-packages: jax and the rest are missing
  bare.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')
  bare.chmod(0o755)
  env = dict(os.environ, OUT=str(tmp_path / 'out'), WORK=str(tmp_path / 'work'),
             PYTHON=str(bare), WHEELS=str(tmp_path / 'no_wheels'))
  r = subprocess.run(['bash', os.path.join(SCRIPTS, 'gpu_bench.sh')], env=env,
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 2, r.stderr
  assert 'missing Python packages: jax (ModuleNotFoundError' in r.stderr
  assert 'bash scripts/gpu_wheels.sh' in r.stderr


def test_stages_most_wanted_first_each_with_a_function():
  d = _driver()
  assert d.STAGE_NAMES[:5] == ('jax_wrn_bf16', 'torch_wrn', 'jax_densenet_bf16',
                               'torch_densenet', 'loop_wrn_bf16')
  assert len(set(d.STAGE_NAMES)) == len(d.STAGE_NAMES)
  for name in d.STAGE_NAMES:
    assert callable(getattr(d, f'stage_{name}'))


def test_driver_keeps_records_of_failed_and_timed_out_stages(tmp_path, monkeypatch, capsys):
  d = _driver()
  work, out = tmp_path / 'work', tmp_path / 'out'
  outcomes = {'jax_wrn_bf16': 'ok', 'torch_wrn': 'failed (exit 1)',
              'jax_densenet_bf16': 'timeout (1 s)'}
  seen = []

  def fake_run_stage(name, timeout, args, log_file):
    seen.append((name, json.loads((out / 'gpu_bench.json').read_text()) if seen else []))
    with open(work / f'{name}.jsonl', 'a') as f:
      f.write(json.dumps({'kind': 'note', 'value': name}) + '\n')
    with open(log_file, 'w') as f:
      f.write(f'log of {name}\n')
    if name == 'jax_densenet_bf16':
      time.sleep(1.2)  # past the deadline: the next stage is skipped
    return outcomes[name], 0.5

  monkeypatch.setattr(d, 'run_stage', fake_run_stage)
  monkeypatch.setattr(sys, 'argv', [
      'gpu_bench.py', '--out', str(out), '--work', str(work), '--min_stage_s', '0.5',
      '--deadline', str(time.time() + 1.5),
      '--stages', 'jax_wrn_bf16,torch_wrn,jax_densenet_bf16,torch_densenet'])
  assert d.main() == 1  # a stage failed
  records = json.loads((out / 'gpu_bench.json').read_text())
  assert [r['value'] for r in records if r['kind'] == 'note'] == list(outcomes)
  status = {r['stage']: r['status'] for r in records if r['kind'] == 'stage'}
  assert status == {**outcomes, 'torch_densenet': 'skipped (time)'}
  assert len(seen[2][1]) == 4  # the JSON already held two stages' records when the third ran
  logs = (out / 'logs.txt').read_text()
  assert '===== torch_wrn: failed (exit 1)' in logs and 'log of jax_densenet_bf16' in logs
  assert 'torch_densenet       skipped (time)' in (out / 'summary.txt').read_text()
  assert 'torch_wrn: failed (exit 1)' in capsys.readouterr().out


def test_a_real_stage_at_small_sizes(tmp_path):
  r = subprocess.run([sys.executable, os.path.join(SCRIPTS, 'gpu_bench.py'), '--small',
                      '--out', str(tmp_path / 'out'), '--work', str(tmp_path / 'work'),
                      '--stages', 'jax_large_batch', '--timeout_scale', '6'],
                     capture_output=True, text=True, timeout=900, cwd=ROOT)
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
  records = json.loads((tmp_path / 'out' / 'gpu_bench.json').read_text())
  rows = [x for x in records if x['kind'] == 'step']
  assert [(x['spec'], x['batch_size'], x['mode'], x['dtype']) for x in rows] == [
      ('wrn-10-1', 32, 'train', 'bfloat16'), ('wrn-10-1', 32, 'train', 'float32')]
  assert all(x['pipelined_s'] > 0 and x['compile_s'] > 0 and x['stage'] == 'jax_large_batch'
             for x in rows)
  assert '200 CIFAR epochs at the bare b32 bfloat16 throughput' in r.stdout


def test_summary_sets_targets_against_the_peer():
  d = _driver()
  step = dict(kind='step', framework='jaxbud', spec='wrn-40-2', batch_size=128, dtype='bfloat16', variant='jaxbud',
              compile_s=10.0, images_per_s=1.0, pipelined_images_per_s=1.0)
  records = [
      {**step, 'mode': 'train', 'median_s': 0.011, 'pipelined_s': 0.010},
      {**step, 'mode': 'fisher', 'median_s': 0.0112, 'pipelined_s': 0.0104,
       'vs_train': 1.018, 'pipelined_vs_train': 1.04},
      {'framework': 'torch', 'spec': 'wrn-40-2', 'batch_size': 128,
       'op': 'train', 'mode': 'compile_bf16_cl', 'dtype': 'bfloat16', 'pipelined_s': 0.008,
       'synced_s': 0.009, 'first_call_s': 50.0, 'images_per_s': 16000.0},
      {'kind': 'loop', 'dtype': 'bfloat16', 'batch_size': 128, 'loop_steps_per_s': 90.0,
       'bare_steps_per_s': 100.0, 'loop_overhead': 0.111, 'fisher_vs_train': 1.03},
      {'kind': 'projection', 'what': 'train 200 epochs', 'seconds': 780.0, 'how': 'h'},
      {'stage': 'jax_wrn_bf16', 'kind': 'stage', 'status': 'ok', 'seconds': 80.0},
  ]
  text = d.summary(records)
  assert ('jaxbud bf16 train / torch.compile bf16 channels_last, wrn-40-2 b128: 1.25x '
          '(NOT met: target <= 1)') in text
  assert 'Fisher / train step, wrn-40-2 b128 bfloat16: 1.040 pipelined, 1.018 synced (met' in text
  assert 'loop overhead over the bare step: +11.1% (NOT met: target < +5%)' in text
  assert 'moonshot, train 200 epochs at the loop\'s rate: 13.0 min (NOT met' in text
  assert 'jax_wrn_bf16         ok' in text
