"""data.name='synthetic': random uint8 CIFAR-shaped data, deterministic, lazy, usable by training."""
import numpy as np
import pytest

from configs import default
from jaxbud import data as data_lib
from jaxbud import train
from jaxbud.errors import UsageError


def test_defaults_are_cifar10_shaped():
  ds = data_lib.load('synthetic')
  assert ds.name == 'synthetic' and ds.num_classes == 10 and ds.image_shape == (32, 32, 3)
  assert len(ds.train_labels) == 50_000 and len(ds.test_labels) == 10_000
  assert ds.train_images.shape == (50_000, 32, 32, 3) and len(ds.test_images) == 10_000
  assert ds.train_labels.dtype == np.int32 and 0 <= ds.train_labels.min()
  assert ds.train_labels.max() == 9 and ds.mean == (127.5,) * 3
  assert ds.std[0] == pytest.approx(73.9, abs=0.01)


def test_images_are_deterministic_lazy_and_indexed_like_arrays():
  a = data_lib.synthetic(train_size=3000, test_size=10, image_size=8, seed=1)
  b = data_lib.synthetic(train_size=3000, test_size=10, image_size=8, seed=1)
  c = data_lib.synthetic(train_size=3000, test_size=10, image_size=8, seed=2)
  idx = np.array([0, 5, 1023, 1024, 2999])
  batch = a.train_images[idx]
  assert batch.dtype == np.uint8 and batch.shape == (5, 8, 8, 3)
  np.testing.assert_array_equal(batch, b.train_images[idx])
  np.testing.assert_array_equal(a.train_labels, b.train_labels)
  assert not np.array_equal(batch, c.train_images[idx])
  np.testing.assert_array_equal(batch[2], a.train_images[1023])  # an integer index
  np.testing.assert_array_equal(a.train_images[2:4], a.train_images[np.array([2, 3])])
  np.testing.assert_array_equal(batch[3], batch[0])  # image i is the pool's i % 1024
  assert a.train_images._pool.nbytes == 1024 * 8 * 8 * 3  # pylint: disable=protected-access
  assert not np.array_equal(a.test_images[np.arange(5)], batch)  # another pool for test
  assert len(np.unique(batch[:3].reshape(3, -1), axis=0)) == 3
  with pytest.raises(IndexError):
    a.train_images[np.array([3000])]


def test_config_section_sizes_and_errors():
  c = default.get_config()
  c.data.name = 'synthetic'
  c.data.synthetic.update(train_size=256, test_size=32, image_size=8, num_classes=4)
  run = train.setup(c)
  assert run.dataset.image_shape == (8, 8, 3) and run.dataset.num_classes == 4
  assert run.steps_per_epoch == 256 // c.train.batch_size
  with pytest.raises(UsageError, match=r"unknown data.synthetic field\(s\) \['size'\]"):
    data_lib.load('synthetic', synthetic_options={'size': 3})
  with pytest.raises(UsageError, match='data.synthetic.num_classes must be an integer >= 2'):
    data_lib.load('synthetic', synthetic_options={'num_classes': 1})
