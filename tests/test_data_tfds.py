"""jaxbud.data.tfds_data on small archives in the real CIFAR binary formats (no network)."""
import builtins
import gzip
import io
import pathlib
import shutil
import tarfile
import typing

import numpy as np
import pytest

import jaxbud.data
from jaxbud.data import tfds_data


class FakeCifar(typing.NamedTuple):
  """An archive written by write_cifar*_archive and the arrays it holds, in archive order."""
  path: pathlib.Path
  train_images: np.ndarray  # uint8 (N, 32, 32, 3)
  train_labels: np.ndarray  # int32 (N,)
  test_images: np.ndarray
  test_labels: np.ndarray


def _images(labels: np.ndarray, num_classes: int, rng: np.random.Generator) -> np.ndarray:
  """Distinct uint8 NHWC images whose colour depends on the label, so a model can learn them."""
  hue = (np.arange(num_classes)[:, None] * np.array([37, 91, 151]) % 256).astype(np.int64)
  noise = rng.integers(-40, 41, size=(len(labels), 32, 32, 3))
  return np.clip(hue[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)


def _records(images: np.ndarray, *label_columns: np.ndarray) -> bytes:
  """CIFAR binary records: label byte(s), then 3072 image bytes as R, G, B planes of rows."""
  labels = np.stack(label_columns, 1).astype(np.uint8)
  planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
  return np.concatenate([labels, planes], 1).tobytes()


def _write_tgz(path: pathlib.Path, top: str, files: dict[str, bytes]) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  # A fixed gzip mtime keeps the archive's bytes (and so its checksum) deterministic.
  with open(path, 'wb') as raw, gzip.GzipFile(fileobj=raw, mode='wb', mtime=0) as gz:
    with tarfile.open(fileobj=gz, mode='w') as tar:
      info = tarfile.TarInfo(top)
      info.type = tarfile.DIRTYPE
      info.mode = 0o755
      tar.addfile(info)
      for name, content in files.items():
        info = tarfile.TarInfo(f'{top}/{name}')
        info.size = len(content)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(content))


def write_cifar10_archive(directory, num_train_per_file: int = 4, num_test: int = 6,
                          seed: int = 0) -> FakeCifar:
  """Writes <directory>/cifar-10-binary.tar.gz in the original format, with few images.

  Five data_batch_*.bin of num_train_per_file records each and one test_batch.bin. Labels
  cycle through the 10 classes.
  """
  rng = np.random.default_rng(seed)
  train_y = (np.arange(5 * num_train_per_file) % 10).astype(np.int32)
  test_y = ((np.arange(num_test) * 3) % 10).astype(np.int32)
  train_x, test_x = _images(train_y, 10, rng), _images(test_y, 10, rng)
  files = {}
  for b in range(5):
    part = slice(b * num_train_per_file, (b + 1) * num_train_per_file)
    files[f'data_batch_{b + 1}.bin'] = _records(train_x[part], train_y[part])
  files['test_batch.bin'] = _records(test_x, test_y)
  files['batches.meta.txt'] = ''.join(f'class{i}\n' for i in range(10)).encode() + b'\n'
  path = pathlib.Path(directory) / 'cifar-10-binary.tar.gz'
  _write_tgz(path, 'cifar-10-batches-bin', files)
  return FakeCifar(path, train_x, train_y, test_x, test_y)


def write_cifar100_archive(directory, num_train: int = 12, num_test: int = 5,
                           seed: int = 1) -> FakeCifar:
  """Writes <directory>/cifar-100-binary.tar.gz (coarse and fine labels); labels are the fine."""
  rng = np.random.default_rng(seed)
  train_y = ((np.arange(num_train) * 17 + 3) % 100).astype(np.int32)
  test_y = ((np.arange(num_test) * 29 + 99) % 100).astype(np.int32)
  train_x, test_x = _images(train_y, 100, rng), _images(test_y, 100, rng)
  files = {
      # Coarse labels are y // 5, which is not CIFAR-100's grouping but has 20 values.
      'train.bin': _records(train_x, train_y // 5, train_y),
      'test.bin': _records(test_x, test_y // 5, test_y),
      'coarse_label_names.txt': ''.join(f'coarse{i}\n' for i in range(20)).encode(),
      'fine_label_names.txt': ''.join(f'fine{i}\n' for i in range(100)).encode(),
  }
  path = pathlib.Path(directory) / 'cifar-100-binary.tar.gz'
  _write_tgz(path, 'cifar-100-binary', files)
  return FakeCifar(path, train_x, train_y, test_x, test_y)


def _check(ds: jaxbud.data.Dataset, fake: FakeCifar, name: str, num_classes: int) -> None:
  assert ds.name == name and ds.num_classes == num_classes
  for got, want in ((ds.train_images, fake.train_images), (ds.test_images, fake.test_images)):
    assert isinstance(got, np.ndarray) and got.dtype == np.uint8
    assert got.shape == want.shape
  for got, want in ((ds.train_labels, fake.train_labels), (ds.test_labels, fake.test_labels)):
    assert got.dtype == np.int32 and got.shape == want.shape
  # tfds shuffles records when preparing; tfds_data restores the archive's order, so the
  # comparison is exact and position by position.
  np.testing.assert_array_equal(ds.train_images, fake.train_images)
  np.testing.assert_array_equal(ds.train_labels, fake.train_labels)
  np.testing.assert_array_equal(ds.test_images, fake.test_images)
  np.testing.assert_array_equal(ds.test_labels, fake.test_labels)
  x = fake.train_images.reshape(-1, 3).astype(np.float64)
  np.testing.assert_allclose(ds.mean, x.mean(0), rtol=1e-12)
  np.testing.assert_allclose(ds.std, x.std(0), rtol=1e-12)


def test_cifar10_from_archive_then_prepared(tmp_path, monkeypatch):
  fake = write_cifar10_archive(tmp_path / 'manual', num_train_per_file=4, num_test=6)
  data_dir, manual_dir = str(tmp_path / 'tfds'), str(tmp_path / 'manual')
  # jaxbud.data.load has no checksum switch: route it to tfds_data.cifar with skipping on,
  # so the test also covers load's plumbing.
  real_cifar = tfds_data.cifar
  monkeypatch.setattr(tfds_data, 'cifar',
                      lambda *a, **kw: real_cifar(*a, **kw, skip_checksums=True))
  ds = jaxbud.data.load('cifar10', data_dir=data_dir, manual_dir=manual_dir)
  _check(ds, fake, 'cifar10', 10)
  assert ds.train_images.shape == (20, 32, 32, 3) and ds.test_images.shape == (6, 32, 32, 3)
  assert ds.image_shape == (32, 32, 3)

  # Second load: the prepared array_record data alone, archive gone, default checksums.
  shutil.rmtree(manual_dir)
  again = real_cifar('cifar10', data_dir=data_dir, manual_dir=manual_dir)
  _check(again, fake, 'cifar10', 10)


def test_cifar100_from_archive(tmp_path):
  fake = write_cifar100_archive(tmp_path / 'manual', num_train=12, num_test=5)
  ds = tfds_data.cifar('cifar100', data_dir=str(tmp_path / 'tfds'),
                       manual_dir=str(tmp_path / 'manual'), skip_checksums=True)
  _check(ds, fake, 'cifar100', 100)


def test_cifar_archive_checksum_verified_by_default(tmp_path):
  write_cifar10_archive(tmp_path / 'manual')
  data_dir = tmp_path / 'tfds'
  with pytest.raises(ValueError, match='checksum') as e:
    tfds_data.cifar('cifar10', data_dir=str(data_dir), manual_dir=str(tmp_path / 'manual'))
  assert 'cifar-10-binary.tar.gz' in str(e.value)
  # Nothing half-prepared is left behind to be read next time.
  assert not list(data_dir.glob('cifar10/*/dataset_info.json'))


def test_cifar_missing_data_names_archive_and_dir(tmp_path):
  manual_dir = tmp_path / 'manual'
  manual_dir.mkdir()
  for name, archive in (('cifar10', 'cifar-10-binary.tar.gz'),
                        ('cifar100', 'cifar-100-binary.tar.gz')):
    with pytest.raises(ValueError) as e:
      jaxbud.data.load(name, data_dir=str(tmp_path / 'tfds'), manual_dir=str(manual_dir))
    msg = str(e.value)
    assert archive in msg and str(manual_dir) in msg
    assert f'https://www.cs.toronto.edu/~kriz/{archive}' in msg


def test_cifar_missing_data_default_manual_dir(tmp_path):
  with pytest.raises(ValueError) as e:
    tfds_data.cifar('cifar10', data_dir=str(tmp_path / 'tfds'))
  assert str(tmp_path / 'tfds' / 'downloads' / 'manual' / 'cifar-10-binary.tar.gz') in str(e.value)


def test_preparing_without_tensorflow_says_what_to_install(tmp_path, monkeypatch):
  write_cifar10_archive(tmp_path / 'manual')
  real_import = builtins.__import__

  def no_tensorflow(name, *args, **kwargs):
    if name == 'tensorflow' or name.startswith('tensorflow.'):
      raise ImportError(f'No module named {name!r}')
    return real_import(name, *args, **kwargs)

  # Fails `import tensorflow` statements (as without TensorFlow installed) but not tfds'
  # own lazy imports, which go through importlib and never reach TensorFlow when it is absent.
  monkeypatch.setattr(builtins, '__import__', no_tensorflow)
  with pytest.raises(ValueError, match=r'pip install -e \.\[data\]'):
    tfds_data.cifar('cifar10', data_dir=str(tmp_path / 'tfds'),
                    manual_dir=str(tmp_path / 'manual'), skip_checksums=True)


def test_imagenet_missing_data_names_files_and_dir(tmp_path):
  manual_dir = tmp_path / 'manual'
  with pytest.raises(ValueError) as e:
    jaxbud.data.load('imagenet2012', data_dir=str(tmp_path / 'tfds'), manual_dir=str(manual_dir))
  msg = str(e.value)
  assert 'ILSVRC2012_img_train.tar' in msg and 'ILSVRC2012_img_val.tar' in msg
  assert str(manual_dir) in msg


class _FakeSource:
  """Stands in for a tfds data source of imagenet2012 read with SkipDecoding."""

  def __init__(self, jpegs, labels):
    self.records = [{'image': j, 'label': l} for j, l in zip(jpegs, labels)]
    self.reads = 0

  def __len__(self):
    return len(self.records)

  def __getitems__(self, keys):
    self.reads += 1
    return [self.records[k] for k in keys]


def _jpeg(array: np.ndarray) -> bytes:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  out = io.BytesIO()
  Image.fromarray(array).save(out, format='JPEG', quality=95)
  return out.getvalue()


def test_lazy_imagenet_images_and_labels():
  # Left half dark, right half bright, 60x40 (w x h): the centre crop keeps both halves.
  landscape = np.zeros((40, 60, 3), np.uint8)
  landscape[:, 30:] = 200
  # A portrait image whose centre square is uniformly grey, top and bottom bands are not.
  portrait = np.full((90, 30, 3), 120, np.uint8)
  portrait[:30], portrait[60:] = 0, 255
  source = _FakeSource([_jpeg(landscape), _jpeg(portrait), _jpeg(landscape)], [5, 999, 0])
  records = tfds_data._Records(source)  # pylint: disable=protected-access
  images, labels = tfds_data.LazyImages(records, 16), tfds_data.LazyLabels(records)
  assert images.shape == (3, 16, 16, 3) and len(images) == 3 and labels.shape == (3,)

  idx = np.array([1, 0, -1])
  x, y = images[idx], labels[idx]
  assert source.reads == 1  # Images and labels of one batch share one read.
  assert x.dtype == np.uint8 and x.shape == (3, 16, 16, 3)
  assert y.dtype == np.int32 and y.tolist() == [999, 5, 0]
  # Bands cropped away; the outer rows may blend in a little of them (resampling, JPEG).
  np.testing.assert_allclose(x[0, 2:-2], 120, atol=3)
  assert x[1, :, :6].max() < 20 and x[1, :, -6:].min() > 180  # Resized, both halves kept.
  np.testing.assert_array_equal(x[1], x[2])
  assert images[0].shape == (16, 16, 3) and labels[1:].tolist() == [999, 0]
  with pytest.raises(IndexError):
    images[np.array([3])]
  with pytest.raises(TypeError):
    np.asarray(labels)
