"""The bad-input catalogue of docs/reliability.md: one clear error, and the workdir as it was.

Through the API each entry is a jaxbud.errors.UsageError (a ValueError); through a launcher it
is one line on stderr and exit status 2, while any other exception keeps its traceback and exits
with status 1 (tests/test_launch.py has more launcher cases). Entries tested elsewhere: missing
data (tests/test_data_tfds.py), a batch not divisible by the devices (tests/test_parallel.py), a
checkpoint of another spec (tests/test_reliability.py), malformed spec JSON in detail
(tests/test_spec.py), bad benchmark settings (tests/test_bench.py).
"""
import os
import re
import subprocess
import sys

import pytest

from configs import default
from configs import prune_digits
from jaxbud import errors
from jaxbud import prune_tune
from jaxbud import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tree(path) -> dict:
  """{relative path: (size, mtime)} of everything under `path` (empty if it does not exist)."""
  out = {}
  for root, _, files in os.walk(path):
    for f in files:
      p = os.path.join(root, f)
      out[os.path.relpath(p, path)] = (os.path.getsize(p), os.stat(p).st_mtime_ns)
  return out


@pytest.fixture(scope='module')
def base(tmp_path_factory):
  """A trained tiny WRN-10-1 to prune; its folder must come through every test unchanged."""
  workdir = tmp_path_factory.mktemp('base')
  c = default.get_config()
  c.model.update(depth=10, widen=1.0)
  c.train.update(epochs=1)
  train.train_and_evaluate(c, str(workdir))
  return workdir


def bad_spec_file(tmp_path):
  path = tmp_path / 'spec.json'
  path.write_text('{"family": "wrn", "depth": 10,')
  return str(path)


def not_a_directory(tmp_path):
  (tmp_path / 'file').write_text('')
  return str(tmp_path / 'file' / 'run')


TRAIN_CASES = {
    'unknown model family': (dict(model=dict(family='vgg')), r"unknown model.family 'vgg'"),
    'unknown dataset': (dict(data=dict(name='mnist')), r"unknown dataset 'mnist'"),
    'invalid depth': (dict(model=dict(depth=12)), r'WRN depth must be 6n\+4'),
    'invalid width': (dict(model=dict(widen=0.0)), r'widen'),
    'batch above the data': (dict(train=dict(batch_size=5000)), 'larger than the 1437'),
    'negative epochs': (dict(train=dict(epochs=-1)), r'train.epochs must be >= 0'),
    'malformed spec file': (dict(model=dict(spec_file=bad_spec_file)),
                            r'spec file .*spec.json: spec is not valid JSON'),
    'missing spec file': (dict(model=dict(spec_file=lambda p: str(p / 'nope.json'))),
                          r'cannot read spec file .*nope.json'),
    'unwritable workdir': ('workdir', r'cannot create workdir .*file/run: Not a directory'),
}


def resolve(value, tmp_path):
  if isinstance(value, dict):
    return {k: resolve(v, tmp_path) for k, v in value.items()}
  return value(tmp_path) if callable(value) else value


@pytest.mark.parametrize('case', sorted(TRAIN_CASES))
def test_train_catalogue(case, tmp_path):
  change, message = TRAIN_CASES[case]
  c = default.get_config()
  c.model.update(depth=10, widen=1.0)
  workdir = str(tmp_path / 'run')
  if change == 'workdir':
    workdir = not_a_directory(tmp_path)
  else:
    for section, fields in resolve(change, tmp_path).items():
      c[section].update(fields)
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(c, workdir)
  assert not os.path.exists(tmp_path / 'run')


PRUNE_CASES = {
    'unknown criterion': (dict(criterion='l3'), r"unknown prune criterion 'l3'"),
    'budget above the base': (dict(budgets=(10_000_000,)),
                              r'prune.budgets entry 10000000 must lie in \['),
    'budget below zero': (dict(budgets=(-5,)), r'prune.budgets entry -5 must lie in \['),
    'more channels than exist': (dict(rounds=113),
                                 r'prune.rounds=113 removes more channels than the 112'),
    'zero rounds': (dict(rounds=0), r'prune.rounds must be >= 1'),
    'no trained base': (dict(base_workdir='nothing'),
                        r'no trained checkpoint in prune.base_workdir'),
}


@pytest.mark.parametrize('case', sorted(PRUNE_CASES))
def test_prune_catalogue(case, base, tmp_path):
  fields, message = PRUNE_CASES[case]
  c = prune_digits.get_config()
  c.model.update(depth=10, widen=1.0)
  c.prune.update(base_workdir=str(base), rounds=50)
  c.prune.update(fields)
  before = tree(base)
  with pytest.raises(ValueError, match=message):
    prune_tune.prune_and_tune(c, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run')
  assert tree(base) == before


def launch(module, *args):
  return subprocess.run([sys.executable, '-m', module, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=300)


def assert_one_line_exit_2(r, message):
  assert r.returncode == 2, r.stderr[-2000:]
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), r.stderr[-2000:]
  assert re.search(message, lines[0]), lines[0]


def test_launchers_unwritable_workdir_and_malformed_spec(tmp_path):
  r = launch('launch.train', '--config=configs/default.py',
             f'--workdir={not_a_directory(tmp_path)}')
  assert_one_line_exit_2(r, r'cannot create workdir .*: Not a directory')
  r = launch('launch.train', '--config=configs/default.py', f'--workdir={tmp_path}/run',
             f'--config.model.spec_file={bad_spec_file(tmp_path)}')
  assert_one_line_exit_2(r, 'spec is not valid JSON')
  assert not (tmp_path / 'run').exists()


def test_prune_launcher_budget_and_rounds(base, tmp_path):
  common = ['--config=configs/prune_digits.py', f'--workdir={tmp_path}/run',
            f'--config.prune.base_workdir={base}', '--config.model.depth=10',
            '--config.prune.rounds=50']
  r = launch('launch.prune', *common, '--config.prune.budgets=(-5,)')
  assert_one_line_exit_2(r, r'prune.budgets entry -5 must lie in')
  r = launch('launch.prune', *common, '--config.prune.rounds=500')
  assert_one_line_exit_2(r, r'prune.rounds=500 removes more channels than the 112 prunable')
  assert not (tmp_path / 'run').exists()


def test_an_internal_error_keeps_its_traceback_and_exits_1(tmp_path):
  """Only UsageError is the user's: a ValueError from inside JAX is a bug, shown in full."""
  code = (
      'import runpy, sys\n'
      'import jax.numpy as jnp\n'
      'from jaxbud import train\n'
      'def broken_step(*args, **kwargs):\n'
      '  return lambda state, batch: (jnp.stack([jnp.ones(3), jnp.ones(4)]), {})\n'
      'train.make_train_step = broken_step\n'
      f'sys.argv = ["train", "--config=configs/default.py", "--workdir={tmp_path}/run",\n'
      '            "--config.model.depth=10", "--config.train.epochs=1"]\n'
      'runpy.run_module("launch.train", run_name="__main__")\n')
  r = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 1, r.stderr[-2000:]
  assert 'Traceback' in r.stderr and 'jaxbud/loop.py' in r.stderr
  assert 'ValueError: All input arrays must have the same shape' in r.stderr
  assert '\nerror: ' not in r.stderr


def test_user_errors_are_usage_errors():
  c = default.get_config()
  c.model.family = 'vgg'
  with pytest.raises(errors.UsageError):
    train.setup(c)
