"""CIFAR-10/100 and ImageNet through TensorFlow Datasets (tfds), never downloading anything.

There are two ways to give jaxbud CIFAR:

1. A tfds data_dir that already holds the prepared dataset (e.g. `<data_dir>/cifar10/3.0.2/`
   in array_record format, from an earlier run or another machine): it is read as is.
2. The original archive from https://www.cs.toronto.edu/~kriz/cifar.html
   (`cifar-10-binary.tar.gz` or `cifar-100-binary.tar.gz`, not unpacked) in manual_dir
   (default `<data_dir>/downloads/manual`). The first load checks it against the checksum tfds
   registered and prepares it once into data_dir as array_record; later loads read that.

ImageNet (imagenet2012) works the same way, with ILSVRC2012_img_train.tar and
ILSVRC2012_img_val.tar in manual_dir (registration at https://image-net.org needed).

Preparing needs TensorFlow (tfds builders read through tf.io.gfile); reading prepared
array_record data does not: it goes through `builder.as_data_source`.
"""
import contextlib
import io
import os

from absl import logging
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core.download import checksums as tfds_checksums
from tensorflow_datasets.core.download import download_manager as tfds_download_manager

from jaxbud import data as data_lib
from jaxbud.errors import UsageError

# name -> (archive tfds expects in manual_dir, where to get it, number of fine classes).
_CIFAR = {
    'cifar10': ('cifar-10-binary.tar.gz',
                'https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz', 10),
    'cifar100': ('cifar-100-binary.tar.gz',
                 'https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz', 100),
}
IMAGENET_FILES = ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')
# The usual ImageNet statistics, 0..255 scale: computing them would read all 1.28M images.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
_CHUNK = 1024  # Records per __getitems__ call when reading a whole split.


def cifar(name: str, data_dir: str | None = None, manual_dir: str | None = None,
          skip_checksums: bool = False) -> data_lib.Dataset:
  """CIFAR-10 or CIFAR-100 (fine labels) as in-memory uint8 arrays, in the archive's order.

  skip_checksums accepts an archive whose checksum differs from the one tfds registered; it
  exists for tests that prepare small fake archives. A real download should be verified.
  """
  if name not in _CIFAR:
    raise UsageError(f'unknown CIFAR dataset {name!r}; expected one of {list(_CIFAR)}')
  archive, url, num_classes = _CIFAR[name]
  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    manual = _manual_dir(builder, manual_dir)
    path = manual / archive
    if not path.exists():
      raise UsageError(
          f'{name} not found. Either\n'
          f'  * download {url} (do not unpack it) and put it at {path}\n'
          f'    (the directory {manual}); it is prepared once into {builder.data_dir_root}, or\n'
          f'  * pass a data_dir that already holds the tfds-prepared {name} '
          f'(looked for {builder.data_dir}).')
    with trusting(builder, {url: path}, enabled=skip_checksums):
      _prepare(builder, manual, f'the archive {path} does not match the checksum tfds '
               f'registered for {url}: it is truncated, corrupt or another file; '
               'download it again.')
  train_x, train_y = _read_cifar_split(builder, 'train')
  test_x, test_y = _read_cifar_split(builder, 'test')
  mean, std = data_lib.channel_stats(train_x)
  return data_lib.Dataset(name, train_x, train_y, test_x, test_y, num_classes, mean, std)


def imagenet(data_dir: str | None = None, manual_dir: str | None = None,
             image_size: int = 224) -> data_lib.Dataset:
  """ImageNet-1k (tfds imagenet2012): lazy train/validation images and labels.

  Neither images (~140 GB) nor labels fit a cheap up-front read: labels sit in the same
  records as the JPEGs, so reading all 1.28M of them reads the whole dataset. Both are
  therefore lazy (LazyImages / LazyLabels) and share one read per index batch. The
  validation split serves as the test set.
  """
  builder = tfds.builder('imagenet2012', data_dir=data_dir)
  if not builder.is_prepared():
    manual = _manual_dir(builder, manual_dir)
    missing = [f for f in IMAGENET_FILES if not (manual / f).exists()]
    if missing:
      raise UsageError(
          f'imagenet2012 not found. Either\n'
          f'  * put {" and ".join(IMAGENET_FILES)} (from https://image-net.org, after '
          f'registering) in {manual} (missing: {", ".join(missing)}); they are prepared once '
          f'into {builder.data_dir_root} (hours), or\n'
          f'  * pass a data_dir that already holds the tfds-prepared imagenet2012 '
          f'(looked for {builder.data_dir}).')
    _prepare(builder, manual, 'an ImageNet archive failed its checksum; download it again.')
  splits = {}
  for split in ('train', 'validation'):
    # The JPEG bytes are decoded (and resized) by LazyImages, not by tfds.
    source = _data_source(builder, split, decoders={'image': tfds.decode.SkipDecoding()})
    records = _Records(source)
    splits[split] = LazyImages(records, image_size), LazyLabels(records)
  (train_x, train_y), (test_x, test_y) = splits['train'], splits['validation']
  return data_lib.Dataset('imagenet2012', train_x, train_y, test_x, test_y,
                          builder.info.features['label'].num_classes,
                          IMAGENET_MEAN, IMAGENET_STD)


class _Records:
  """Batched random access to one split's records, remembering the last batch.

  The training loop reads images[idx] and labels[idx] for the same idx; the memo makes that
  one read of the underlying records instead of two.
  """

  def __init__(self, source):
    self._source = source
    self._last = (None, None)  # (index bytes, records); one tuple, replaced atomically.

  def __len__(self) -> int:
    return len(self._source)

  def get(self, idx: np.ndarray) -> list:
    key = idx.tobytes()
    last_key, last = self._last
    if key == last_key:
      return last
    records = _getitems(self._source, [int(i) for i in idx])
    self._last = (key, records)
    return records


class _Lazy:
  """numpy-style indexing (int, slice, int array) over _Records."""

  dtype: np.dtype

  def __init__(self, records: _Records):
    self._records = records

  def __len__(self) -> int:
    return len(self._records)

  @property
  def ndim(self) -> int:
    return len(self.shape)

  def __array__(self, *args, **kwargs):
    # Without this numpy would fall back to the sequence protocol and read every record.
    raise TypeError(f'{type(self).__name__} reads records on demand; index it with an int '
                    'array instead of converting it to a numpy array')

  def __getitem__(self, index):
    n = len(self)
    if isinstance(index, slice):
      idx = np.arange(*index.indices(n))
    else:
      idx = np.asarray(index)
      if idx.dtype == bool or not np.issubdtype(idx.dtype, np.integer):
        raise IndexError(f'{type(self).__name__} takes integer indices, got {idx.dtype}')
    flat = idx.reshape(-1).astype(np.int64)
    if flat.size and (flat.min() < -n or flat.max() >= n):
      raise IndexError(f'index out of range for length {n}')
    flat = np.where(flat < 0, flat + n, flat)
    batch = self._convert(self._records.get(flat))
    return batch.reshape(idx.shape + batch.shape[1:])

  def _convert(self, records: list) -> np.ndarray:
    raise NotImplementedError


class LazyImages(_Lazy):
  """uint8 (N, size, size, 3) images decoded from JPEG on indexing.

  Each image's shorter side is resized to `size` and the centre square kept: augmentation
  (random crops, flips) happens later on the accelerator, so this keeps as much of the
  image as a fixed square shape allows. Decoding costs ~2 ms per image on one CPU core, in
  the calling thread.
  """

  dtype = np.dtype(np.uint8)

  def __init__(self, records: _Records, size: int):
    super().__init__(records)
    self.size = size

  @property
  def shape(self) -> tuple[int, int, int, int]:
    return (len(self), self.size, self.size, 3)

  def _convert(self, records: list) -> np.ndarray:
    out = np.empty((len(records), self.size, self.size, 3), np.uint8)
    # Serial: Pillow 12 holds the GIL while decoding, so a thread pool measured no faster.
    for i, record in enumerate(records):
      out[i] = decode_center_crop(record['image'], self.size)
    return out


class LazyLabels(_Lazy):
  """int32 (N,) labels, read from the same records (and the same reads) as LazyImages."""

  dtype = np.dtype(np.int32)

  @property
  def shape(self) -> tuple[int]:
    return (len(self),)

  def _convert(self, records: list) -> np.ndarray:
    return np.array([r['label'] for r in records], np.int32).reshape(len(records))


def decode_center_crop(encoded: bytes, size: int) -> np.ndarray:
  """Decodes an image to uint8 RGB (size, size, 3): shorter side resized to size, centre crop."""
  return data_lib.center_crop(encoded, size)


def _manual_dir(builder, manual_dir):
  """manual_dir, defaulting like tfds to <data_dir>/downloads/manual."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  if manual_dir is None:
    return epath.Path(builder.data_dir_root) / 'downloads' / 'manual'
  return epath.Path(manual_dir).expanduser()


def _prepare(builder, manual_dir, checksum_message: str) -> None:
  """Prepares builder's data from manual_dir into its data_dir, as array_record."""
  try:
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
    # tfds 4.9.10 uses importlib_resources when preparing but does not declare it.
    import importlib_resources  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    raise UsageError(
        f'preparing {builder.name} from {manual_dir} needs TensorFlow, which tfds builders use '
        f'to read the archives ({e}): pip install -e .[data]') from e
  logging.info('Preparing %s from %s into %s (once; later loads read it)...',
               builder.name, manual_dir, builder.data_dir)
  config = tfds.download.DownloadConfig(
      manual_dir=os.fspath(manual_dir),
      # Never ask the network (e.g. whether GCS hosts a prepared copy): there is none.
      try_download_gcs=False)
  try:
    builder.download_and_prepare(download_config=config, file_format='array_record')
  except tfds_download_manager.NonMatchingChecksumError as e:
    raise UsageError(f'{builder.name}: {checksum_message}\n{e}') from e
  logging.info('Prepared %s in %s.', builder.name, builder.data_dir)


@contextlib.contextmanager
def trusting(builder, paths: dict, enabled: bool = True):
  """Makes this builder accept each file paths[url] as url, whatever its checksum.

  tfds has no switch to skip verification (register_checksums=True would write the fake
  checksum into tfds' own package). Instead, for this builder object only, the download
  manager it creates expects the size and sha256 each file actually has, so the manual-dir
  lookup by filename and the rest of the download path run unchanged. The caller vouches for
  the files (a test's small archives; Fashion-MNIST files whose content was verified).
  """
  if not enabled:
    yield
    return
  make = builder._make_download_manager  # pylint: disable=protected-access

  def make_trusting(*args, **kwargs):
    manager = make(*args, **kwargs)
    # A copy: the manager's dict is tfds' memoized process-wide registry, and the fake
    # checksums must not outlive this call.
    url_infos = dict(manager._url_infos)  # pylint: disable=protected-access
    url_infos.update({url: tfds_checksums.compute_url_info(p) for url, p in paths.items()})
    manager._url_infos = url_infos  # pylint: disable=protected-access
    return manager

  builder._make_download_manager = make_trusting  # pylint: disable=protected-access
  try:
    yield
  finally:
    del builder._make_download_manager  # pylint: disable=protected-access


def _data_source(builder, split: str, decoders=None):
  """Random-access reader of a prepared split; needs the array_record format."""
  try:
    return builder.as_data_source(split, decoders=decoders)
  except NotImplementedError as e:
    raise UsageError(
        f'{builder.name} in {builder.data_dir} is prepared as {builder.info.file_format}, but '
        'jaxbud reads array_record. Convert it once with: tfds convert_format '
        f'--dataset_version_dir={builder.data_dir} --out_file_format=array_record') from e


def _getitems(source, keys: list) -> list:
  # One batched read is much faster than a Python-level loop of single reads.
  if hasattr(source, '__getitems__'):
    return source.__getitems__(keys)
  return [source[k] for k in keys]


def _read_cifar_split(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
  """All of a split as uint8 (N, 32, 32, 3) images and int32 labels, in the archive's order."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  # tfds stores the images as PNG; decoding them here straight into the output array takes
  # ~40% less time than tfds' generic numpy decoding (50k images: ~4 s instead of ~7 s).
  source = _data_source(builder, split, decoders={'image': tfds.decode.SkipDecoding()})
  n = len(source)
  images = np.empty((n, 32, 32, 3), np.uint8)
  labels = np.empty((n,), np.int32)
  ids = np.empty((n,), object)
  for start in range(0, n, _CHUNK):
    keys = list(range(start, min(n, start + _CHUNK)))
    for i, record in zip(keys, _getitems(source, keys)):
      images[i] = np.asarray(Image.open(io.BytesIO(record['image']), formats=('PNG',)))
      labels[i] = record['label']
      ids[i] = record['id']
  # tfds stores records shuffled by a hash of their key. The 'id' feature ('train_00042') is
  # the position in the archive, so sorting by it restores the original CIFAR order.
  order = np.argsort(ids, kind='stable')
  return images[order], labels[order]
