"""Preemption-safe runs: kills at random moments, SIGTERM, corrupt checkpoints, the NaN guard.

The kill tests run the real launchers in subprocesses, interrupt them several times at random
moments (SIGKILL, and SIGTERM which must save first), re-run the same command until it finishes,
and compare with an uninterrupted run: final params bit for bit, prune history and metrics.
Set JAXBUD_KILL_SEED to replay a failing sequence of kill moments.
"""
import gc
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import default
from configs import prune_digits
from jaxbud import checkpoint as ckpt_lib
from jaxbud import metrics as metrics_lib
from jaxbud import models
from jaxbud import preempt
from jaxbud import prune_tune
from jaxbud import spec as spec_lib
from jaxbud import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_FLAGS = ['--config.model.depth=10', '--config.model.widen=1', '--config.train.epochs=5',
               '--config.train.batch_size=32', '--config.train.log_every_steps=5']
KILLS = (signal.SIGKILL, signal.SIGTERM, signal.SIGKILL)


def train_config(**train_fields):
  c = default.get_config()
  c.model.update(depth=10, widen=1.0)
  c.train.update({'epochs': 5, 'batch_size': 32, 'log_every_steps': 5, **train_fields})
  return c


def kill_seed() -> int:
  return int(os.environ.get('JAXBUD_KILL_SEED', random.SystemRandom().randrange(10**6)))


def interrupt_and_finish(args, workdir, seed, window_s):
  """Runs `args` killed at random moments (one per KILLS signal), then to the end.

  Each kill comes a uniform random time in [0, window_s) after the run's first metrics line
  exists in this attempt (so it lands while training, not while compiling). Returns the final
  run's stderr and a description of what happened, for assertion messages.
  """
  rng, log = random.Random(seed), [f'JAXBUD_KILL_SEED={seed}']
  metrics = os.path.join(workdir, 'metrics.jsonl')
  for sig in KILLS:
    before = os.path.getsize(metrics) if os.path.exists(metrics) else -1
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline and (
        not os.path.exists(metrics) or os.path.getsize(metrics) <= max(before, 0)):
      time.sleep(0.02)
    delay = rng.uniform(0, window_s)
    time.sleep(delay)
    if proc.poll() is not None:
      log.append(f'finished before {sig.name} at +{delay:.2f}s')
      break
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    log.append(f'{sig.name} at +{delay:.2f}s -> exit {proc.returncode}')
    if sig == signal.SIGTERM and proc.returncode != 0:  # 0: it finished meanwhile
      # In the loop it saves the step and stops; after the loop (final evaluation) it stops
      # with the last checkpoint as it is. Either way: exit 143, and the re-run resumes.
      assert proc.returncode == 143, (log, err[-3000:])
      assert ('preempted: SIGTERM: saved' in err or
              'preempted: SIGTERM outside a training loop' in err), (log, err[-3000:])
      log.append(err.strip().splitlines()[-1])
  print('\n'.join(log))
  r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, (log, r.stderr[-3000:])
  return r.stderr, log


def saved_arrays(ckpt_dir, step=None) -> dict:
  manager = ocp.CheckpointManager(os.path.abspath(ckpt_dir), item_names=('state',))
  step = manager.latest_step() if step is None else step
  out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return jax.tree.map(np.asarray, dict(out['state']))


def assert_same_arrays(a: dict, b: dict):
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def metric_records(workdir) -> list:
  return [{k: v for k, v in r.items() if k != 'steps_per_s'} for r in metrics_lib.read(workdir)]


def test_sigterm_sets_the_flag_in_a_loop_and_stops_a_launcher_elsewhere():
  before = signal.getsignal(signal.SIGTERM)
  with preempt.handling_sigterm():  # what jaxbud.cli.run holds around a launcher
    with preempt.Preemption() as p:  # a loop: the signal only sets the flag it polls
      assert not p.requested(1)
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(0.05)  # the handler runs at the next bytecode
      assert p.requested(1)
    with pytest.raises(preempt.Preempted, match='SIGTERM outside a training loop'):
      os.kill(os.getpid(), signal.SIGTERM)  # between loops (or after the last): stop now
      time.sleep(1)
  assert signal.getsignal(signal.SIGTERM) is before
  with preempt.Preemption() as p:  # library use, no launcher: a handler for the loop only
    assert not p.requested(1)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.05)
    assert p.requested(1)
  assert signal.getsignal(signal.SIGTERM) is before


def test_train_killed_at_random_moments_ends_bit_identical(tmp_path):
  workdir = tmp_path / 'killed'
  args = [sys.executable, '-m', 'launch.train', '--config=configs/default.py',
          f'--workdir={workdir}', *TRAIN_FLAGS]
  _, log = interrupt_and_finish(args, str(workdir), kill_seed(), window_s=4.0)
  straight = tmp_path / 'straight'
  final = train.train_and_evaluate(train_config(), str(straight))
  resumed = json.load(open(workdir / 'final.json'))
  assert (resumed['test_loss'], resumed['test_error']) == (
      final['test_loss'], final['test_error']), log
  assert_same_arrays(saved_arrays(workdir / 'checkpoints'), saved_arrays(straight / 'checkpoints'))
  assert metric_records(workdir) == metric_records(straight), log


@pytest.fixture(scope='module')
def base(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('base')
  c = prune_config('')
  train.train_and_evaluate(c, str(workdir))
  return workdir


PRUNE = dict(prune_every=3, rounds=30, budgets=(70_000, 60_000), compact_every=15,
             log_every_rounds=2, checkpoint_every_rounds=5, stop_after_last_budget=False,
             eval_every_rounds=4)


def prune_config(base_workdir):
  c = prune_digits.get_config()
  c.model.update(depth=10, widen=1.0)
  c.train.update(epochs=2)
  c.prune.update(base_workdir=str(base_workdir), **PRUNE)
  return c


def test_prune_run_killed_at_random_moments_ends_bit_identical(base, tmp_path):
  workdir = tmp_path / 'killed'
  args = [sys.executable, '-m', 'launch.prune', '--config=configs/prune_digits.py',
          f'--workdir={workdir}', f'--config.prune.base_workdir={base}',
          '--config.model.depth=10', '--config.train.epochs=2',
          *(f'--config.prune.{k}={v}'.replace(' ', '') for k, v in PRUNE.items())]
  err, log = interrupt_and_finish(args, str(workdir), kill_seed(), window_s=3.0)
  straight = tmp_path / 'straight'
  summary = prune_tune.prune_and_tune(prune_config(base), str(straight))
  assert untimed(json.load(open(workdir / 'history.json'))) == untimed(json.load(
      open(straight / 'history.json'))), (log, err[-2000:])
  assert_same_arrays(saved_arrays(workdir / 'checkpoints'), saved_arrays(straight / 'checkpoints'))
  assert metric_records(workdir) == metric_records(straight), log
  resumed = json.load(open(workdir / 'summary.json'))
  assert untimed(resumed['snapshots']) == untimed([
      {**s, 'dir': s['dir'].replace(str(straight), str(workdir))} for s in summary['snapshots']])
  # Elapsed seconds are carried through the resumes (tests/test_loop.py checks the sum), so
  # later snapshots cost more.
  assert [s['prune_seconds'] for s in resumed['snapshots']] == sorted(
      s['prune_seconds'] for s in resumed['snapshots'])


def untimed(x):
  """`x` without wall-clock fields (seconds), which differ between any two runs."""
  if isinstance(x, dict):
    return {k: untimed(v) for k, v in x.items() if k not in ('seconds', 'prune_seconds')}
  if isinstance(x, list):
    return [untimed(v) for v in x]
  return x


# A failed Orbax read leaves TensorStore coroutines behind; they are garbage-collected later and
# reported as unraisable exceptions. The damaged-checkpoint tests expect those failures, so they
# collect them before finishing and silence that one warning.
expected_read_failures = pytest.mark.filterwarnings(
    'ignore::pytest.PytestUnraisableExceptionWarning')


@pytest.fixture
def collect_garbage():
  yield
  gc.collect()


def small_state(seed=1):
  spec = spec_lib.wrn(10, 1, in_channels=1)
  tx = train.make_optimizer(default.get_config().train, steps_per_epoch=10)
  return spec, train.create_state(models.build(spec, 10), tx, jax.random.key(seed), (8, 8, 1))


def largest_file(step_dir):
  files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs]
  return max(files, key=os.path.getsize)


@expected_read_failures
@pytest.mark.parametrize('damage', ['truncate', 'flip', 'delete_meta'])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, damage, caplog,
                                                                   collect_garbage):
  spec, state = small_state()
  ckpts = ckpt_lib.Checkpoints(tmp_path, keep=3)
  for step in (1, 2):
    ckpts.save(step, state.replace(step=state.step + step), spec, {'n': step})
  ckpts.wait()
  path = largest_file(tmp_path / '2' / 'state')
  if damage == 'truncate':
    os.truncate(path, os.path.getsize(path) // 2)
  elif damage == 'flip':  # same size, different bytes: only the checksum can tell
    data = bytearray(open(path, 'rb').read())
    data[len(data) // 2] ^= 0xFF
    open(path, 'wb').write(bytes(data))
  else:
    os.remove(tmp_path / '2' / 'meta' / 'metadata')

  reader = ckpt_lib.Checkpoints(tmp_path, keep=3)
  step, (restored, meta) = reader.restore_newest(
      lambda s: reader.restore(ckpt_lib.abstract(state), s))
  assert step == 1 and meta == {'n': 1} and int(restored.step) == 1
  assert 'checkpoint step 2 in' in caplog.text and 'falling back to step 1' in caplog.text
  # Nothing deleted: the bad step is set aside, and the run saves past it.
  assert sorted(os.listdir(tmp_path)) == ['1', '2.unreadable']
  reader.save(2, state, spec)
  reader.wait()
  assert reader.all_steps() == [1, 2]


@expected_read_failures
def test_no_readable_checkpoint_means_a_fresh_start(tmp_path, collect_garbage):
  spec, state = small_state()
  ckpts = ckpt_lib.Checkpoints(tmp_path)
  ckpts.save(5, state, spec)
  ckpts.wait()
  os.truncate(largest_file(tmp_path / '5' / 'state'), 10)
  assert ckpts.restore_newest(lambda s: ckpts.restore(ckpt_lib.abstract(state), s)) is None
  assert os.listdir(tmp_path) == ['5.unreadable']


def test_an_unfinished_write_never_looks_like_a_checkpoint(tmp_path):
  """Orbax writes into '<step>.orbax-checkpoint-tmp-*' and renames it when complete."""
  spec, state = small_state()
  ckpts = ckpt_lib.Checkpoints(tmp_path)
  ckpts.save(1, state, spec)
  ckpts.wait()
  shutil.copytree(tmp_path / '1', tmp_path / '2.orbax-checkpoint-tmp-1234')  # a crash mid-write
  assert ckpt_lib.Checkpoints(tmp_path).all_steps() == [1]


@expected_read_failures
def test_damaged_run_checkpoint_resumes_from_the_previous_epoch(tmp_path, caplog,
                                                                collect_garbage):
  c = train_config(epochs=2, checkpoint_every_epochs=1)
  workdir = tmp_path / 'run'
  first = train.train_and_evaluate(c, str(workdir))
  os.truncate(largest_file(workdir / 'checkpoints' / '90' / 'state'), 100)
  again = train.train_and_evaluate(c, str(workdir))  # redoes epoch 2 from step 45
  assert 'checkpoint step 90' in caplog.text and 'falling back to step 45' in caplog.text
  assert (again['test_loss'], again['test_error']) == (first['test_loss'], first['test_error'])
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['45', '90', '90.unreadable']


def files_and_mtimes(path) -> dict:
  return {os.path.join(r, f): os.stat(os.path.join(r, f)).st_mtime_ns
          for r, _, fs in os.walk(path) for f in fs}


def test_checkpoint_of_another_spec_is_an_error_naming_both(tmp_path):
  workdir = tmp_path / 'run'
  train.train_and_evaluate(train_config(epochs=1), str(workdir))
  before = files_and_mtimes(workdir)
  c = train_config(epochs=1)
  c.model.widen = 2.0
  with pytest.raises(ValueError, match=r'holds spec .*"inner":\[16,32,64\].* but the config '
                                       r'gives .*"inner":\[32,64,128\]'):
    train.train_and_evaluate(c, str(workdir))
  assert files_and_mtimes(workdir) == before  # config.json, spec.json, checkpoints untouched


def test_divergence_stops_with_the_step_range_and_keeps_the_last_good_checkpoint(tmp_path):
  # lr 0.1 for epoch 1, then x1e6: the loss overflows during epoch 2 (steps 46..90).
  c = train_config(epochs=3, schedule='multistep', milestones=(1,), lr_decay=1e6,
                   checkpoint_every_epochs=1, log_every_steps=100)
  workdir = tmp_path / 'run'
  with pytest.raises(preempt.NonFiniteError, match=r'between steps 46 and 90: .*non-finite.*'
                                                   r'last good checkpoint, step 45'):
    train.train_and_evaluate(c, str(workdir))
  assert os.listdir(workdir / 'checkpoints') == ['45']
  assert max(r['step'] for r in metrics_lib.read(workdir)) == 45


def test_launcher_divergence_is_one_line_exit_1(tmp_path):
  r = subprocess.run(
      [sys.executable, '-m', 'launch.train', '--config=configs/default.py',
       f'--workdir={tmp_path}/run', *TRAIN_FLAGS, '--config.train.epochs=1',
       '--config.train.lr=1e7'], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode == 1, r.stderr[-2000:]
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith('error: training in') and 'diverged between steps 1 and' in last
  assert 'Traceback' not in r.stderr
