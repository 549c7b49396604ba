"""Prune-and-tune runs on digits: snapshots, training a pruned spec from scratch, bad settings.

Kill-and-resume of prune runs is in tests/test_reliability.py.
"""
import json
import os

import jax
import pytest

from configs import prune_digits
from jaxbud import checkpoint as ckpt_lib
from jaxbud import prune_tune
from jaxbud import spec as spec_lib
from jaxbud import train


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
