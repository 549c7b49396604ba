"""A tiny study end to end: every arm, the report, and a re-run that reuses finished runs."""
import csv
import os

import jax.numpy as jnp
import pytest

from configs import study_digits
from jaxbud import spec as spec_lib
from jaxbud import study


def tiny_study_config():
  c = study_digits.get_config()
  c.model.update(depth=10, widen=1.0)           # WRN-10-1: 77,562 params
  c.train.update(epochs=2, eval_every_epochs=2, checkpoint_every_epochs=2)
  c.prune.update(prune_every=2, rounds=60, compact_every=16, log_every_rounds=20)
  c.study.update(criteria=('fisher',), budgets=(60_000,), copycat_budget=60_000,
                 seeds=(0,), latency_batch_sizes=(1, 8), latency_repeats=2)
  return c


def test_closest_and_copycat_hit_the_budget():
  base = spec_lib.wrn(16, 2)
  s = study.closest(lambda k: spec_lib.wrn(16, k), 400_000, 1 / 16, 2.0, 10)
  assert abs(spec_lib.count_params(s, 10) - 400_000) < 0.05 * 400_000
  profile = base.with_prunable((5, 0, 40, 10, 100, 3))
  cc = study.copycat_spec(profile, 300_000, 10)
  assert abs(spec_lib.count_params(cc, 10) - 300_000) < 0.03 * 300_000
  assert cc.prunable[1] >= 1  # the copycat rule max(1, round(s * w)) revives empty blocks
  assert cc.prunable[4] > cc.prunable[3] > cc.prunable[0]  # the profile's shape is kept


def test_bad_study_settings_are_clear_errors():
  c = tiny_study_config()
  c.study.update(budgets=(10_000_000,), copycat_budget=10_000_000)
  with pytest.raises(ValueError, match=r'study.budgets entry 10000000 must be in \(0, 77562\)'):
    study.Study(c, '/nonexistent/never/written')
  c = tiny_study_config()
  c.study.reduced = ('densenet_growth',)
  with pytest.raises(ValueError, match="does not fit the base wrn"):
    study.Study(c, '/nonexistent/never/written')


def test_tiny_study_writes_the_report_and_reuses_finished_runs(tmp_path):
  c = tiny_study_config()
  out = study.run_study(c, str(tmp_path))
  for name in ('report.md', 'results.json', 'results.csv', 'error_vs_params.png',
               'latency_vs_params.png', 'width_profiles.png'):
    assert (tmp_path / name).stat().st_size > 0, name
  rows = list(csv.DictReader(open(tmp_path / 'results.csv')))
  arms = {(r['arm'], r['family']) for r in rows}
  assert {('base', 'base'), ('pruned', 'fisher'), ('scratch', 'fisher'), ('copycat', 'fisher'),
          ('reduced', 'wrn_width'), ('reduced', 'wrn_bottleneck')} <= arms
  for r in rows:
    assert 0 <= float(r['test_error']) <= 1 and float(r['latency_b1_s']) > 0
  report = open(tmp_path / 'report.md').read()
  for rq in ('RQ1', 'RQ2', 'RQ3', 'RQ4', 'RQ5'):
    assert f'**{rq}.**' in report
  assert set(out['answers']) == {'RQ1', 'RQ2', 'RQ3', 'RQ4', 'RQ5'}
  # Re-running reuses every finished run: no result file is rewritten.
  finals = sorted(str(p) for p in tmp_path.rglob('final.json')) + \
      [str(tmp_path / 'prune_fisher' / 'summary.json')]
  stamps = {p: os.stat(p).st_mtime_ns for p in finals}
  study.run_study(c, str(tmp_path))
  assert {p: os.stat(p).st_mtime_ns for p in finals} == stamps


def test_equal_test_errors_are_a_tie_not_a_win():
  from jaxbud import report  # pylint: disable=g-import-not-at-top
  two_seed_mean = {'test_error': (3 / 360 + 5 / 360) / 2}  # 1.11% as a mean of two seeds
  one_run = {'test_error': float(jnp.float32(4 / 360))}    # 1.11% as one float32 run
  assert not report._less(two_seed_mean, one_run)  # pylint: disable=protected-access
  assert not report._less(one_run, two_seed_mean)  # pylint: disable=protected-access
  assert report._less({'test_error': 3 / 360}, one_run)  # pylint: disable=protected-access
