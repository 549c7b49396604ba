"""Zalando's Fashion-MNIST through tfds' `fashion_mnist` builder, verified and in file order.

60,000 training and 10,000 test images, 28x28 grayscale, 10 classes. `fashion_mnist()` takes
the first of these that has the data:

1. A tfds data_dir that already holds the prepared `fashion_mnist` (array_record): read as is,
   without TensorFlow.
2. The four original files (`train-images-idx3-ubyte.gz`, `train-labels-idx1-ubyte.gz`,
   `t10k-images-idx3-ubyte.gz`, `t10k-labels-idx1-ubyte.gz`) in manual_dir (default
   `<data_dir>/downloads/manual`), else in `DEBIAN_DIR`, where Debian/Ubuntu's package
   dataset-fashion-mnist installs them. They are prepared once into data_dir (needs TensorFlow).
3. A network: tfds downloads the files itself. jaxbud first asks the server for one small file
   (HEAD, `ONLINE_TIMEOUT_S` seconds at most, proxy settings honoured) and only downloads when
   it answers, so that an offline machine gets the UsageError naming the ways above at once
   instead of waiting on tfds' download retries.

Debian recompressed the files, so their .gz bytes differ from Zalando's and tfds' registered
checksums reject them; the decompressed IDX content is the same. jaxbud therefore checks the
sha256 of each file's decompressed content against `FASHION_MNIST_SHA256` (which Zalando's and
Debian's files both pass) and then makes tfds accept the file as it is.
"""
import gzip
import hashlib
import io
import struct
import threading
import urllib.request
import zlib

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import hashing as tfds_hashing
from tensorflow_datasets.proto import tf_example_pb2

from jaxbud import data as data_lib
from jaxbud.data import tfds_data
from jaxbud.errors import UsageError

URL = 'http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/'  # tfds' FashionMNIST.URL
HOMEPAGE = 'https://github.com/zalandoresearch/fashion-mnist'
DEBIAN_DIR = '/usr/share/datasets/fashion-mnist'  # package dataset-fashion-mnist
ONLINE_TIMEOUT_S = 5.0
# split -> (images file, labels file).
FILES = {'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
         'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')}
# sha256 of each file's DECOMPRESSED content (IDX header and data), computed from Debian's files
# (dataset-fashion-mnist, which hold 60,000 / 10,000 images, 6,000 / 1,000 of each class, test
# labels beginning 9 2 1 1 6 1 4 6 5 7). Zalando's .gz files decompress to the same bytes.
FASHION_MNIST_SHA256 = {
    'train-images-idx3-ubyte.gz':
        'c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888',
    'train-labels-idx1-ubyte.gz':
        'bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9',
    't10k-images-idx3-ubyte.gz':
        '5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b',
    't10k-labels-idx1-ubyte.gz':
        '0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34',
}
_IMAGES_MAGIC, _LABELS_MAGIC = 2051, 2049  # IDX: unsigned bytes, 3 and 1 dimensions
_SIZE = 28
_RAW_BYTES = tfds.decode.DeserializeMethod.RAW_BYTES


def fashion_mnist(data_dir: str | None = None, manual_dir: str | None = None,
                  sha256: dict[str, str] | None = None) -> data_lib.Dataset:
  """Fashion-MNIST as in-memory uint8 (N, 28, 28, 1) arrays, in the original files' order.

  tfds stores records shuffled by an md5 hash of their key, which for this builder is the
  record's position in the files. Recomputing those hashes (tfds' own Hasher, salted with the
  split name, as its writer does) gives the position of every stored record, so the arrays come
  back in file order. Every load checks it: the arrays rebuilt into IDX files must have the
  recorded content checksums, so they are exactly Zalando's files, order included, or a
  UsageError says the prepared copy is not.

  sha256 replaces FASHION_MNIST_SHA256 (file name -> sha256 of its decompressed content); it
  exists for tests that prepare small files. Real data should be checked against the record.
  """
  sha256 = FASHION_MNIST_SHA256 if sha256 is None else sha256
  builder = tfds.builder('fashion_mnist', data_dir=data_dir)
  if not builder.is_prepared():
    _prepare(builder, tfds_data._manual_dir(builder, manual_dir), sha256)  # pylint: disable=protected-access
  arrays = {}
  for split, (images_file, labels_file) in FILES.items():
    images, labels = _read_split(builder, split)
    for name, content in ((images_file, _idx(_IMAGES_MAGIC, images[..., 0])),
                          (labels_file, _idx(_LABELS_MAGIC, labels.astype(np.uint8)))):
      if hashlib.sha256(content).hexdigest() != sha256[name]:
        raise UsageError(
            f'the fashion_mnist prepared in {builder.data_dir} does not reproduce {name} '
            f'(its {split} split, {len(labels)} records, rebuilt in file order, has another '
            'sha256): it was prepared from other files, is damaged, or was written by a tfds '
            'that orders records differently. Delete that directory and load again to prepare '
            'it from the original files.')
    arrays[split] = images, labels
  (train_x, train_y), (test_x, test_y) = arrays['train'], arrays['test']
  mean, std = data_lib.channel_stats(train_x)
  return data_lib.Dataset('fashion_mnist', train_x, train_y, test_x, test_y, 10, mean, std)


def _prepare(builder, manual, sha256: dict[str, str]) -> None:
  """Prepares builder's data from manual_dir, the Debian folder or a download, in that order."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  names = [name for pair in FILES.values() for name in pair]
  for folder in (manual, epath.Path(DEBIAN_DIR)):
    if all((folder / name).exists() for name in names):
      paths = {name: folder / name for name in names}
      for name, path in paths.items():
        check_file(path, sha256[name])
      with tfds_data.trusting(builder, {URL + name: path for name, path in paths.items()}):
        tfds_data._prepare(builder, folder, 'rejected a file whose content was verified.')  # pylint: disable=protected-access
      return
  if online():
    try:
      tfds_data._prepare(builder, manual, f'a file downloaded from {URL} does not match the '  # pylint: disable=protected-access
                         'checksum tfds registered: the download broke off; load again.')
      return
    except OSError as e:  # requests' errors are OSErrors too
      raise UsageError(_not_found(builder, manual, names, f'downloading failed: {e}')) from e
  raise UsageError(_not_found(builder, manual, names, f'{URL} did not answer from here'))


def _not_found(builder, manual, names: list[str], network: str) -> str:
  missing = [name for name in names if not (manual / name).exists()]
  partly = f' (it lacks {", ".join(missing)})' if len(missing) < len(names) else ''
  return (
      f'fashion_mnist not found. Any one of these provides it:\n'
      f'  * apt-get install dataset-fashion-mnist (Debian/Ubuntu), which puts the files in '
      f'{DEBIAN_DIR}, where jaxbud looks for them, or\n'
      f'  * put {", ".join(names)} (from {HOMEPAGE}, still gzipped) in {manual}{partly}; '
      f'they are prepared once into {builder.data_dir_root}, or\n'
      f'  * pass a data_dir that already holds the tfds-prepared fashion_mnist (looked for '
      f'{builder.data_dir}), or\n'
      f'  * load it once on a machine with network access, where tfds downloads it ({network}).')


def check_file(path, expected_sha256: str) -> None:
  """Raises UsageError unless path is gzip whose decompressed content has expected_sha256."""
  name = path.name
  fix = (f'replace it with {name} from {HOMEPAGE}, still gzipped (in {DEBIAN_DIR}: '
         'apt-get install --reinstall dataset-fashion-mnist)')
  digest = hashlib.sha256()
  with open(path, 'rb') as raw:
    if raw.read(2) != b'\x1f\x8b':
      raise UsageError(f'{path} is not a gzip file; {fix}.')
    raw.seek(0)
    try:
      with gzip.GzipFile(fileobj=raw) as f:
        for block in iter(lambda: f.read(1 << 20), b''):
          digest.update(block)
    except (EOFError, OSError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
      raise UsageError(f'{path} is truncated or corrupt ({e}); {fix}.') from e
  if digest.hexdigest() != expected_sha256:
    raise UsageError(
        f'{path} is not Fashion-MNIST\'s {name}: its decompressed content has sha256 '
        f'{digest.hexdigest()}, not {expected_sha256} (another file, perhaps MNIST\'s of the '
        f'same name); {fix}.')


def online(timeout: float = ONLINE_TIMEOUT_S) -> bool:
  """Whether Zalando's server answers a HEAD request for a small file within timeout seconds.

  The request runs in a daemon thread joined with the timeout, since name resolution itself
  honours no timeout.
  """
  answered = []

  def ask():
    request = urllib.request.Request(URL + FILES['train'][1], method='HEAD')
    try:
      with urllib.request.urlopen(request, timeout=timeout):
        answered.append(True)
    except (OSError, ValueError):  # urllib's URLError and HTTPError are OSErrors
      pass

  thread = threading.Thread(target=ask, daemon=True)
  thread.start()
  thread.join(timeout)
  return bool(answered)


def _read_split(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
  """All of a split as uint8 (N, 28, 28, 1) images and int32 labels, in the files' order."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    # Raw records, parsed here with tfds' TensorFlow-free Example proto: 60k records take
    # ~0.7 s instead of the ~3 s of tfds' generic per-feature decoding.
    source = builder.as_data_source(split, deserialize_method=_RAW_BYTES)
  except NotImplementedError:
    tfds_data._data_source(builder, split)  # pylint: disable=protected-access
    raise  # not reached: that raises the UsageError saying how to convert the format
  n = len(source)
  images = np.empty((n, _SIZE, _SIZE, 1), np.uint8)
  labels = np.empty((n,), np.int32)
  for start in range(0, n, tfds_data._CHUNK):  # pylint: disable=protected-access
    keys = list(range(start, min(n, start + tfds_data._CHUNK)))  # pylint: disable=protected-access
    for i, record in zip(keys, tfds_data._getitems(source, keys)):  # pylint: disable=protected-access
      feature = tf_example_pb2.Example.FromString(record).features.feature
      png = feature['image'].bytes_list.value[0]  # tfds stores the image as PNG
      images[i, :, :, 0] = np.asarray(Image.open(io.BytesIO(png), formats=('PNG',)))
      labels[i] = feature['label'].int64_list.value[0]
  # The builder's key is the position in the files; tfds stores records sorted by the md5 of
  # the key salted with the split name. Stored record p therefore is file record keys[p].
  hasher = tfds_hashing.Hasher(split)
  keys = np.array(sorted(range(n), key=hasher.hash_key), np.int64)
  in_file_order = np.empty_like(keys)
  in_file_order[keys] = np.arange(n)
  return images[in_file_order], labels[in_file_order]


def _idx(magic: int, array: np.ndarray) -> bytes:
  """array (uint8) as an IDX file: magic, dimensions as big-endian uint32, then the bytes."""
  return struct.pack(f'>{1 + array.ndim}I', magic, *array.shape) + array.tobytes()
