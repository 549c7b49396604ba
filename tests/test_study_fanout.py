"""A study fanned out over jobs (study.shard, study.only) that share one workdir, and the report
step (study.report_only) on a finished and a partly finished study."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from configs import study_digits
from jaxbud import study

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def micro_config():
  """WRN-10-1 on digits, one epoch: two base networks and prune runs, a reduced network and the
  pruned architecture from scratch, two seeds each (8 runs; the copycat is the scratch run)."""
  c = study_digits.get_config()
  c.model.update(depth=10, widen=1.0)  # 77,562 params
  c.train.update(epochs=1, milestones=(), eval_every_epochs=1, checkpoint_every_epochs=1)
  c.prune.update(rounds=100, prune_every=2, compact_every=64, log_every_rounds=50,
                 eval_every_rounds=40)
  c.study.update(criteria=('fisher',), budgets=(60_000,), copycat_budget=60_000, seeds=(0, 1),
                 prune_seeds=(0, 1), reduced=('wrn_width',), depths=(), scratch_b=False,
                 latency_batch_sizes=(1, 8), latency_repeats=2, poll_seconds=0.2)
  return c


RUNS = {'base/seed0', 'base/seed1', 'arms/reduced/wrn_width_budget60000/seed0',
        'arms/reduced/wrn_width_budget60000/seed1', 'prune_fisher/seed0', 'prune_fisher/seed1',
        'arms/scratch/fisher_budget60000/seed0', 'arms/scratch/fisher_budget60000/seed1'}


def _report_step(workdir):
  c = micro_config()
  c.study.report_only = True
  return study.run_study(c, str(workdir))


def _trained_by(log: str) -> set:
  return {l.split('trained here: ')[1].strip() for l in log.splitlines() if 'trained here: ' in l}


def test_bad_fan_out_settings_are_clear_errors(tmp_path):
  for field, value, match in (('shard', '2/2', r"study.shard must be 'i/n' with 0 <= i < n"),
                              ('shard', 'half', r"study.shard must be 'i/n'"),
                              ('poll_seconds', 0.0, 'must be > 0')):
    c = micro_config()
    c.study[field] = value
    with pytest.raises(ValueError, match=match):
      study.run_study(c, str(tmp_path / 'never'))
  c = micro_config()
  c.study.update(report_only=True, only='base/*')
  with pytest.raises(ValueError, match='study.report_only trains nothing'):
    study.run_study(c, str(tmp_path / 'never'))
  assert not (tmp_path / 'never').exists()


def test_report_step_on_an_empty_workdir_lists_every_run_and_trains_nothing(tmp_path):
  out = _report_step(tmp_path)
  assert not out['rows']
  assert {u.split(' ')[0] for u in out['unfinished']} == RUNS
  assert 'arms/scratch/fisher_budget60000/seed0 (waits for the prune runs)' in out['unfinished']
  text = (tmp_path / 'report.md').read_text()
  assert 'No base network has finished yet.' in text and '`base/seed1`' in text
  assert not list(tmp_path.rglob('fingerprint.json'))


@pytest.fixture(scope='module')
def fanned(tmp_path_factory):
  """Two shard jobs started together on one workdir, as two processes."""
  tmp = tmp_path_factory.mktemp('fan')
  cfg = tmp / 'micro.py'
  cfg.write_text(f'import sys\nsys.path.insert(0, {ROOT!r})\n'
                 'from tests.test_study_fanout import micro_config\n\n\n'
                 'def get_config():\n  return micro_config()\n')
  workdir = tmp / 'study'
  procs = [subprocess.Popen(
      [sys.executable, '-m', 'launch.study', f'--config={cfg}', f'--workdir={workdir}',
       f'--config.study.shard={i}/2'], cwd=ROOT, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(2)]
  logs = [p.communicate(timeout=900)[0] for p in procs]
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  return workdir, logs


def test_shard_jobs_split_the_runs_and_never_share_one(fanned):
  workdir, logs = fanned
  mine = [_trained_by(log) for log in logs]
  assert not mine[0] & mine[1] and mine[0] | mine[1] == RUNS, mine
  # Stage by stage, every other run: each job trains a base network, a reduced network, the
  # prune run of its base network and one scratch run.
  assert mine[0] == {r for r in RUNS if r.endswith('seed0')}
  for i, runs in enumerate(mine):
    for rel in runs:  # the folder says which job made it
      assert json.load(open(workdir / rel / 'fingerprint.json'))['job'] == f'shard {i}/2'
  # Stage C needs both prune runs: whichever job finished its own first waited for the other's.
  assert any('waiting for prune_fisher/seed' in log for log in logs)
  assert all('--config.study.report_only=True' in log for log in logs)
  assert not (workdir / 'report.md').exists()  # the report step writes it


def test_report_step_reports_the_finished_and_lists_the_unfinished(fanned):
  workdir, _ = fanned
  out = _report_step(workdir)
  assert out['unfinished'] == []
  assert {(r['arm'], r['family']) for r in out['rows']} == {
      ('base', 'base'), ('pruned', 'fisher'), ('reduced', 'wrn_width'), ('scratch', 'fisher'),
      ('copycat', 'fisher')}
  assert 'Unfinished runs' not in (workdir / 'report.md').read_text()
  # One scratch run unfinished (its final.json not yet written): its point (and the copycat,
  # which is the same run) leaves the results and RQ2; the rest is reported.
  final = workdir / 'arms/scratch/fisher_budget60000/seed1/final.json'
  shutil.move(final, final.with_suffix('.bak'))
  try:
    out = _report_step(workdir)
  finally:
    shutil.move(final.with_suffix('.bak'), final)
  assert out['unfinished'] == ['arms/scratch/fisher_budget60000/seed1']
  assert {r['arm'] for r in out['rows']} == {'base', 'pruned', 'reduced'}
  assert out['answers']['RQ2'][0].endswith('not measured in this run.')
  assert 'RQ1' in out['answers'] and out['answers']['RQ1'][1]
  text = (workdir / 'report.md').read_text()
  assert '## Unfinished runs' in text and '`arms/scratch/fisher_budget60000/seed1`' in text


def test_an_only_job_trains_its_glob_and_a_job_with_another_config_is_refused(fanned, tmp_path):
  workdir, _ = fanned
  c = micro_config()
  c.study.only = 'arms/reduced/*'
  c.train.lr = 0.05
  with pytest.raises(ValueError, match=r'holds a study with another config \(train.lr differ\)'):
    study.run_study(c, str(workdir))
  # A job that trains the reduced networks only needs no other run, so it waits for nothing.
  c = micro_config()
  c.study.only = 'arms/reduced/*'
  out = study.run_study(c, str(tmp_path))
  assert set(out['trained']) == {r for r in RUNS if r.startswith('arms/reduced/')}
  assert not out['elsewhere'] and 'base/seed0' in out['unfinished']


def test_a_study_begun_before_newer_fields_is_continued_unless_they_change(tmp_path):
  """config.json of a study written before prune.schedule (and the other fields added since)
  existed: a job with those fields at their neutral values joins it; another value is refused."""
  stored = json.loads(micro_config().to_json())
  for field in ('schedule', 'finetune_epochs', 'per_layer_ratio', 'budget_unit',
                'channels_per_round', 'normalise'):
    del stored['prune'][field]
  del stored['train']['bn_l1']
  (tmp_path / 'config.json').write_text(json.dumps(stored))
  study.check_same_study(str(tmp_path), micro_config())
  c = micro_config()
  c.prune.schedule = 'one_shot'
  with pytest.raises(ValueError, match=r'another config \(prune.schedule differ\)'):
    study.check_same_study(str(tmp_path), c)
