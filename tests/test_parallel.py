"""One mesh over all devices: a prune run on 4 forced host devices decides like one on 1 device,
for a family network and for a model.module one (jaxbud.graph's prune step).

Both prune runs start from the same trained base. Fisher scores are sums over the global batch
whatever the device count, but 4 devices add them (and the gradients and BN statistics) in
another order, so scores agree to float rounding (about 1e-5 relative), not bit for bit, and
the difference grows as fine-tuning goes on. Decisions are therefore identical except where two
channels' scores are within that rounding: the test requires the histories to agree until such
a near tie, and the disagreement, if any, to be exactly that tie (the other run's choice is this
run's runner-up, within 1%). (Training the base itself on 1 and on 4 devices diverges in the
same way over epochs at lr 0.1.)
"""
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = r'''
import json, sys
import jax, numpy as np
from configs import prune_digits
from jaxbud import prune_tune, train
workdir, base = sys.argv[1], sys.argv[2]
c = prune_digits.get_config()
c.model.update(depth=10, widen=1.0)
c.train.update(epochs=2, eval_batch_size=360)
c.prune.update(base_workdir=base, prune_every=3, rounds=12, budgets=(70_000,),
               compact_every=12, stop_after_last_budget=False, checkpoint_every_rounds=12)
final = train.train_and_evaluate(c, base)  # trained by the first run, reused by the second
summary = prune_tune.prune_and_tune(c, workdir + '/prune')
c.train.batch_size = 126
try:
  train.setup(c)
  batch_error = None
except ValueError as e:
  batch_error = str(e)
history = json.load(open(workdir + '/prune/history.json'))['removals']
# A model.module network (jaxbud.graph's step, masks and compaction) on the same mesh.
from configs import prune_mobilenet_v2_digits as example
m = example.get_config()
m.train.update(epochs=2, milestones=(1,), eval_every_epochs=2, eval_batch_size=360)
m.prune.update(base_workdir=base + '_module', prune_every=3, rounds=6, channels_per_round=1,
               budgets=(), stop_after_last_budget=False, compact_every=4,
               checkpoint_every_rounds=6)
train.train_and_evaluate(m, base + '_module')
prune_tune.prune_and_tune(m, workdir + '/module')
module = json.load(open(workdir + '/module/history.json'))['removals']
print(json.dumps({'devices': jax.device_count(), 'base_loss': final['test_loss'],
                  'module': [(h['layer'], h['channel']) for h in module],
                  'module_scores': [h['score'] for h in module],
                  'history': [(h['layer'], h['channel']) for h in history],
                  'scores': [h['score'] for h in history],
                  'runner_up': [h['runner_up'] for h in history],
                  'snapshot_error': summary['snapshots'][0]['test_error'],
                  'batch_error': batch_error}))
'''


def run(tmp_path, devices):
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  r = subprocess.run([sys.executable, '-c', SCRIPT, str(tmp_path / f'd{devices}'),
                      str(tmp_path / 'base')], cwd=ROOT,
                     env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  return json.loads(r.stdout.strip().splitlines()[-1])


def test_prune_decisions_do_not_depend_on_the_device_count(tmp_path):
  one, four = run(tmp_path, 1), run(tmp_path, 4)
  assert (one['devices'], four['devices']) == (1, 4)
  np.testing.assert_allclose(four['base_loss'], one['base_loss'], rtol=1e-5)  # eval: 4 shards
  same = next((i for i, (a, b) in enumerate(zip(one['history'], four['history'])) if a != b),
              len(one['history']))
  assert same >= 4, (one['history'], four['history'])
  np.testing.assert_allclose(four['scores'][:same], one['scores'][:same], rtol=1e-3)
  if same < len(one['history']):  # a near tie, decided the other way
    layer, channel, runner_up = one['runner_up'][same]
    assert four['history'][same] == [layer, channel], (same, one['runner_up'][same])
    assert runner_up - one['scores'][same] <= 0.01 * one['scores'][same]
  else:
    assert abs(four['snapshot_error'] - one['snapshot_error']) <= 1 / 360 + 1e-9
  # The module run: the same removals, the scores equal to float rounding.
  assert len(one['module']) == 6 and four['module'][:3] == one['module'][:3], (
      one['module'], four['module'])
  np.testing.assert_allclose(four['module_scores'][:3], one['module_scores'][:3], rtol=1e-3)
  assert one['batch_error'] is None
  assert four['batch_error'] == 'train.batch_size=126 must be divisible by the device count 4'


EVAL_SCRIPT = r'''
import json, sys
import jax, numpy as np
from configs import default
from jaxbud import input_pipeline, parallel, train
c = default.get_config()
c.model.update(depth=10, widen=1.0)
c.train.update(batch_size=48, eval_batch_size=100)  # 100 divides by neither 6 nor 8
ts = train.setup(c)
mesh = parallel.make_mesh()
_, _, eval_step = ts.functions(mesh)
metrics, preds = train.evaluate(eval_step, ts.initial_state(mesh),
                                input_pipeline.eval_batches(c, ts.dataset), mesh)
print(json.dumps({'devices': jax.device_count(), 'loss': metrics['test_loss'],
                  'predictions': preds['predictions'].tolist()}))
'''


def test_evaluation_runs_on_any_device_count():
  outs = []
  for devices in (1, 2, 4, 6, 8):
    env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
    r = subprocess.run([sys.executable, '-c', EVAL_SCRIPT], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    outs.append(json.loads(r.stdout.strip().splitlines()[-1]))
  assert [o['devices'] for o in outs] == [1, 2, 4, 6, 8]
  for o in outs[1:]:  # every test image once, in order: the same predictions and loss
    assert len(o['predictions']) == 360
    assert np.mean(np.array(o['predictions']) != outs[0]['predictions']) <= 2 / 360
    np.testing.assert_allclose(o['loss'], outs[0]['loss'], rtol=1e-4)
