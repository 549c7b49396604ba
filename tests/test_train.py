"""Training core on a small slice of the real digits data: steps, optimizer, data order, outputs."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import default
from jaxbud import augment
from jaxbud import data as data_lib
from jaxbud import metrics as metrics_lib
from jaxbud import train


def tiny_config(**train_overrides):
  c = default.get_config()
  c.model.update(depth=10, widen=1.0)
  c.train.update({**dict(epochs=2, batch_size=32, eval_batch_size=40, milestones=(1,),
                         log_every_steps=2, eval_every_epochs=1), **train_overrides})
  return c


@pytest.fixture(scope='module')
def small_digits():
  d = data_lib.digits()
  return data_lib.Dataset('digits', d.train_images[:128], d.train_labels[:128],
                          d.test_images[:80], d.test_labels[:80], 10, d.mean, d.std)


def test_digits_split_is_fixed_and_stratified():
  d = data_lib.digits()
  assert d.train_images.shape == (1437, 8, 8, 1) and d.test_images.shape == (360, 8, 8, 1)
  assert d.train_images.dtype == np.uint8 and d.train_images.max() == 255
  np.testing.assert_array_equal(np.bincount(d.test_labels), np.bincount(data_lib.digits().test_labels))
  assert np.bincount(d.test_labels).min() >= 35  # stratified: every class ~36 times


def test_digits_are_scikit_learns_arrays_and_split_without_importing_it():
  from sklearn import datasets as skd  # pylint: disable=g-import-not-at-top
  from sklearn import model_selection  # pylint: disable=g-import-not-at-top
  raw = skd.load_digits()
  images = np.round(raw.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  want = model_selection.train_test_split(images, raw.target.astype(np.int32), test_size=0.2,
                                          random_state=0, stratify=raw.target)
  d = data_lib.digits()
  for a, b in zip((d.train_images, d.test_images, d.train_labels, d.test_labels), want):
    np.testing.assert_array_equal(a, b)
  # The split itself, on label sets with uneven classes and ties to break, other fractions
  # and seeds.
  rng = np.random.default_rng(0)
  for n, classes, fraction, seed in ((50, 3, 0.3, 1), (101, 7, 0.25, 5), (333, 10, 0.1, 42)):
    labels = rng.integers(0, classes, n)
    idx = np.arange(n)
    tr, te = model_selection.train_test_split(idx, test_size=fraction, random_state=seed,
                                              stratify=labels)
    mine = data_lib.stratified_split(labels, fraction, seed)
    np.testing.assert_array_equal(mine[0], tr)
    np.testing.assert_array_equal(mine[1], te)


def test_unknown_dataset_is_a_value_error():
  with pytest.raises(ValueError, match=r"unknown dataset 'mnist'; expected one of"):
    data_lib.load('mnist')


def test_random_crop_flip_windows_of_the_padded_image():
  x = jnp.arange(2 * 4 * 4 * 1, dtype=jnp.uint8).reshape(2, 4, 4, 1)
  np.testing.assert_array_equal(augment.random_crop_flip(jax.random.key(0), x, 0, False), x)
  padded = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)))
  for seed in range(5):
    out = np.asarray(augment.random_crop_flip(jax.random.key(seed), x, 1, True))
    for img, p in zip(out, padded):
      windows = [p[i:i + 4, j:j + 4] for i in range(3) for j in range(3)]
      windows += [w[:, ::-1] for w in windows]
      assert any((img == w).all() for w in windows)


def test_optimizer_is_sgd_momentum_with_coupled_weight_decay():
  c = tiny_config(lr=0.1, weight_decay=0.5, milestones=(1,), lr_decay=0.2)
  tx = train.make_optimizer(c.train, steps_per_epoch=2)
  w, g = jnp.array([1.0, -2.0]), jnp.array([0.3, 0.1])
  state = tx.init(w)
  buf, ref = np.zeros(2), np.asarray(w)
  for step in range(4):
    lr = 0.1 if step < 2 else 0.02
    buf = 0.9 * buf + (np.asarray(g) + 0.5 * ref)  # torch.optim.SGD, no dampening
    ref = ref - lr * buf
    upd, state = tx.update(g, state, w)
    w = optax.apply_updates(w, upd)
    np.testing.assert_allclose(w, ref, rtol=1e-6)


def test_bad_train_settings_raise(small_digits):
  with pytest.raises(ValueError, match='unknown train.schedule'):
    train.setup(tiny_config(schedule='linear'), small_digits)
  with pytest.raises(ValueError, match='larger than the 128 training images'):
    train.setup(tiny_config(batch_size=256), small_digits)


def test_epoch_order_is_a_seeded_permutation():
  a = data_lib.epoch_order(0, 3, 100)
  np.testing.assert_array_equal(np.sort(a), np.arange(100))
  np.testing.assert_array_equal(a, data_lib.epoch_order(0, 3, 100))
  assert not np.array_equal(a, data_lib.epoch_order(0, 4, 100))


def test_train_and_evaluate_writes_metrics_checkpoints_and_is_deterministic(small_digits, tmp_path):
  c = tiny_config()
  finals = []
  for name in ('a', 'b'):
    run = train.setup(c, small_digits)
    finals.append(train.train_and_evaluate(c, str(tmp_path / name), run))
  a, b = finals
  assert a['test_error'] == b['test_error'] and a['test_loss'] == b['test_loss']
  assert 0.0 <= a['test_error'] <= 1.0 and a['step'] == 8
  recs = metrics_lib.read(tmp_path / 'a')
  assert {'train_loss', 'train_accuracy', 'steps_per_s'} <= set(recs[0])
  assert [r['epoch'] for r in recs if 'test_error' in r] == [1, 2]
  assert os.listdir(tmp_path / 'a' / 'tensorboard')[0].startswith('events.out.tfevents')
  assert sorted(os.listdir(tmp_path / 'a' / 'checkpoints')) == ['4', '8']
  with open(tmp_path / 'a' / 'final.json') as f:
    assert json.load(f)['params'] == a['params']
  # Learning happened: loss fell from the first logged window to the last.
  assert recs[-2]['train_loss'] < recs[0]['train_loss']
