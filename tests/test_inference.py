"""jaxbud.load on a real train workdir and prune snapshot (digits), model.json, the README example."""
import contextlib
import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import jaxbud
from configs import prune_digits
from jaxbud import data as data_lib
from jaxbud import errors
from jaxbud import inference
from jaxbud import prune_tune
from jaxbud import spec as spec_lib
from jaxbud import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README_SNAPSHOT = '/tmp/jaxbud/prune/snapshots/90000'  # the path the README example loads


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """A WRN-10-1 trained one epoch on digits and a Fisher prune run with one snapshot."""
  root = tmp_path_factory.mktemp('runs')
  c = prune_digits.get_config()
  c.model.depth = 10
  c.train.update(epochs=1, eval_every_epochs=1)
  final = train.train_and_evaluate(c, str(root / 'base'))
  budget = final['params'] - 1_000
  c.prune.update(base_workdir=str(root / 'base'), prune_every=2, rounds=8, budgets=(budget,),
                 compact_every=8, log_every_rounds=4, checkpoint_every_rounds=4)
  summary = prune_tune.prune_and_tune(c, str(root / 'prune'))
  (snapshot,) = summary['snapshots']
  return {'base': str(root / 'base'), 'final': final, 'prune': str(root / 'prune'),
          'snapshot': snapshot}


def test_train_workdir_and_snapshot_carry_model_json(runs):
  ds = data_lib.digits()
  for path, params in ((runs['base'], runs['final']['params']),
                       (runs['snapshot']['dir'], runs['snapshot']['params'])):
    info = json.load(open(os.path.join(path, 'model.json')))
    spec = spec_lib.load(os.path.join(path, 'spec.json'))
    assert info == inference.model_info(spec, ds, 'float32')
    assert info['input_shape'] == [8, 8, 1] and info['num_classes'] == 10
    assert info['params'] == params and info['dataset'] == 'digits' and info['dtype'] == 'float32'
    assert info['normalisation'] == {'mean': list(ds.mean), 'std': list(ds.std)}


@pytest.mark.parametrize('which', ['base', 'snapshot'])
def test_loaded_network_reproduces_the_test_error_of_its_run(runs, which):
  """predict (normalisation included) gives the run's own test error on the test split."""
  path, error = ((runs['base'], runs['final']['test_error']) if which == 'base' else
                 (runs['snapshot']['dir'], runs['snapshot']['test_error']))
  net = jaxbud.load(path)
  assert net.spec == spec_lib.load(os.path.join(path, 'spec.json'))
  assert set(net.variables) == {'params', 'batch_stats'}
  ds = data_lib.digits()
  logits = net.predict(ds.test_images)
  assert logits.shape == (360, 10) and logits.dtype == np.float32
  assert np.mean(logits.argmax(-1) != ds.test_labels) == pytest.approx(error, abs=1e-6)
  assert net.num_params == json.load(open(os.path.join(path, 'model.json')))['params']


def test_readme_example_runs_as_written(runs):
  text = open(os.path.join(ROOT, 'README.md')).read()
  (block,) = re.findall(r'<!-- example: load -->\s*```python\n(.*?)```', text, re.S)
  assert block.count(README_SNAPSHOT) == 1
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    exec(compile(block.replace(README_SNAPSHOT, runs['snapshot']['dir']), 'README.md', 'exec'),  # pylint: disable=exec-used
         {})
  printed = out.getvalue()
  assert f'{runs["snapshot"]["params"]:,} parameters' in printed
  assert re.search(r'\[(\d\s*){8}\]', printed), printed  # eight predicted digits


def test_load_mistakes_are_usage_errors(runs, tmp_path):
  with pytest.raises(errors.UsageError, match='is not a folder'):
    jaxbud.load(tmp_path / 'nothing')
  with pytest.raises(errors.UsageError, match='no checkpoint in'):
    jaxbud.load(tmp_path)
  with pytest.raises(errors.UsageError, match=r'is a prune run; give one of its snapshots: '
                     rf'{runs["snapshot"]["budget"]} in'):
    jaxbud.load(runs['prune'])
  bare = tmp_path / 'bare'  # a checkpoint without model.json (a run older than model.json)
  bare.mkdir()
  os.symlink(os.path.join(runs['base'], 'checkpoints'), bare / 'checkpoints')
  with pytest.raises(errors.UsageError, match='has no model.json'):
    jaxbud.load(bare)
  net = jaxbud.load(runs['base'])
  with pytest.raises(errors.UsageError, match=r'uint8 images of shape \(N, 8, 8, 1\)'):
    net.predict(np.zeros((2, 8, 8, 1), np.float32))
  with pytest.raises(errors.UsageError, match=r'got uint8 \(8, 8, 1\)'):
    net.predict(np.zeros((8, 8, 1), np.uint8))


def test_import_jaxbud_stays_light():
  r = subprocess.run([sys.executable, '-c', 'import sys, jaxbud; print(callable(jaxbud.load), '
                      '"jax" in sys.modules)'], cwd=ROOT, capture_output=True, text=True,
                     timeout=120)
  assert r.stdout.split() == ['True', 'False'], r.stderr[-2000:]
