"""Prune-and-tune runs on digits: snapshots, training a pruned spec from scratch, kill-and-resume."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import prune_digits
from jaxbud import checkpoint as ckpt_lib
from jaxbud import prune_tune
from jaxbud import spec as spec_lib
from jaxbud import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_FLAGS = ['--config.model.depth=10', '--config.train.epochs=2']


def small_config(base_workdir, **prune):
  c = prune_digits.get_config()
  c.model.update(depth=10, widen=1.0)
  c.train.update(epochs=2)
  c.prune.update(dict(base_workdir=str(base_workdir), prune_every=3, rounds=30,
                      budgets=(70_000, 60_000), compact_every=8, log_every_rounds=10,
                      checkpoint_every_rounds=5, stop_after_last_budget=False), **prune)
  return c


@pytest.fixture(scope='module')
def base(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('base')
  train.train_and_evaluate(small_config(''), str(workdir))
  return workdir


def test_prune_run_snapshots_budgets_and_trains_them_from_scratch(base, tmp_path):
  c = small_config(base)
  summary = prune_tune.prune_and_tune(c, str(tmp_path / 'prune'))
  assert summary['removed'] == 30
  # One compilation for the base shapes, then one per compaction (every 8 channels or snapshot).
  assert 2 <= summary['compilations'] <= 1 + 30 // 8 + 2
  assert [s['budget'] for s in summary['snapshots']] == [70_000, 60_000]
  history = json.load(open(tmp_path / 'prune' / 'history.json'))
  assert len(history) == 30 and all(h['step'] == 3 * (h['round'] + 1) for h in history)
  assert len({(h['layer'], h['channel']) for h in history}) == 30  # never the same channel twice
  for snap in summary['snapshots']:
    d = snap['dir']
    spec = spec_lib.load(os.path.join(d, 'spec.json'))
    assert spec_lib.count_params(spec, 10) == snap['params'] <= snap['budget']
    assert json.load(open(os.path.join(d, 'result.json')))['test_error'] == snap['test_error']
    snap_history = json.load(open(os.path.join(d, 'history.json')))
    assert snap_history == history[:snap['removed']]
    # The snapshot restores from its folder alone and reproduces its test error.
    ck = ckpt_lib.Checkpoints(os.path.join(d, 'checkpoint'))
    assert ck.restore_spec() == spec
    run = train.setup(small_config(base))
    model = prune_tune.models.build(spec, 10)
    template = jax.eval_shape(lambda k: train.create_state(
        model, prune_tune.finetune_optimizer(c.prune), k, (8, 8, 1)), jax.random.key(0))
    state, _ = ck.restore(template)
    err = train.evaluate(jax.jit(train.make_eval_step(model, run.dataset)), state,
                         run.dataset.test_images, run.dataset.test_labels, 360,
                         prune_tune.parallel.make_mesh())['test_error']
    assert err == pytest.approx(snap['test_error'], abs=1e-6)
  # The last snapshot's architecture, trained from scratch (fresh init).
  c2 = small_config(base)
  c2.model.spec_file = os.path.join(summary['snapshots'][-1]['dir'], 'spec.json')
  final = train.train_and_evaluate(c2, str(tmp_path / 'scratch'))
  assert final['params'] == summary['snapshots'][-1]['params']


def test_budget_above_the_base_and_missing_base_are_clear_errors(base, tmp_path):
  with pytest.raises(ValueError, match=r'prune.budgets entry 10000000 must lie in \['):
    prune_tune.prune_and_tune(small_config(base, budgets=(10_000_000,)), str(tmp_path / 'a'))
  with pytest.raises(ValueError, match='no trained checkpoint in prune.base_workdir'):
    prune_tune.prune_and_tune(small_config(tmp_path / 'nothing'), str(tmp_path / 'b'))
  with pytest.raises(ValueError, match="unknown prune criterion 'l3'"):
    prune_tune.prune_and_tune(small_config(base, criterion='l3'), str(tmp_path / 'c'))
  assert not (tmp_path / 'a').exists() and not (tmp_path / 'nothing').exists()


def test_killed_prune_run_resumes_with_the_same_history(base, tmp_path):
  workdir = tmp_path / 'killed'
  args = [sys.executable, '-m', 'launch.prune', '--config=configs/prune_digits.py',
          f'--workdir={workdir}', f'--config.prune.base_workdir={base}', *BASE_FLAGS,
          '--config.prune.prune_every=3', '--config.prune.rounds=30',
          '--config.prune.budgets=(70000,60000)', '--config.prune.compact_every=8',
          '--config.prune.checkpoint_every_rounds=5',
          '--config.prune.stop_after_last_budget=False']
  proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckpt_dir = workdir / 'checkpoints'
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    steps = [int(p) for p in os.listdir(ckpt_dir) if p.isdigit()] if ckpt_dir.exists() else []
    if steps and max(steps) >= 10:
      break
    time.sleep(0.05)
  assert proc.poll() is None, 'prune run finished before it could be killed'
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert 'resumed prune run at round' in r.stderr
  resumed = json.load(open(workdir / 'history.json'))
  straight = prune_tune.prune_and_tune(small_config(base), str(tmp_path / 'straight'))
  expected = json.load(open(tmp_path / 'straight' / 'history.json'))
  assert [(h['layer'], h['channel'], h['round']) for h in resumed] == \
         [(h['layer'], h['channel'], h['round']) for h in expected]
  np.testing.assert_allclose([h['score'] for h in resumed], [h['score'] for h in expected],
                             rtol=1e-5)
  assert straight['snapshots'][-1]['params'] == json.load(
      open(workdir / 'summary.json'))['snapshots'][-1]['params']
