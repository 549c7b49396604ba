"""configs/prune_mobilenet_v2_digits.py through launch.train, launch.prune, jaxbud.load and
launch.export: a MobileNetV2 defined in the config file, which jaxbud knows nothing of, is
trained, pruned with the generic Fisher, snapshotted at its budgets, loaded, exported, and a
killed prune run resumes to the same removals. A shorter schedule than the config's."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
from flax import nnx
import ml_collections
import numpy as np
import onnxruntime as ort
import pytest

import jaxbud
import jaxbud.graph as jg
from configs import prune_mobilenet_v2_digits as example
from configs import study_digits
from jaxbud import augment
from jaxbud import data
from jaxbud import export
from jaxbud import prune_tune
from jaxbud import spec as spec_lib
from jaxbud import study
from jaxbud import train
from jaxbud.errors import UsageError
from jaxbud.graph import arch
from tests.test_prune_run import resume_from_earlier

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIDTHS = dict(stem=16, b0_expand=32, b1_expand=32, b2_expand=48, b2_project=24)


def config(base_workdir='', **prune):
  c = example.get_config()
  c.train.update(epochs=4, milestones=(3,), eval_every_epochs=4)
  c.prune.update(dict(base_workdir=str(base_workdir), prune_every=5, rounds=30,
                      budgets=(5_000, 4_500), checkpoint_every_rounds=4, compact_every=16,
                      eval_every_rounds=5), **prune)
  return c


@pytest.fixture(scope='module')
def base(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('mobilenet')
  final = train.train_and_evaluate(config(), str(workdir))
  assert final['params'] == 5962 and final['test_error'] < 0.2, final
  return workdir


@pytest.fixture(scope='module')
def pruned(base, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('mobilenet_prune')
  return prune_tune.prune_and_tune(config(base), str(workdir)), workdir


def test_the_module_spec_counts_what_the_module_holds():
  spec = arch.ModuleSpec(example.get_config().model.module, WIDTHS, (8, 8, 1))
  # stem 3x3x1x16 + BN; two blocks of 16->32 (1x1), 3x3 depthwise, 32->16 (1x1) with BNs;
  # 16->48, depthwise, 48->24; head 24x10 + 10.
  assert spec.count_params() == 144 + 32 + 2 * 1472 + 2592 + 250
  # On 8x8 images: 64 positions until block 2's depthwise (stride 2), then 16.
  assert spec.count_macs(8) == 64 * (144 + 2 * 1312 + 768) + 16 * (432 + 1152) + 240
  assert spec_lib.from_json(spec.to_json()) == spec
  assert spec_lib.Size('params').floor(spec) == spec.with_prunable([1] * 5).count_params()
  # Counted from masks on the full network's layout, as the module built at the live widths.
  rng = np.random.default_rng(0)
  for _ in range(3):
    mask = {n: (rng.random(w) < 0.6).astype(np.float32) for n, w in WIDTHS.items()}
    for m in mask.values():
      m[0] = 1.0
    live = spec.with_prunable(int(m.sum()) for m in mask.values())
    assert arch.live_params(spec, mask) == live.count_params()
  # A factory may also be named by its file.
  by_path = arch.ModuleSpec(os.path.join(ROOT, 'configs', 'prune_mobilenet_v2_digits.py') +
                            ':make_module', WIDTHS, (8, 8, 1))
  assert by_path.count_params() == spec.count_params()
  with pytest.raises(UsageError, match='must name a factory'):
    arch.resolve('configs.prune_mobilenet_v2_digits.make_module')


def test_launch_prune_prunes_any_module_and_its_snapshots_load_and_export(pruned, tmp_path):
  summary, workdir = pruned
  assert [s['budget'] for s in summary['snapshots']] == [5_000, 4_500]
  ds = data.digits()
  for snap in summary['snapshots']:
    assert snap['params'] <= snap['budget']
    spec = spec_lib.load(os.path.join(snap['dir'], 'spec.json'))
    assert spec.family == 'module' and spec.count_params() == snap['params']
    assert all(w >= 1 for w in spec.prunable) and sum(spec.prunable) < sum(WIDTHS.values())
    # Its spec.json trains the pruned architecture from scratch (model.spec_file).
    c = config()
    c.model.spec_file = os.path.join(snap['dir'], 'spec.json')
    assert train.setup(c).spec == spec
    net = jaxbud.load(snap['dir'])  # rebuilt by the factory at the snapshot's widths
    assert net.num_params == snap['params']
    # The compacted network makes the masked network's predictions (the run's evaluation).
    wrong = int(np.sum(np.argmax(net.predict(ds.test_images), -1) != ds.test_labels))
    assert wrong == round(snap['test_error'] * len(ds.test_labels))
    assert snap['test_error'] < 0.3
  history = json.load(open(workdir / 'history.json'))
  assert len(history['removals']) == summary['removed'] > 0
  # Exported, the snapshot runs in plain JAX (StableHLO) and in onnxruntime (ONNX) with the
  # loaded network's logits.
  out = export.export(summary['snapshots'][-1]['dir'], tmp_path / 'export')
  exported = jax.export.deserialize(bytearray(open(out['files']['model.stablehlo'], 'rb').read()))
  net = jaxbud.load(summary['snapshots'][-1]['dir'])
  want = net.predict(ds.test_images[:16])
  np.testing.assert_allclose(exported.call(ds.test_images[:16]), want, rtol=1e-5, atol=1e-5)
  session = ort.InferenceSession(out['files']['model.onnx'], providers=['CPUExecutionProvider'])
  np.testing.assert_allclose(session.run(None, {'images': ds.test_images[:16]})[0], want,
                             rtol=1e-4, atol=1e-4)


def test_a_killed_module_prune_run_resumes_to_the_same_removals(pruned, base, tmp_path):
  summary, workdir = pruned
  first = json.load(open(workdir / 'history.json'))['removals']
  again, history = resume_from_earlier(config(base), workdir)
  assert [(r['layer'], r['channel']) for r in history['removals']] == [
      (r['layer'], r['channel']) for r in first]
  assert [s['params'] for s in again['snapshots']] == [s['params'] for s in summary['snapshots']]


def test_module_configs_refuse_what_they_cannot_do(base, tmp_path):
  bad = config()
  bad.model.widths = {k: v for k, v in WIDTHS.items() if k != 'b2_project'}
  with pytest.raises(UsageError, match=r"reads widths\['b2_project'\], which model.widths"):
    train.setup(bad)
  bad = config()
  bad.model.widths = dict(WIDTHS, head=10)  # not a prunable group: the factory ignores it
  with pytest.raises(UsageError, match=r'model.widths must name each prunable group'):
    train.setup(bad)
  bad = config()
  bad.model.module = 'configs.prune_mobilenet_v2_digits:no_such_factory'
  with pytest.raises(UsageError, match='has no function'):
    train.setup(bad)
  bad = config()
  bad.train.bn_l1 = 1e-4
  with pytest.raises(UsageError, match='train.bn_l1'):
    train.setup(bad)
  c = study_digits.get_config()
  c.model = config().model
  with pytest.raises(UsageError, match='a study compares networks of jaxbud'):
    study.plan(c)
  for criterion in ('l1', 'bn_scale'):
    with pytest.raises(UsageError, match=f"criterion='{criterion}' reads the layers"):
      prune_tune.prune_and_tune(config(base, criterion=criterion), str(tmp_path / criterion))
    assert not (tmp_path / criterion).exists()


def test_the_commands_in_the_config_run_as_written(pruned):
  """launch.prune with the module config file, from the repository root (a subprocess: the
  factory is imported by name), on the finished run: it reports the run's snapshots."""
  summary, workdir = pruned
  base_dir = json.load(open(workdir / 'config.json'))['prune']['base_workdir']
  out = subprocess.run(
      [sys.executable, '-m', 'launch.prune', '--config=configs/prune_mobilenet_v2_digits.py',
       f'--workdir={workdir}', f'--config.prune.base_workdir={base_dir}',
       '--config.prune.prune_every=5', '--config.prune.rounds=30',
       '--config.prune.budgets=(5000, 4500)'],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  for s in summary['snapshots']:
    assert f'budget {s["budget"]:>10,}  params {s["params"]:>10,}' in out.stdout


def test_one_shot_cuts_a_module_to_its_budget_keeping_a_channel_per_group(base, tmp_path):
  """One-shot, scored by taylor (the groups' gate gradients, as fisher's)."""
  c = config(base, schedule='one_shot', finetune_epochs=0.1, budgets=(1_500,), criterion='taylor')
  summary = prune_tune.prune_and_tune(c, str(tmp_path / 'p'))
  removals = json.load(open(tmp_path / 'p' / 'history.json'))['removals']
  for snap in summary['snapshots']:
    spec = spec_lib.load(os.path.join(snap['dir'], 'spec.json'))
    cut = [r for r in removals if r['budget'] == snap['budget']]
    assert snap['params'] <= snap['budget'] < cut[-2]['params']  # the fewest channels
    assert min(spec.prunable) >= 1
    assert list(spec.prunable) == [w - sum(r['layer'] == n for r in cut)
                                   for n, w in WIDTHS.items()]


def test_the_compacted_program_exports_at_its_batch_size():
  """Without a factory, jg.compact's program (the jaxpr re-evaluated at the new shapes) is the
  smaller network; it exports as StableHLO at the batch size it was analysed at."""
  ds = data.digits()
  module = example.make_module(WIDTHS)
  images = ds.test_images[:4]
  x = augment.normalize(images, ds.mean, ds.std)
  variables = jax.jit(module.init)(jax.random.key(0), x)
  groups = jg.analyze(module.apply, variables, x)
  rng = np.random.default_rng(0)
  keep = {g.name: np.sort(rng.choice(g.size, g.size // 2, replace=False))
          for g in groups.prunable}
  small = jg.compact(groups, variables, keep)
  forward = lambda images: small.apply(small.variables, augment.normalize(images, ds.mean, ds.std))
  blob = export.serialize(forward, ds.image_shape, platforms=('cpu',), batch=4)
  exported = jax.export.deserialize(bytearray(blob))
  masked = jax.tree.map(jnp.multiply, variables, jg.masks(groups, keep))
  np.testing.assert_allclose(exported.call(images), module.apply(masked, x), rtol=1e-5, atol=1e-5)


def test_fisher_cost_prunes_a_module_with_the_macs_each_group_saves(base, tmp_path):
  c = config(base, criterion='fisher_cost', beta=1e-9, rounds=3, budgets=(),
             stop_after_last_budget=False)
  summary = prune_tune.prune_and_tune(c, str(tmp_path / 'p'))
  assert summary['removed'] == 3 * c.prune.channels_per_round


class NnxNet(nnx.Module):
  """A small flax.nnx CNN, for a model.module config whose factory takes `rngs`."""

  def __init__(self, widths, rngs):
    a, b = widths['conv1'], widths['conv2']
    self.conv1 = nnx.Conv(1, a, (3, 3), use_bias=False, rngs=rngs)
    self.bn1 = nnx.BatchNorm(a, momentum=0.9, rngs=rngs)
    self.conv2 = nnx.Conv(a, b, (3, 3), strides=2, use_bias=False, rngs=rngs)
    self.bn2 = nnx.BatchNorm(b, momentum=0.9, rngs=rngs)
    self.head = nnx.Linear(b, 10, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.bn1(self.conv1(x)))
    x = nnx.relu(self.bn2(self.conv2(x)))
    return self.head(jnp.mean(x, axis=(1, 2)))


def make_nnx(widths, rngs):
  return NnxNet(widths, rngs)


def test_an_nnx_module_trains_prunes_and_loads(tmp_path):
  c = config(budgets=(3_000,), rounds=20, compact_every=8)
  c.model = ml_collections.ConfigDict(dict(module='tests.test_graph_example:make_nnx',
                                           widths=dict(conv1=16, conv2=32), spec_file='',
                                           dtype='float32'))
  c.train.update(epochs=2, milestones=(1,), eval_every_epochs=2)
  final = train.train_and_evaluate(c, str(tmp_path / 'base'))
  assert final['params'] == 9 * 16 + 2 * 16 + 9 * 16 * 32 + 2 * 32 + 32 * 10 + 10
  c.prune.base_workdir = str(tmp_path / 'base')
  summary = prune_tune.prune_and_tune(c, str(tmp_path / 'prune'))
  (snap,) = summary['snapshots']
  assert snap['params'] <= 3_000
  net = jaxbud.load(snap['dir'])
  ds = data.digits()
  wrong = int(np.sum(np.argmax(net.predict(ds.test_images), -1) != ds.test_labels))
  assert wrong == round(snap['test_error'] * len(ds.test_labels))


def make_nnx_dropout(widths, rngs):
  net = NnxNet(widths, rngs)
  net.drop = nnx.Dropout(0.1, rngs=rngs)
  return net


def test_an_nnx_module_with_dropout_is_refused():
  c = config()
  c.model = ml_collections.ConfigDict(dict(module='tests.test_graph_example:make_nnx_dropout',
                                           widths=dict(conv1=16, conv2=32), spec_file='',
                                           dtype='float32'))
  with pytest.raises(UsageError, match='has a Dropout at drop'):
    train.setup(c)
