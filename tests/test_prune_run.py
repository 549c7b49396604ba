"""Prune-and-tune runs on digits: the reference's round protocol, snapshots, trajectory, costs.

Kill-and-resume of prune runs is in tests/test_reliability.py.
"""
import json
import os
import shutil

import jax
import numpy as np
import pytest

from configs import prune_digits
from jaxbud import checkpoint as ckpt_lib
from jaxbud import input_pipeline
from jaxbud import models
from jaxbud import parallel
from jaxbud import prune_tune
from jaxbud import spec as spec_lib
from jaxbud import stats
from jaxbud import train

ROUNDS = 16


def small_config(base_workdir, **prune):
  c = prune_digits.get_config()
  c.model.update(depth=10, widen=1.0)
  c.train.update(epochs=2)
  c.prune.update(dict(base_workdir=str(base_workdir), prune_every=3, rounds=ROUNDS,
                      budgets=(72_000, 66_000), compact_every=8, log_every_rounds=10,
                      checkpoint_every_rounds=5, stop_after_last_budget=False,
                      eval_every_rounds=1), **prune)
  return c


@pytest.fixture(scope='module')
def base(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('base')
  train.train_and_evaluate(small_config(''), str(workdir))
  return workdir


@pytest.fixture(scope='module')
def run(base, tmp_path_factory):
  """One prune run of ROUNDS rounds, with the data-stream seeds it asked for."""
  workdir = tmp_path_factory.mktemp('prune')
  seeds = []
  real = input_pipeline.train_batches

  def spy(*args, **kw):
    seeds.append(kw['seed'])
    return real(*args, **kw)

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(input_pipeline, 'train_batches', spy)
    summary = prune_tune.prune_and_tune(small_config(base), str(workdir))
  history = json.load(open(workdir / 'history.json'))
  return summary, history, seeds


def test_rounds_remove_one_channel_each_and_compile_once_per_compaction(run):
  summary, history, _ = run
  removals = history['removals']
  assert summary['removed'] == len(removals) == ROUNDS
  assert all(h['step'] == 3 * (h['round'] + 1) for h in removals)
  assert len({(h['layer'], h['channel']) for h in removals}) == ROUNDS  # never twice
  # One compilation for the base shapes, then one per compaction (every 8 channels); snapshots
  # are compacted copies and compile only their evaluation.
  assert summary['compilations'] == 1 + ROUNDS // 8


def test_fine_tuning_uses_the_base_final_lr_and_its_own_data_stream(run):
  summary, _, seeds = run
  c = small_config('')
  assert summary['lr'] == pytest.approx(c.train.lr * c.train.lr_decay ** len(c.train.milestones))
  assert seeds == [prune_tune.data_seed(c.seed)] and seeds[0] != c.seed
  ds = train.setup(c).dataset
  first = lambda seed: next(input_pipeline.array_batches(ds, seed, 64, 0, 1))[1]['label']
  assert not np.array_equal(first(seeds[0]), first(c.seed))  # not the base run's batches


def test_trajectory_is_evaluated_every_round_with_cost_so_far(run):
  _, history, _ = run
  evals = history['evaluations']
  # Rounds 0..ROUNDS: the tuned network before each removal, then after the last one.
  assert [e['round'] for e in evals] == list(range(ROUNDS + 1))
  assert [e['removed'] for e in evals] == list(range(ROUNDS + 1))
  params = [e['params'] for e in evals]
  assert params[0] == 77_562 and params == sorted(params, reverse=True)
  assert params[1:] == [h['params'] for h in history['removals']]
  # Training compute adds up round by round: 3 x MACs x prune_every x batch each.
  macs = np.cumsum([3 * e['macs'] * 3 * 64 for e in evals])
  assert [e['train_macs'] for e in evals] == macs.tolist()
  assert all(0 <= e['test_error'] <= 1 for e in evals)
  secs = [e['seconds'] for e in evals]
  assert secs == sorted(secs)


def test_snapshots_are_tuned_before_the_next_removal(run):
  summary, history, _ = run
  removals, evals = history['removals'], history['evaluations']
  assert [s['budget'] for s in summary['snapshots']] == [72_000, 66_000]
  for snap in summary['snapshots']:
    crossing = next(i for i, h in enumerate(removals) if h['params'] <= snap['budget'])
    # Taken after the round that follows the crossing removal, not right after the removal.
    assert snap['round'] == removals[crossing]['round'] + 1
    assert snap['step'] == 3 * (snap['round'] + 1) and snap['removed'] == crossing + 1
    assert snap['params'] == removals[crossing]['params'] <= snap['budget']
    # The run evaluates its masked network; the snapshot, the compacted copy: the same network.
    ev = evals[snap['round']]
    assert ev['params'] == snap['params']
    assert ev['test_error'] == pytest.approx(snap['test_error'], abs=1e-6)
    assert ev['test_loss'] == pytest.approx(snap['test_loss'], rel=1e-4)
    # Its cost: the prune run up to this snapshot.
    assert snap['prune_train_macs'] == ev['train_macs']
  a, b = summary['snapshots']
  assert a['prune_train_macs'] < b['prune_train_macs']
  assert a['prune_seconds'] < b['prune_seconds'] <= summary['seconds']


def test_snapshot_folder_restores_and_reproduces_its_predictions(base, run):
  summary, history, _ = run
  c = small_config(base)
  ts = train.setup(c)
  for snap in summary['snapshots']:
    d = snap['dir']
    spec = spec_lib.load(os.path.join(d, 'spec.json'))
    assert spec_lib.count_params(spec, 10) == snap['params']
    assert json.load(open(os.path.join(d, 'result.json')))['test_error'] == snap['test_error']
    assert json.load(open(os.path.join(d, 'history.json')))['removals'] == (
        history['removals'][:snap['removed']])
    ck = ckpt_lib.Checkpoints(os.path.join(d, 'checkpoint'))
    assert ck.restore_spec() == spec
    model = models.build(spec, 10)
    template = jax.eval_shape(lambda k: train.create_state(
        model, prune_tune.finetune_optimizer(c.prune, summary['lr']), k, (8, 8, 1)),
                              jax.random.key(0))
    state, _ = ck.restore(template)
    mesh = parallel.make_mesh()
    eval_step = jax.jit(train.make_eval_step(model, ts.dataset),
                        out_shardings=parallel.replicated(mesh))
    metrics, preds = train.evaluate(eval_step, state, input_pipeline.eval_batches(c, ts.dataset),
                                    mesh)
    assert metrics['test_error'] == pytest.approx(snap['test_error'], abs=1e-6)
    saved, labels = stats.load_predictions(os.path.join(d, 'predictions.npz'))
    np.testing.assert_array_equal(saved, preds['predictions'])
    np.testing.assert_array_equal(labels, ts.dataset.test_labels)
    assert np.mean(saved != labels) == pytest.approx(snap['test_error'], abs=1e-6)


def test_pruned_architecture_trains_from_scratch(base, run, tmp_path):
  summary, _, _ = run
  c = small_config(base)
  c.model.spec_file = os.path.join(summary['snapshots'][-1]['dir'], 'spec.json')
  final = train.train_and_evaluate(c, str(tmp_path / 'scratch'))
  assert final['params'] == summary['snapshots'][-1]['params']
  preds, labels = stats.load_predictions(tmp_path / 'scratch' / 'predictions.npz')
  assert np.mean(preds != labels) == pytest.approx(final['test_error'], abs=1e-6)


def test_a_finished_run_is_not_extended(base, run):
  summary, _, _ = run
  workdir = os.path.dirname(os.path.dirname(summary['snapshots'][0]['dir']))
  again = prune_tune.prune_and_tune(small_config(base), workdir)
  assert again['removed'] == summary['removed'] and again['snapshots'] == summary['snapshots']


def test_stop_after_last_budget_ends_at_the_last_snapshot(base, tmp_path):
  summary = prune_tune.prune_and_tune(
      small_config(base, stop_after_last_budget=True, eval_every_rounds=50),
      str(tmp_path / 'p'))
  last = summary['snapshots'][-1]
  assert summary['removed'] == last['removed'] < ROUNDS
  evals = json.load(open(tmp_path / 'p' / 'history.json'))['evaluations']
  assert [e['round'] for e in evals] == [0, summary['snapshots'][0]['round'], last['round']]


def test_budget_above_the_base_and_missing_base_are_clear_errors(base, tmp_path):
  with pytest.raises(ValueError, match=r'prune.budgets entry 10000000 must lie in \['):
    prune_tune.prune_and_tune(small_config(base, budgets=(10_000_000,)), str(tmp_path / 'a'))
  with pytest.raises(ValueError, match='no trained checkpoint in prune.base_workdir'):
    prune_tune.prune_and_tune(small_config(tmp_path / 'nothing'), str(tmp_path / 'b'))
  with pytest.raises(ValueError, match="unknown prune criterion 'l3'"):
    prune_tune.prune_and_tune(small_config(base, criterion='l3'), str(tmp_path / 'c'))
  with pytest.raises(ValueError, match='prune.eval_every_rounds must be >= 1'):
    prune_tune.prune_and_tune(small_config(base, eval_every_rounds=0), str(tmp_path / 'd'))
  c = small_config(base)
  c.data.crop_pad = 2  # the base trained with pad 1
  with pytest.raises(ValueError, match=r"data.crop_pad=2 differs from the base network's 1 "):
    prune_tune.prune_and_tune(c, str(tmp_path / 'e'))
  c = small_config(base)
  c.model.dtype = 'bfloat16'  # the base trained in float32
  with pytest.raises(ValueError, match=r"model.dtype='bfloat16' differs from the base network's "
                                       r"'float32' .*; prune with the model settings"):
    prune_tune.prune_and_tune(c, str(tmp_path / 'f'))
  c = small_config(base)
  c.data.data_dir = str(tmp_path / 'elsewhere')  # where the files are may differ
  c.model.spec_file = str(tmp_path / 'spec.json')  # the network pruned is the base's own
  prune_tune.check_base_data(c)
  assert not any((tmp_path / d).exists() for d in 'abcdef')
  assert not (tmp_path / 'nothing').exists()


def test_a_snapshot_taken_again_after_a_resume_replaces_the_old_one(base, tmp_path):
  c = small_config(base, budgets=(72_000,), stop_after_last_budget=True, eval_every_rounds=50,
                   checkpoint_every_rounds=50)
  workdir = tmp_path / 'p'
  first = prune_tune.prune_and_tune(c, str(workdir))
  (snap,) = first['snapshots']
  ckpt_dir = os.path.join(snap['dir'], 'checkpoint')
  before = ckpt_lib.Checkpoints(ckpt_dir).all_steps()
  # A run interrupted after its snapshot but before its next checkpoint: it resumes from an
  # earlier state (here: from the start) and takes the snapshot again at the same step, which
  # Orbax alone would decline to save over the old one.
  with open(os.path.join(ckpt_dir, 'left_by_the_interrupted_run'), 'w') as f:
    f.write('stale')
  shutil.rmtree(workdir / 'checkpoints')
  os.remove(workdir / 'summary.json')
  again = prune_tune.prune_and_tune(c, str(workdir))
  assert again['snapshots'][0]['step'] == snap['step'] and before == [snap['step']]
  assert not os.path.exists(os.path.join(ckpt_dir, 'left_by_the_interrupted_run'))
  assert ckpt_lib.Checkpoints(ckpt_dir).all_steps() == before


@pytest.mark.parametrize('prune', [dict(criterion='taylor', normalise='l2'),
                                   dict(channels_per_round=3)], ids=['taylor_l2', 'three_a_round'])
def test_a_run_resumed_from_an_earlier_checkpoint_makes_the_same_removals(base, tmp_path, prune):
  """A Taylor run with normalised scores (its gradient statistics are part of the checkpointed
  state), and a run removing three channels a round: resumed from an earlier checkpoint, each
  removes the same channels as the run that went straight."""
  per_round = prune.get('channels_per_round', 1)
  c = small_config(base, budgets=(), rounds=12, checkpoint_every_rounds=4, compact_every=16,
                   **prune)
  workdir = tmp_path / 'run'
  first = prune_tune.prune_and_tune(c, str(workdir))
  removals = json.load(open(workdir / 'history.json'))['removals']
  assert len(removals) == 12 * per_round and first['criterion'] == c.prune.criterion
  assert [r['round'] for r in removals] == [i // per_round for i in range(12 * per_round)]
  ckpts = ckpt_lib.Checkpoints(str(workdir / 'checkpoints'))
  steps = ckpts.all_steps()
  ckpts.close()
  assert len(steps) == 2  # keep=2: resume from the older one
  shutil.rmtree(workdir / 'checkpoints' / str(steps[-1]))
  os.remove(workdir / 'summary.json')
  prune_tune.prune_and_tune(c, str(workdir))
  again = json.load(open(workdir / 'history.json'))['removals']
  assert [(r['layer'], r['channel']) for r in again] == [(r['layer'], r['channel'])
                                                          for r in removals]


def resume_from_earlier(c, workdir):
  """Deletes the newest of a finished run's checkpoints and runs it again from the older one
  (what a kill between the two leaves); returns the second run's summary and history."""
  ckpts = ckpt_lib.Checkpoints(str(workdir / 'checkpoints'))
  steps = ckpts.all_steps()
  ckpts.close()
  assert len(steps) == 2, steps  # keep=2
  shutil.rmtree(workdir / 'checkpoints' / str(steps[-1]))
  os.remove(workdir / 'summary.json')
  summary = prune_tune.prune_and_tune(c, str(workdir))
  return summary, json.load(open(workdir / 'history.json'))


def snapshot_widths(summary):
  return [spec_lib.load(os.path.join(s['dir'], 'spec.json')).prunable
          for s in summary['snapshots']]


def test_one_shot_cuts_the_base_to_each_budget_then_tunes_and_resumes_alike(base, tmp_path):
  """Round 0 scores the base; each budget's network is the base cut by those scores to the
  fewest channels that meet it, tuned for finetune_epochs, then snapshotted."""
  c = small_config(base, schedule='one_shot', finetune_epochs=0.25, budgets=(72_000, 60_000),
                   checkpoint_every_rounds=2)
  workdir = tmp_path / 'p'
  first = prune_tune.prune_and_tune(c, str(workdir))
  history = json.load(open(workdir / 'history.json'))
  periods = prune_tune.tune_periods(c.prune, 1437)
  assert periods == 2 and first['schedule'] == 'one_shot'
  assert [e['round'] for e in history['evaluations']] == [0, 2, 4]
  base_spec = spec_lib.wrn(10, 1.0, 1)
  for snap, budget, widths in zip(first['snapshots'], (72_000, 60_000), snapshot_widths(first)):
    assert snap['budget'] == budget and snap['params'] <= budget and snap['budget_unit'] == 'params'
    cut = [r for r in history['removals'] if r['budget'] == budget]
    # the fewest channels: one fewer removal would leave the network above the budget
    assert cut[-2]['params'] > budget >= cut[-1]['params'] == snap['params']
    assert [r['score'] for r in cut] == sorted(r['score'] for r in cut)  # lowest first
    assert list(widths) == [w - sum(r['layer'] == n for r in cut)
                            for n, w in zip(base_spec.prunable_names, base_spec.prunable)]
  # Each budget is charged the scoring round and its own tuning (both start from the base).
  score = history['evaluations'][0]['train_macs']
  for snap in first['snapshots']:
    assert snap['prune_train_macs'] == score + periods * train.training_macs(
        snap['macs'], c.prune.prune_every * c.prune.batch_size)
  again, history2 = resume_from_earlier(c, workdir)
  assert history2['removals'] == history['removals']
  assert snapshot_widths(again) == snapshot_widths(first)


def test_per_layer_ratio_removes_the_same_fraction_of_every_layer_each_round(base, tmp_path):
  c = small_config(base, per_layer_ratio=0.125, rounds=5, budgets=(), checkpoint_every_rounds=2,
                   compact_every=12)
  workdir = tmp_path / 'p'
  prune_tune.prune_and_tune(c, str(workdir))
  removals = json.load(open(workdir / 'history.json'))['removals']
  spec = spec_lib.wrn(10, 1.0, 1)
  for rnd in range(5):
    left = [w - sum(1 for r in removals if r['layer'] == n and r['round'] <= rnd)
            for n, w in zip(spec.prunable_names, spec.prunable)]
    assert left == [w - round((rnd + 1) * 0.125 * w) for w in spec.prunable], rnd
  _, again = resume_from_earlier(c, workdir)
  assert [(r['layer'], r['channel']) for r in again['removals']] == [
      (r['layer'], r['channel']) for r in removals]


def test_macs_budgets_snapshot_at_the_first_round_under_each_and_resume_alike(base, tmp_path):
  base_macs = spec_lib.count_macs(spec_lib.wrn(10, 1.0, 1), 8, 10)
  budgets = (int(0.95 * base_macs), int(0.9 * base_macs))
  c = small_config(base, budget_unit='macs', budgets=budgets, rounds=40,
                   stop_after_last_budget=True, checkpoint_every_rounds=4, compact_every=16)
  workdir = tmp_path / 'p'
  first = prune_tune.prune_and_tune(c, str(workdir))
  evals = json.load(open(workdir / 'history.json'))['evaluations']
  assert [s['budget'] for s in first['snapshots']] == list(budgets)
  for snap in first['snapshots']:
    assert snap['macs'] <= snap['budget'] and snap['budget_unit'] == 'macs'
    before = [e for e in evals if e['round'] == snap['round'] - 1]
    assert before and before[0]['macs'] > snap['budget']  # the round before was above it
  again, _ = resume_from_earlier(c, workdir)
  assert [(s['round'], s['macs']) for s in again['snapshots']] == [
      (s['round'], s['macs']) for s in first['snapshots']]
  with pytest.raises(ValueError, match=r'prune.budgets entry 100 must lie in \[.* macs and '):
    prune_tune.prune_and_tune(small_config(base, budget_unit='macs', budgets=(100,)),
                              str(tmp_path / 'bad'))
  assert not (tmp_path / 'bad').exists()
