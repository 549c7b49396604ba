"""Two processes on localhost train and prune exactly like one process with the same devices.

Each run is real: `python -m launch.train|prune --multihost --coordinator_address=localhost:PORT
--num_processes=2 --process_id=i`, i.e. JAX's distributed runtime on localhost with gloo CPU
collectives, each process holding one CPU device and reading its own rows of every batch, Orbax
checkpoints written and restored by both processes. The reference is one process with two
forced CPU devices: the same mesh shape, so every cross-device reduction (gradient mean, BN
statistics, eval sums) adds the same two per-shard partial results. A sum of two floats does not
depend on the order of its operands, which is why the results are compared exactly, bit for bit.
(One process with one device would reduce 64 rows in one go instead of two halves of 32 and
differ in the last bits.)
"""
import json
import os
import re
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import default
from configs import prune_digits
from jaxbud import checkpoint as ckpt_lib
from jaxbud import models
from jaxbud import parallel
from jaxbud import prune_tune
from jaxbud import spec as spec_lib
from jaxbud import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 300
# WRN-10-1 on digits: 23 steps of 64 images per epoch; evaluating every epoch puts test lines in
# metrics.jsonl at steps 23 and 46, so resumed and uninterrupted runs write the same lines.
TRAIN = ['--config=configs/default.py', '--config.model.depth=10', '--config.model.widen=1',
         '--config.train.eval_every_epochs=1']
# Two Fisher removals; the second crosses the 76,000-parameter budget: compaction, a snapshot
# (evaluated and saved by both processes) and the run's own checkpoint after it.
PRUNE = ['--config=configs/prune_digits.py', '--config.model.depth=10',
         '--config.model.widen=1', '--config.train.epochs=2', '--config.prune.prune_every=3',
         '--config.prune.rounds=2', '--config.prune.budgets=(76000,)',
         '--config.prune.compact_every=64', '--config.prune.log_every_rounds=1',
         '--config.prune.checkpoint_every_rounds=2',
         '--config.prune.stop_after_last_budget=False']


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _start(module, flags, *, devices, processes=1):
  """`processes` Popen objects running `python -m module flags` (a distributed job if > 1)."""
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  port = _free_port()
  procs = []
  for i in range(processes):
    multihost = ([] if processes == 1 else
                 ['--multihost', f'--coordinator_address=localhost:{port}',
                  f'--num_processes={processes}', f'--process_id={i}'])
    procs.append(subprocess.Popen([sys.executable, '-m', module, *flags, *multihost], cwd=ROOT,
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True))
  return procs


def _wait(procs) -> list[str]:
  """Outputs of `procs`, all of which must exit 0 within TIMEOUT_S (else all are killed)."""
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=TIMEOUT_S)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.communicate()
  for i, (p, out) in enumerate(zip(procs, outs)):
    assert p.returncode == 0, f'process {i} exited {p.returncode}:\n{out[-3000:]}'
  return outs


def _lines(workdir, drop=('steps_per_s',)) -> list[dict]:
  """metrics.jsonl without the wall-clock fields."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [{k: v for k, v in json.loads(l).items() if k not in drop} for l in f if l.strip()]


def _load(path) -> dict:
  with open(path) as f:
    return json.load(f)


def _restore(ckpt_dir, template, step=None):
  """The state of a checkpoint, replicated over this (the test's) process's devices."""
  ck = ckpt_lib.Checkpoints(ckpt_dir)
  state, _ = ck.restore(ckpt_lib.abstract(template, parallel.replicated(parallel.make_mesh())),
                        step)
  ck.close()
  return [np.asarray(x) for x in jax.tree.leaves(state)]


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """(2-process workdir, 1-process workdir, outputs of the 2 processes' first run).

  The 2-process job trains 1 epoch, then the same command with 2 epochs resumes it from its
  step-23 checkpoint; the reference trains 2 epochs in one go, concurrently.
  """
  root = tmp_path_factory.mktemp('multiprocess')
  two, one = str(root / 'two'), str(root / 'one')
  reference = _start('launch.train', [*TRAIN, f'--workdir={one}', '--config.train.epochs=2'],
                     devices=2)
  outs = _wait(_start('launch.train', [*TRAIN, f'--workdir={two}', '--config.train.epochs=1'],
                      devices=1, processes=2))
  _wait(_start('launch.train', [*TRAIN, f'--workdir={two}', '--config.train.epochs=2'],
               devices=1, processes=2))
  _wait(reference)
  return two, one, outs


def test_two_processes_train_and_resume_exactly_like_one(trained):
  two, one, outs = trained
  # Every metric, loss and accuracy is identical; process 0 alone wrote each line once.
  assert [l['step'] for l in _lines(two)] == [23, 23, 46, 46]
  assert _lines(two) == _lines(one)
  final_two, final_one = _load(os.path.join(two, 'final.json')), _load(os.path.join(one,
                                                                                     'final.json'))
  assert final_two['step'] == 46
  assert {k: final_two[k] for k in ('test_loss', 'test_error')} == {
      k: final_one[k] for k in ('test_loss', 'test_error')}
  # Progress lines come from process 0 only.
  assert 'test error' in outs[0] and 'test error' not in outs[1]
  # The checkpoints both processes wrote hold the same bits as the reference's: at step 23
  # (end of the first 2-process run) and 46 (after the 2-process resume).
  c = default.get_config()
  c.model.update(depth=10, widen=1.0)
  run = train.setup(c)
  template = jax.eval_shape(lambda k: train.create_state(run.model, run.tx, k, (8, 8, 1)),
                            jax.random.key(0))
  for step in (23, 46):
    a = _restore(os.path.join(two, 'checkpoints'), template, step)
    b = _restore(os.path.join(one, 'checkpoints'), template, step)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
      np.testing.assert_array_equal(x, y)


def test_two_processes_prune_exactly_like_one(trained, tmp_path):
  two, one, _ = trained
  pdirs = {'two': str(tmp_path / 'two'), 'one': str(tmp_path / 'one')}
  reference = _start('launch.prune', [*PRUNE, f'--workdir={pdirs["one"]}',
                                      f'--config.prune.base_workdir={one}'], devices=2)
  _wait(_start('launch.prune', [*PRUNE, f'--workdir={pdirs["two"]}',
                                f'--config.prune.base_workdir={two}'],
               devices=1, processes=2))
  _wait(reference)
  history = {k: _load(os.path.join(d, 'history.json')) for k, d in pdirs.items()}
  removals = history['two']['removals']
  assert len(removals) == 2 and removals == history['one']['removals']  # channels, scores
  untimed = {k: [{f: v for f, v in e.items() if f != 'seconds'} for e in h['evaluations']]
             for k, h in history.items()}
  assert untimed['two'] == untimed['one'] and untimed['two'][0]['round'] == 0
  assert {l['step'] for l in _lines(pdirs['two'])} == {3, 6, 9}  # 3 rounds of 3 steps
  assert _lines(pdirs['two']) == _lines(pdirs['one'])
  snaps = {k: os.path.join(d, 'snapshots', '76000') for k, d in pdirs.items()}
  results = {k: _load(os.path.join(s, 'result.json')) for k, s in snaps.items()}
  assert results['two'].pop('dir') != results['one'].pop('dir')
  results['two'].pop('prune_seconds'), results['one'].pop('prune_seconds')
  assert results['two'] == results['one']
  # The snapshot checkpoint both processes saved (compacted, smaller shapes) equals the reference.
  spec = spec_lib.load(os.path.join(snaps['two'], 'spec.json'))
  assert spec_lib.count_params(spec, 10) == results['two']['params'] <= 76_000
  c = prune_digits.get_config()
  model = models.build(spec, 10)
  template = jax.eval_shape(lambda k: train.create_state(
      model, prune_tune.finetune_optimizer(c.prune, 1.0), k, (8, 8, 1)), jax.random.key(0))
  a = _restore(os.path.join(snaps['two'], 'checkpoint'), template)
  b = _restore(os.path.join(snaps['one'], 'checkpoint'), template)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize('flags, message', [
    (['--multihost', '--num_processes=2'],
     'needs all of --coordinator_address, --num_processes and --process_id or none of them '
     r'\(auto-detection from the environment\); missing --coordinator_address, --process_id'),
    (['--multihost', '--coordinator_address=localhost:1', '--num_processes=2', '--process_id=2'],
     '--process_id=2 must be below --num_processes=2'),
    (['--process_id=0'], 'only apply with --multihost'),
])
def test_incomplete_distributed_flags_are_one_line_errors(flags, message, tmp_path):
  out = subprocess.run([sys.executable, '-m', 'launch.train', '--config=configs/default.py',
                        f'--workdir={tmp_path / "w"}', *flags], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, check=False)
  assert out.returncode == 2
  assert out.stderr.startswith('error: ') and len(out.stderr.strip().splitlines()) == 1
  assert re.search(message, out.stderr), out.stderr
  assert not (tmp_path / 'w').exists()
