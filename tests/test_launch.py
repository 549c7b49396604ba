"""The train launcher as a user runs it: bad input and a prepared CIFAR data_dir.

Kill-and-resume of the launchers is in tests/test_reliability.py.
"""
import json
import os
import subprocess
import sys

import pytest

from configs import study_digits
from jaxbud import cli


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ['--config.model.depth=10', '--config.model.widen=1']


def launch(*args, timeout=300):
  return subprocess.run([sys.executable, '-m', 'launch.train', *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize('flags, message', [
    (['--config.train.nonsense=1'], 'nonsense'),
    (['--config.model.depth=12'], r'WRN depth must be 6n\+4'),
    (['--config.model.family=vgg'], r"unknown model.family 'vgg'"),
    (['--config.data.name=mnist'], r"unknown dataset 'mnist'"),
    (['--config.train.batch_size=5000'], 'larger than the 1437 training images'),
])
def test_bad_config_is_one_line_exit_2_and_writes_nothing(tmp_path, flags, message):
  workdir = tmp_path / 'run'
  r = launch('--config=configs/default.py', f'--workdir={workdir}', *flags)
  assert r.returncode == 2, r.stderr[-2000:]
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), r.stderr[-2000:]
  assert __import__('re').search(message, lines[0]), lines[0]
  assert not workdir.exists()


def test_missing_config_file_is_exit_2(tmp_path):
  r = launch('--config=configs/nope.py', f'--workdir={tmp_path}/run')
  assert r.returncode == 2 and 'nope.py' in r.stderr and 'Traceback' not in r.stderr


def test_wrn_40_2_cifar10_config_starts_on_a_prepared_data_dir(tmp_path):
  from jaxbud.data import tfds_data
  from tests.test_data_tfds import write_cifar10_archive
  fake = write_cifar10_archive(tmp_path / 'manual', num_train_per_file=4, num_test=6)
  data_dir = tmp_path / 'tfds'
  # The small archive is not the real one, so only this preparation skips the checksum.
  tfds_data.cifar('cifar10', data_dir=str(data_dir), manual_dir=str(fake.path.parent),
                  skip_checksums=True)
  # The config's network is WRN-40-2; the run trains WRN-10-1 so as not to spend its
  # compilation (tens of seconds here) on what the config, data and launcher do not change.
  from configs import wrn_40_2_cifar10
  from jaxbud import spec as spec_lib
  from jaxbud import train
  spec = train.build_spec(wrn_40_2_cifar10.get_config().model, 3)
  assert (spec.depth, spec_lib.count_params(spec, 10)) == (40, 2_243_546)
  workdir = tmp_path / 'run'
  r = launch('--config=configs/wrn_40_2_cifar10.py', f'--workdir={workdir}', *SMALL,
             f'--config.data.data_dir={data_dir}', '--config.train.epochs=1',
             '--config.train.batch_size=10', '--config.train.eval_batch_size=6')
  assert r.returncode == 0, r.stderr[-3000:]
  final = __import__('json').load(open(workdir / 'final.json'))
  assert final['params'] == 77_850 and final['step'] == 2  # WRN-10-1 on 32x32x3 images
  assert 'wrn spec' in r.stderr and 'test error' in r.stderr


def test_paths_expand_home_and_variables(tmp_path, monkeypatch):
  monkeypatch.setenv('HOME', str(tmp_path))
  monkeypatch.setenv('JAXBUD_DATA', str(tmp_path / 'data'))
  assert cli.expand_path('~/tensorflow_datasets') == str(tmp_path / 'tensorflow_datasets')
  assert cli.expand_path('$JAXBUD_DATA/manual') == str(tmp_path / 'data' / 'manual')
  assert cli.expand_path('') == ''
  c = study_digits.get_config()
  c.data.data_dir = '~/tensorflow_datasets'
  c.prune.base_workdir = '${JAXBUD_DATA}/base'
  c.lock()
  cli.expand_config_paths(c)
  assert c.data.data_dir == str(tmp_path / 'tensorflow_datasets')
  assert c.prune.base_workdir == str(tmp_path / 'data' / 'base')
  assert c.model.spec_file == '' and c.data.name == 'digits'  # only path fields, '' kept


def test_a_launcher_expands_tilde_in_its_workdir(tmp_path):
  cwd = tmp_path / 'cwd'
  cwd.mkdir()
  r = subprocess.run([sys.executable, '-m', 'launch.train', '--config=' + os.path.join(
      ROOT, 'configs', 'default.py'), '--workdir=~/run', *SMALL, '--config.train.epochs=1',
                      '--config.data.data_dir=~/tfds'],
                     cwd=cwd, capture_output=True, text=True, timeout=300,
                     env=dict(os.environ, HOME=str(tmp_path),
                              PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', '')))
  assert r.returncode == 0, r.stderr[-2000:]
  assert (tmp_path / 'run' / 'final.json').exists()  # ~ is $HOME, not a folder named '~'
  assert os.listdir(cwd) == []
  config = json.load(open(tmp_path / 'run' / 'config.json'))
  assert config['data']['data_dir'] == str(tmp_path / 'tfds')
