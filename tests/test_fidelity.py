"""Fidelity to the reference (BayesWatch/pytorch-prunes): crop padding per phase, epochs that
keep their last partial batch, and the classifier's init (that one is in tests/test_models.py).
"""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from configs import sections
from jaxbud import augment
from jaxbud import data as data_lib
from jaxbud import input_pipeline
from jaxbud import loop_bench
from jaxbud import metrics as metrics_lib
from jaxbud import train
from jaxbud.errors import UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------------ padding

def _crops(images, key, pad, np_mode):
  """numpy's pad in `np_mode`, cropped at the offsets random_crop_flip draws from `key`."""
  crop_key, _ = jax.random.split(key)
  n, h, w, _ = images.shape
  offsets = np.asarray(jax.random.randint(crop_key, (n, 2), 0, 2 * pad + 1))
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode=np_mode)
  return np.stack([p[i:i + h, j:j + w] for p, (i, j) in zip(padded, offsets)]), offsets


def test_reflect_padding_is_numpys_reflect_pad_then_crop():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (16, 5, 6, 3), dtype=np.uint8)
  key, pad = jax.random.key(3), 2
  out = np.asarray(augment.random_crop_flip(key, jnp.asarray(images), pad, False, 'reflect'))
  want, offsets = _crops(images, key, pad, 'reflect')
  np.testing.assert_array_equal(out, want)
  # Some crops reach into the border, where reflection differs from 'symmetric' (which repeats
  # the edge pixel) and from zeros: the comparison above tells them apart.
  assert (offsets != pad).any()
  assert not np.array_equal(out, _crops(images, key, pad, 'symmetric')[0])
  zeros = np.asarray(augment.random_crop_flip(key, jnp.asarray(images), pad, False, 'zeros'))
  np.testing.assert_array_equal(zeros, _crops(images, key, pad, 'constant')[0])
  assert not np.array_equal(out, zeros)
  # The default is zeros, as before.
  np.testing.assert_array_equal(
      np.asarray(augment.random_crop_flip(key, jnp.asarray(images), pad, False)), zeros)


def test_reflection_is_torchs_not_symmetric():
  # torch.nn.ReflectionPad2d / torchvision padding_mode='reflect': 1 2 3 4 -> 3 2 | 1 2 3 4 | 3 2.
  row = jnp.arange(1, 5, dtype=jnp.uint8).reshape(1, 1, 4, 1)
  x = jnp.broadcast_to(row, (1, 4, 4, 1))
  padded = jnp.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode=augment.PAD_MODES['reflect'])
  assert padded[0, 2, :, 0].tolist() == [3, 2, 1, 2, 3, 4, 3, 2]


def test_each_phase_defaults_to_the_references_padding():
  c = default.get_config()
  c.prune = sections.prune_section()
  assert input_pipeline.device_augment(c) == dict(crop_pad=1, flip=False, pad_mode='reflect')
  assert input_pipeline.device_augment(c, prune=True)['pad_mode'] == 'zeros'
  c.data.pad_mode, c.prune.pad_mode = 'zeros', 'reflect'
  assert input_pipeline.device_augment(c)['pad_mode'] == 'zeros'
  assert input_pipeline.device_augment(c, prune=True)['pad_mode'] == 'reflect'


def test_unknown_pad_mode_is_a_usage_error():
  c = default.get_config()
  c.data.pad_mode = 'symmetric'
  with pytest.raises(UsageError, match=r"unknown data.pad_mode 'symmetric'; expected one of "
                                       r"\('zeros', 'reflect'\)"):
    train.setup(c)
  c.data.pad_mode = 'reflect'
  c.prune = sections.prune_section(pad_mode='edge')
  with pytest.raises(UsageError, match=r"unknown prune.pad_mode 'edge'"):
    input_pipeline.device_augment(c, prune=True)
  with pytest.raises(ValueError, match=r"unknown pad mode 'edge'"):
    augment.random_crop_flip(jax.random.key(0), jnp.zeros((1, 4, 4, 1)), 1, False, 'edge')


# --------------------------------------------------------------------------------- last batch

def test_epoch_layout_keeps_the_partial_batch_trimmed_to_the_devices():
  layout = data_lib.epoch_layout
  assert layout(50_000, 128, drop_last=False, devices=1) == (391, 80)  # CIFAR, the reference
  assert layout(50_000, 128, drop_last=True, devices=1) == (390, 128)
  assert layout(10, 4, drop_last=False, devices=1) == (3, 2)
  assert layout(12, 4, drop_last=False, devices=1) == (3, 4)
  assert layout(11, 4, drop_last=False, devices=2) == (3, 2)  # 3 left: 2 shard evenly
  assert layout(9, 4, drop_last=False, devices=2) == (2, 4)  # 1 left: nothing to shard
  assert input_pipeline.steps_per_epoch(1437, 64, drop_last=False, devices=4) == 23  # 28 of 29
  assert input_pipeline.steps_per_epoch(1437, 64, drop_last=True) == 22


def _dataset(n, test=8):
  images = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1) * np.ones((1, 4, 4, 1), np.uint8)
  return data_lib.Dataset('toy', images, np.arange(n, dtype=np.int32), images[:test],
                          np.arange(test, dtype=np.int32) % 2, 2, (0.,), (1.,))


def test_array_batches_end_each_epoch_with_the_partial_batch_and_resume_exactly():
  ds = _dataset(10)
  run = list(input_pipeline.array_batches(ds, 0, 4, 0, 7, drop_last=False))
  assert [len(b['label']) for _, b in run] == [4, 4, 2, 4, 4, 2, 4]
  for epoch in range(2):  # every image once an epoch, in a new order each epoch
    labels = np.concatenate([b['label'] for _, b in run[3 * epoch:3 * epoch + 3]])
    assert sorted(labels) == list(range(10))
    np.testing.assert_array_equal(labels, np.concatenate(
        [np.sort(p) for p in np.split(data_lib.epoch_order(0, epoch, 10), [4, 8])]))
  for start in range(1, 7):  # a run resumed at any step reads the same batches
    resumed = list(input_pipeline.array_batches(ds, 0, 4, start, 7, drop_last=False))
    assert [s for s, _ in resumed] == list(range(start, 7))
    for (_, a), (_, b) in zip(resumed, run[start:]):
      np.testing.assert_array_equal(a['label'], b['label'])
      np.testing.assert_array_equal(a['image'], b['image'])
  full = list(input_pipeline.array_batches(ds, 0, 4, 0, 4))  # the default: full batches only
  assert [len(b['label']) for _, b in full] == [4, 4, 4, 4]
  assert len(set(np.concatenate([b['label'] for _, b in full[:2]]))) == 8


def test_stream_keeps_the_partial_batch_like_the_arrays_and_splits_it_over_hosts():
  from jaxbud.data import stream  # pylint: disable=g-import-not-at-top
  source = stream.synthetic_source(10, width=16, height=12)  # label of record i: i
  args = dict(seed=0, batch_size=4, start=0, stop=6, image_size=8, drop_last=False, devices=2)
  one = list(stream.train_batches(source, process_index=0, process_count=1, **args))
  arrays = list(input_pipeline.array_batches(_dataset(10), 0, 4, 0, 6, drop_last=False))
  assert [b['label'].tolist() for _, b in one] == [b['label'].tolist() for _, b in arrays]
  assert [len(b['label']) for _, b in one] == [4, 4, 2, 4, 4, 2]
  hosts = [list(stream.train_batches(source, process_index=p, process_count=2, **args))
           for p in range(2)]
  for t, (step, batch) in enumerate(one):
    assert [len(h[t][1]['label']) for h in hosts] == [len(batch['label']) // 2] * 2
    for key in batch:  # the same records, crops and flips, whichever host reads them
      np.testing.assert_array_equal(np.concatenate([h[t][1][key] for h in hosts]), batch[key])
  resumed = list(stream.train_batches(source, process_index=0, process_count=1,
                                      **{**args, 'start': 2}))
  for (_, a), (_, b) in zip(resumed, one[2:]):
    np.testing.assert_array_equal(a['image'], b['image'])


_TWO_DEVICES = r'''
import json
import numpy as np
from configs import default
from jaxbud import data as data_lib, input_pipeline, parallel
n = 11
images = np.zeros((n, 4, 4, 1), np.uint8)
ds = data_lib.Dataset('toy', images, np.arange(n, dtype=np.int32), images, np.zeros(n, np.int32),
                      2, (0.,), (1.,))
mesh = parallel.make_mesh()
batches = input_pipeline.train_batches(default.get_config(), ds, seed=0, batch_size=4, start=0,
                                       stop=6, mesh=mesh, drop_last=False)
print(json.dumps({'steps': input_pipeline.steps_per_epoch(n, 4, drop_last=False),
                  'shapes': [b['label'].shape[0] for _, b in batches],
                  'shards': len(mesh.devices.flat)}))
'''


def test_partial_batch_is_trimmed_to_a_multiple_of_the_device_count():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2',
             JAX_PLATFORMS='cpu')
  r = subprocess.run([sys.executable, '-c', _TWO_DEVICES], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  out = json.loads(r.stdout.strip().splitlines()[-1])
  assert out == {'steps': 3, 'shapes': [4, 4, 2, 4, 4, 2], 'shards': 2}  # 3 left -> 2


def test_training_on_a_dataset_not_a_multiple_of_the_batch(tmp_path):
  d = data_lib.digits()
  ds = data_lib.Dataset('digits', d.train_images[:100], d.train_labels[:100],
                        d.test_images[:40], d.test_labels[:40], 10, d.mean, d.std)
  c = default.get_config()
  c.model.update(depth=10, widen=1.0)
  c.train.update(epochs=2, batch_size=32, eval_batch_size=40, milestones=(1,),
                 log_every_steps=100, eval_every_epochs=1)
  ts = train.setup(c, ds)
  assert ts.steps_per_epoch == 4 and ts.total_steps == 8  # 32, 32, 32, 4 images
  seen = []
  real = input_pipeline.array_batches

  def spy(*args, **kwargs):
    for step, batch in real(*args, **kwargs):
      seen.append((step, len(batch['label'])))
      yield step, batch

  # The loop benchmark compiles the loop's step for the partial batch before the loop runs.
  assert loop_bench.partial_batch_compile(ts) > 0
  (step_fn,) = [fns[1] for fns in ts.jitted.values()]
  assert step_fn._cache_size() == 1  # pylint: disable=protected-access
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(input_pipeline, 'array_batches', spy)
    final = train.train_and_evaluate(c, str(tmp_path), ts)
  assert seen == [(s, 4 if s % 4 == 3 else 32) for s in range(8)]
  assert final['step'] == 8 and 0 <= final['test_error'] <= 1
  # Epoch ends (evaluations) after the partial batch: steps 4 and 8.
  assert [(r['step'], r['epoch']) for r in metrics_lib.read(tmp_path) if 'test_error' in r] == [
      (4, 1), (8, 2)]
  # One compilation for full batches and one for the last batch's shape (the benchmark's), no
  # more: the loop's partial batches ran on the program compiled before it.
  assert step_fn._cache_size() == 2  # pylint: disable=protected-access
