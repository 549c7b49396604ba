"""jaxbud.data.fashion on small files in the real Fashion-MNIST IDX-gz format (no network),
and the `downsample` option of jaxbud.data.load / describe."""
import gzip
import hashlib
import os
import pathlib
import shutil
import struct
import typing

import numpy as np
import pytest

import jaxbud.data
from jaxbud.data import fashion

DEBIAN = '/usr/share/datasets/fashion-mnist'


class FakeFashion(typing.NamedTuple):
  """Files written by write_fashion_files and the arrays they hold, in file order."""
  train_images: np.ndarray  # uint8 (N, 28, 28, 1)
  train_labels: np.ndarray  # int32 (N,)
  test_images: np.ndarray
  test_labels: np.ndarray
  sha256: dict  # file name -> sha256 of its decompressed content


def _idx(magic: int, array: np.ndarray) -> bytes:
  return struct.pack(f'>{1 + array.ndim}I', magic, *array.shape) + array.tobytes()


def write_fashion_files(directory, num_train: int = 12, num_test: int = 7,
                        seed: int = 0) -> FakeFashion:
  """Writes the four Fashion-MNIST files (IDX magic 2051 / 2049, big-endian dimensions,
  gzipped as Zalando's, with the file name in the gzip header) holding few random images."""
  rng = np.random.default_rng(seed)
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  arrays, sha256 = [], {}
  for (images_file, labels_file), n in zip(fashion.FILES.values(), (num_train, num_test)):
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
    for name, content in ((images_file, _idx(2051, images)), (labels_file, _idx(2049, labels))):
      with open(directory / name, 'wb') as raw:
        with gzip.GzipFile(name[:-3], 'wb', fileobj=raw, mtime=0) as gz:
          gz.write(content)
      sha256[name] = hashlib.sha256(content).hexdigest()
    arrays += [images[..., None], labels.astype(np.int32)]
  return FakeFashion(*arrays, sha256)


@pytest.fixture(autouse=True)
def offline_without_debian(tmp_path, monkeypatch):
  """No Debian package and no network, whatever this machine has."""
  monkeypatch.setattr(fashion, 'DEBIAN_DIR', str(tmp_path / 'no-debian-package'))
  monkeypatch.setattr(fashion, 'online', lambda *a, **kw: False)


@pytest.fixture
def small_counts(monkeypatch):
  """tfds' builder reads a fixed 60,000 / 10,000 records; make it read the small files'."""
  from tensorflow_datasets.image_classification import mnist  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(mnist, '_TRAIN_EXAMPLES', 12)
  monkeypatch.setattr(mnist, '_TEST_EXAMPLES', 7)


def _check(ds, fake):
  assert ds.name == 'fashion_mnist' and ds.num_classes == 10
  assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int32
  assert ds.train_images.shape == (12, 28, 28, 1) and ds.test_images.shape == (7, 28, 28, 1)
  # The files' order, although tfds stored the records shuffled.
  np.testing.assert_array_equal(ds.train_images, fake.train_images)
  np.testing.assert_array_equal(ds.train_labels, fake.train_labels)
  np.testing.assert_array_equal(ds.test_images, fake.test_images)
  np.testing.assert_array_equal(ds.test_labels, fake.test_labels)
  x = fake.train_images.astype(np.float64)
  np.testing.assert_allclose(ds.mean, [x.mean()], rtol=1e-12)
  np.testing.assert_allclose(ds.std, [x.std()], rtol=1e-12)


@pytest.mark.usefixtures('small_counts')
def test_from_manual_dir_then_prepared(tmp_path, monkeypatch):
  manual_dir, data_dir = tmp_path / 'manual', str(tmp_path / 'tfds')
  fake = write_fashion_files(manual_dir)
  # jaxbud.data.load has no checksum argument: route it to fashion_mnist with the small files'.
  real = fashion.fashion_mnist
  monkeypatch.setattr(fashion, 'fashion_mnist',
                      lambda *a, **kw: real(*a, **kw, sha256=fake.sha256))
  ds = jaxbud.data.load('fashion_mnist', data_dir=data_dir, manual_dir=str(manual_dir))
  _check(ds, fake)

  # tfds did shuffle: the order above was recovered, not kept.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  stored = tfds.builder('fashion_mnist', data_dir=data_dir).as_data_source('train')
  stored_images = np.stack([stored[i]['image'] for i in range(len(stored))])
  assert not np.array_equal(stored_images, fake.train_images)
  assert sorted(map(bytes, stored_images)) == sorted(map(bytes, fake.train_images))

  # Later loads: the prepared data alone, files gone.
  shutil.rmtree(manual_dir)
  _check(real(data_dir=data_dir, manual_dir=str(manual_dir), sha256=fake.sha256), fake)
  pooled = jaxbud.data.load('fashion_mnist', data_dir=data_dir, downsample=2)
  assert pooled.train_images.shape == (12, 14, 14, 1) and pooled.test_images.shape == (7, 14, 14, 1)
  np.testing.assert_array_equal(pooled.test_images, jaxbud.data.mean_pool(fake.test_images, 2))
  np.testing.assert_array_equal(pooled.train_labels, fake.train_labels)
  assert pooled.mean == jaxbud.data.channel_stats(pooled.train_images)[0]

  # Against the recorded checksums these are not Fashion-MNIST: every load checks.
  with pytest.raises(ValueError, match='does not reproduce train-images-idx3-ubyte.gz') as e:
    real(data_dir=data_dir)
  assert 'Delete that directory' in str(e.value)


@pytest.mark.usefixtures('small_counts')
def test_debian_folder_when_manual_dir_lacks_files(tmp_path, monkeypatch):
  debian = tmp_path / 'debian'
  fake = write_fashion_files(debian, seed=1)
  monkeypatch.setattr(fashion, 'DEBIAN_DIR', str(debian))
  manual_dir = tmp_path / 'manual'
  write_fashion_files(manual_dir, seed=2)
  (manual_dir / 'train-labels-idx1-ubyte.gz').unlink()  # incomplete: not used
  ds = fashion.fashion_mnist(data_dir=str(tmp_path / 'tfds'), manual_dir=str(manual_dir),
                             sha256=fake.sha256)
  _check(ds, fake)


def _truncate(path):
  path.write_bytes(path.read_bytes()[:200])


def _gunzip(path):
  path.write_bytes(gzip.decompress(path.read_bytes()))


def _other_file(path):  # valid gzip and IDX, other labels
  path.write_bytes(gzip.compress(_idx(2049, np.zeros(7, np.uint8))))


@pytest.mark.parametrize('name, damage, says', [
    ('train-images-idx3-ubyte.gz', _truncate, 'is truncated or corrupt'),
    ('t10k-images-idx3-ubyte.gz', _gunzip, 'is not a gzip file'),
    ('t10k-labels-idx1-ubyte.gz', _other_file, "is not Fashion-MNIST's t10k-labels-idx1-ubyte.gz"),
])
def test_bad_file_is_named(tmp_path, name, damage, says):
  manual_dir, data_dir = tmp_path / 'manual', tmp_path / 'tfds'
  fake = write_fashion_files(manual_dir)
  damage(manual_dir / name)
  with pytest.raises(ValueError) as e:
    fashion.fashion_mnist(data_dir=str(data_dir), manual_dir=str(manual_dir), sha256=fake.sha256)
  msg = str(e.value)
  assert f'{manual_dir / name} {says}' in msg
  assert 'https://github.com/zalandoresearch/fashion-mnist' in msg
  assert 'apt-get install --reinstall dataset-fashion-mnist' in msg
  assert not list(data_dir.glob('fashion_mnist/*/dataset_info.json'))  # nothing prepared


def test_missing_data_names_every_way(tmp_path, monkeypatch):
  asked = []
  monkeypatch.setattr(fashion, 'online', lambda *a, **kw: asked.append(1) or False)
  manual_dir, data_dir = tmp_path / 'manual', tmp_path / 'tfds'
  with pytest.raises(ValueError) as e:
    jaxbud.data.load('fashion_mnist', data_dir=str(data_dir), manual_dir=str(manual_dir))
  msg = str(e.value)
  assert msg.startswith('fashion_mnist not found')
  assert 'apt-get install dataset-fashion-mnist' in msg and fashion.DEBIAN_DIR in msg
  assert all(name in msg for name in fashion.FASHION_MNIST_SHA256)
  assert str(manual_dir) in msg and 'lacks' not in msg
  assert str(data_dir / 'fashion_mnist' / '3.0.1') in msg  # the prepared copy looked for
  assert 'machine with network access' in msg and fashion.URL in msg
  assert asked == [1]

  # Default manual_dir; a partial one says what it lacks.
  default_manual = data_dir / 'downloads' / 'manual'
  write_fashion_files(default_manual)
  (default_manual / 't10k-images-idx3-ubyte.gz').unlink()
  with pytest.raises(ValueError) as e:
    fashion.fashion_mnist(data_dir=str(data_dir))
  assert f'{default_manual} (it lacks t10k-images-idx3-ubyte.gz)' in str(e.value)


def test_mean_pool_rounds_half_up():
  from PIL import Image  # pylint: disable=g-import-not-at-top
  x = np.array([[0, 1, 1, 1, 255, 255], [0, 0, 0, 0, 255, 254]], np.uint8)[None, :, :, None]
  # Means 0.25, 0.5 and 254.75.
  assert jaxbud.data.mean_pool(x, 2)[0, :, :, 0].tolist() == [[0, 1, 255]]
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (5, 12, 12, 3), dtype=np.uint8)
  for factor in (2, 3, 4):
    pooled = jaxbud.data.mean_pool(images, factor)
    assert pooled.dtype == np.uint8 and pooled.shape == (5, 12 // factor, 12 // factor, 3)
    k = 12 // factor
    mean = images.astype(np.float64).reshape(5, k, factor, k, factor, 3).mean((2, 4))
    np.testing.assert_array_equal(pooled, np.floor(mean + 0.5))
    if factor != 3:  # Pillow's 3x3 fixed-point arithmetic rounds some x.56 means down.
      pillow = np.stack([np.asarray(Image.fromarray(im).reduce(factor)) for im in images])
      np.testing.assert_array_equal(pooled, pillow)


def test_downsample_digits_and_describe():
  full = jaxbud.data.load('digits')
  ds = jaxbud.data.load('digits', downsample=2)
  assert ds.train_images.shape == (1437, 4, 4, 1) and ds.test_images.shape == (360, 4, 4, 1)
  sums = full.train_images.astype(np.int64).reshape(1437, 4, 2, 4, 2, 1).sum((2, 4))
  np.testing.assert_array_equal(ds.train_images, (sums + 2) // 4)
  np.testing.assert_array_equal(ds.train_labels, full.train_labels)
  x = ds.train_images.astype(np.float64)
  np.testing.assert_allclose(ds.mean, [x.mean()], rtol=1e-12)
  np.testing.assert_allclose(ds.std, [x.std()], rtol=1e-12)
  assert ds.mean != full.mean

  assert jaxbud.data.describe('fashion_mnist', 224, None) == (60_000, (28, 28, 1), 10)
  assert jaxbud.data.describe('fashion_mnist', 224, None, downsample=2) == (60_000, (14, 14, 1), 10)
  assert jaxbud.data.describe('cifar10', downsample=4) == (50_000, (8, 8, 3), 10)
  assert jaxbud.data.describe('digits', downsample=8)[1] == (1, 1, 1)
  assert 'fashion_mnist' in jaxbud.data.NAMES


@pytest.mark.parametrize('name, factor, says', [
    ('digits', 3, r'data.downsample=3 does not divide the 8x8 images of digits; use one of '
                  r'\[1, 2, 4, 8\]'),
    ('fashion_mnist', 3, r'does not divide the 28x28 images of fashion_mnist; use one of '
                         r'\[1, 2, 4, 7, 14, 28\]'),
    ('imagenet2012', 2, r"not 'imagenet2012'; set its image size instead"),
    ('synthetic', 2, r"not 'synthetic'"),
    ('digits', 0, r'data.downsample must be an integer >= 1, got 0'),
    ('digits', 2.0, r'must be an integer >= 1, got 2.0'),
    ('digits', True, r'must be an integer >= 1, got True'),
])
def test_downsample_errors(tmp_path, name, factor, says):
  with pytest.raises(ValueError, match=says):
    jaxbud.data.describe(name, 224, None, downsample=factor)
  # load checks first: no data needed to get the same error.
  with pytest.raises(ValueError, match=says):
    jaxbud.data.load(name, data_dir=str(tmp_path / 'tfds'), downsample=factor)


@pytest.mark.skipif(not os.path.isdir(DEBIAN), reason=f'{DEBIAN} absent (dataset-fashion-mnist)')
def test_recorded_checksums_are_the_debian_files():
  content = {}
  for name, expected in fashion.FASHION_MNIST_SHA256.items():
    content[name] = gzip.decompress(pathlib.Path(DEBIAN, name).read_bytes())
    assert hashlib.sha256(content[name]).hexdigest() == expected, name
  for split, n in (('train', 60_000), ('t10k', 10_000)):
    images, labels = content[f'{split}-images-idx3-ubyte.gz'], content[f'{split}-labels-idx1-ubyte.gz']
    assert struct.unpack('>4I', images[:16]) == (2051, n, 28, 28) and len(images) == 16 + n * 784
    assert struct.unpack('>2I', labels[:8]) == (2049, n)
    assert np.bincount(np.frombuffer(labels[8:], np.uint8)).tolist() == [n // 10] * 10
  assert list(content['t10k-labels-idx1-ubyte.gz'][8:18]) == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
