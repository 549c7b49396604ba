"""jaxbud.loop_bench: the training loop against its bare step, and the projected paper runs."""
import json
import math
import os
import subprocess
import sys

import pytest

from configs import bench_loop
from configs import study_wrn_40_2_cifar10
from jaxbud import loop_bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_steady_rate_leaves_the_first_logged_step_out():
  # Step d logged at cumulative rate d / t(d): t = 10 s (compile) + 0.1 s per step.
  records = [{'step': d, 'steps_per_s': d / (10 + 0.1 * d), 'train_loss': 1.0}
             for d in (10, 20, 30)] + [{'step': 30, 'test_error': 0.9}]
  rate, first, last = loop_bench.steady_rate(records)
  assert rate == pytest.approx(10.0) and (first, last) == (10, 30)
  assert loop_bench.steady_rate(records[:1]) is None


def test_projection_arithmetic():
  m = dict(loop_step_s=0.01, eval_s=2.0, train_compile_s=30.0, eval_compile_s=5.0,
           fisher_compile_s=40.0, fisher_vs_train=1.05)
  config = study_wrn_40_2_cifar10.get_config()
  train, prune, study = loop_bench.project(m, config)
  assert train['steps'] == 200 * 391
  assert train['seconds'] == pytest.approx(200 * 391 * 0.01 + 20 * 2.0 + 35.0)
  # 1,300 removals and a final tuning period; an evaluation every 10 rounds and per snapshot.
  compilations = math.ceil(1301 / 64) + 6
  assert prune['steps'] == 130_100
  assert prune['seconds'] == pytest.approx(
      130_100 * 0.01 * 1.05 + (math.ceil(1301 / 10) + 6) * 2.0 + compilations * 45)
  # The study's runs are its plan's: 2 bases (prune seeds), 16 reduced points, 6 scratch,
  # 6 Scratch-B and 5 copycats (the sixth is the scratch run), 3 seeds each; 3 criteria x 2
  # prune seeds.
  plan = study['plan']
  assert sum(r['runs'] for r in plan if r['kind'] == 'train') == 2 + (16 + 6 + 6 + 5) * 3
  assert sum(r['runs'] for r in plan if r['kind'] == 'prune') == 6
  fixed = 20 * 2.0 + 35.0
  expected = sum(r['runs'] * (r['steps'] * 0.01 + fixed) for r in plan if r['kind'] == 'train')
  assert study['seconds'] > expected > 99 * 200 * 391 * 0.01


def test_launcher_writes_json_and_refuses_a_used_workdir(tmp_path):
  cmd = [sys.executable, '-m', 'launch.bench_loop', '--config=configs/bench_loop.py:cpu',
         f'--workdir={tmp_path / "run"}', '--config.model.depth=10',
         '--config.data.synthetic.train_size=48', '--config.data.synthetic.test_size=8',
         '--config.data.synthetic.image_size=8', '--config.train.batch_size=8',
         '--config.train.eval_batch_size=8', '--config.train.log_every_steps=3',
         '--config.loop.bare_steps=1', '--config.loop.repeats=1']
  r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert r.returncode == 0, r.stderr[-2000:]
  assert 'loop overhead' in r.stdout
  with open(tmp_path / 'run' / 'loop_bench.json') as f:
    r = json.load(f)
  assert r['dataset'] == 'synthetic' and r['loop_steps'] == 12 and r['batch_size'] == 8
  assert r['loop_window'] == [3, 12]
  for key in ('train_step_s', 'fisher_step_s', 'eval_s', 'loop_step_s', 'train_compile_s'):
    assert r[key] > 0, key
  assert r['loop_overhead'] == pytest.approx(r['loop_step_s'] / r['train_step_s'] - 1)
  assert os.path.exists(tmp_path / 'run' / 'final.json')
  r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert r.returncode == 2 and r.stderr.strip().startswith('error: loop benchmark workdir')
