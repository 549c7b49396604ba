"""Datasets as uint8 NHWC images and int32 labels, loaded once and indexed by the training loop.

`load(name, ...)` is the one entry point. Augmentation and normalisation happen on the
accelerator inside the jitted step (see jaxbud.augment), so a dataset here is just arrays plus
the per-channel statistics used to normalise them.
"""
import dataclasses
import importlib.util
import math
import os

import numpy as np

from jaxbud.errors import UsageError


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A classification dataset held as arrays.

  train_images / test_images: uint8 (N, H, W, C) arrays, or any object with `shape`, `__len__`
  and numpy-style integer-array indexing returning such a batch (a lazy source for data that
  does not fit in memory). Labels are int32 (N,). mean/std are per channel on the 0..255 scale.
  """
  name: str
  train_images: object
  train_labels: np.ndarray
  test_images: object
  test_labels: np.ndarray
  num_classes: int
  mean: tuple[float, ...]
  std: tuple[float, ...]

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.train_images.shape[1:])


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
  """The record order of training epoch `epoch`: a permutation seeded by (seed, epoch) alone,
  so that a resumed run, or the streaming pipeline, reads exactly the same batches."""
  return np.random.default_rng([seed, epoch]).permutation(n)


def epoch_layout(n: int, batch_size: int, *, drop_last: bool,
                 devices: int | None = None) -> tuple[int, int]:
  """(steps per epoch, rows of the epoch's last batch) for n examples in global batches.

  drop_last=False keeps the last partial batch, as torch's DataLoader does by default
  (ceil(n / batch_size) steps: 391 per CIFAR epoch at batch 128), trimmed to a multiple of
  `devices` (default: jax.device_count()) so that it shards evenly; a remainder smaller than
  that is dropped. drop_last=True gives floor(n / batch_size) full batches.
  """
  full, rest = divmod(n, batch_size)
  if not drop_last:
    if devices is None:
      import jax  # pylint: disable=g-import-not-at-top
      devices = jax.device_count()
    rest -= rest % devices
    if rest:
      return full + 1, rest
  return full, batch_size


def center_box(width: float, height: float, fraction: float) -> tuple[float, ...]:
  """(left, top, right, bottom) of the centred square whose side is fraction * shorter side."""
  s = fraction * min(width, height)
  return ((width - s) / 2, (height - s) / 2, (width + s) / 2, (height + s) / 2)


def center_crop(encoded: bytes, size: int, fraction: float = 1.0) -> np.ndarray:
  """Decodes an image to uint8 RGB (size, size, 3): the centre square of side fraction *
  shorter side, resized to size (the same as resizing the shorter side to size / fraction and
  cropping the centre, with less work)."""
  import io  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  img = Image.open(io.BytesIO(encoded))
  # For JPEG, decode directly at the smallest 1/2^k scale that keeps both sides >= size/fraction.
  side = math.ceil(size / fraction)
  img.draft('RGB', (side, side))
  img = img.convert('RGB')
  return np.asarray(img.resize((size, size), Image.Resampling.BICUBIC,
                               box=center_box(*img.size, fraction)), np.uint8)


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Per-channel mean and std (0..255 scale) of a uint8 NHWC array."""
  c = images.shape[-1]
  total, sq, count = np.zeros(c), np.zeros(c), 0
  for start in range(0, len(images), 4096):  # chunks: no float copy of the whole set
    x = images[start:start + 4096].reshape(-1, c).astype(np.float64)
    total, sq, count = total + x.sum(0), sq + np.square(x).sum(0), count + len(x)
  mean = total / count
  std = np.sqrt(np.maximum(sq / count - mean * mean, 0.0))
  return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def digits(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
  """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes), no download.

  Pixel values 0..16 are scaled to uint8 0..255 (x * 255 / 16, rounded). The split is a fixed
  stratified one, scikit-learn's train_test_split(test_size=0.2, random_state=0,
  stratify=labels): 1,437 train and 360 test images. Both are read without importing
  scikit-learn, which takes seconds (every launcher process would pay them): the file is read
  from the installed package and the split is `stratified_split`.
  """
  images, labels = _digits_arrays()
  images = np.round(images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  train, test = stratified_split(labels, test_fraction, seed)
  tr_x, te_x, tr_y, te_y = images[train], images[test], labels[train], labels[test]
  mean, std = channel_stats(tr_x)
  return Dataset('digits', tr_x, tr_y, te_x, te_y, 10, mean, std)


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
  """(float64 (1797, 8, 8) images 0..16, int32 labels), as sklearn.datasets.load_digits."""
  spec = importlib.util.find_spec('sklearn')  # finds the package without importing it
  path = (os.path.join(spec.submodule_search_locations[0], 'datasets', 'data', 'digits.csv.gz')
          if spec and spec.submodule_search_locations else '')
  if not os.path.exists(path):  # another layout: ask scikit-learn itself
    from sklearn import datasets as skd  # pylint: disable=g-import-not-at-top
    raw = skd.load_digits()
    return raw.images, raw.target.astype(np.int32)
  raw = np.loadtxt(path, delimiter=',')  # what load_digits reads: 64 pixels and the label
  return raw[:, :-1].reshape(-1, 8, 8), raw[:, -1].astype(np.int32)


def stratified_split(labels: np.ndarray, test_fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(train, test) indices of scikit-learn's train_test_split(test_size=test_fraction,
  random_state=seed, stratify=labels), index for index: its StratifiedShuffleSplit drawn with
  the same numpy RandomState calls in the same order (tests/test_train.py checks it against
  scikit-learn)."""
  n_test = math.ceil(test_fraction * len(labels))
  _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
  members = np.split(np.argsort(inverse, kind='stable'), np.cumsum(counts)[:-1])
  rng = np.random.RandomState(seed)
  n_train = _approximate_mode(counts, len(labels) - n_test, rng)
  n_test = _approximate_mode(counts - n_train, n_test, rng)
  train, test = [], []
  for idx, count, a, b in zip(members, counts, n_train, n_test):
    shuffled = idx.take(rng.permutation(count), mode='clip')
    train.extend(shuffled[:a])
    test.extend(shuffled[a:a + b])
  return rng.permutation(train), rng.permutation(test)


def _approximate_mode(counts: np.ndarray, draws: int, rng) -> np.ndarray:
  """Per-class draws near the hypergeometric mode, ties broken by `rng` (scikit-learn's
  sklearn.utils.extmath._approximate_mode)."""
  continuous = counts / counts.sum() * draws
  floored = np.floor(continuous)
  need = int(draws - floored.sum())
  remainder = continuous - floored
  for value in np.sort(np.unique(remainder))[::-1]:
    if need <= 0:
      break
    (inds,) = np.where(remainder == value)
    add = min(len(inds), need)
    floored[rng.choice(inds, size=add, replace=False)] += 1
    need -= add
  return floored.astype(int)


class SyntheticImages:
  """Random uint8 NHWC images made on demand: image i is ``pool[i % len(pool)]``.

  The pool (at most `POOL` images) is drawn once from `seed`, so any number of images costs the
  memory of the pool, and indexing a batch is one numpy gather, as with an in-memory dataset:
  a benchmark of the training loop sees the host cost of real arrays, not of an image generator.
  Supports what the training loop uses: `shape`, `dtype`, `len()` and indexing by an integer,
  a slice or an integer array.
  """
  POOL = 1024

  def __init__(self, n: int, image_shape, seed: int):
    self.shape = (n, *image_shape)
    self.dtype = np.dtype(np.uint8)
    rng = np.random.default_rng(seed)
    self._pool = rng.integers(0, 256, (min(n, self.POOL), *image_shape), dtype=np.uint8)

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, index):
    idx = np.arange(self.shape[0])[index]  # numpy's own rules for ints, slices and arrays
    return self._pool[idx % len(self._pool)]


# What data.name='synthetic' makes unless the config's data.synthetic says otherwise: CIFAR-10's
# shape and split sizes.
SYNTHETIC_DEFAULTS = dict(train_size=50_000, test_size=10_000, image_size=32, channels=3,
                          num_classes=10, seed=0)


def synthetic(train_size: int = 50_000, test_size: int = 10_000, image_size: int = 32,
              channels: int = 3, num_classes: int = 10, seed: int = 0) -> Dataset:
  """Random uint8 images and uniform int32 labels, deterministic from `seed`, no download.

  For benchmarks and smoke tests of the training loop on any machine (the flax examples and
  big_vision have the same). Nothing can be learnt from it: test error stays at chance.
  mean/std are those of uniform bytes (127.5 and about 73.9).
  """
  for field, value, low in (('train_size', train_size, 1), ('test_size', test_size, 1),
                            ('image_size', image_size, 1), ('channels', channels, 1),
                            ('num_classes', num_classes, 2)):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      raise UsageError(f'data.synthetic.{field} must be an integer >= {low}, got {value!r}')
  shape = (image_size, image_size, channels)
  rng = np.random.default_rng([seed, 1])
  train_labels = rng.integers(0, num_classes, train_size, dtype=np.int32)
  test_labels = rng.integers(0, num_classes, test_size, dtype=np.int32)
  std = float(np.sqrt((256 ** 2 - 1) / 12))  # of a uniform byte
  return Dataset('synthetic', SyntheticImages(train_size, shape, seed),
                 train_labels, SyntheticImages(test_size, shape, seed + 1), test_labels,
                 num_classes, (127.5,) * channels, (std,) * channels)


NAMES = ('digits', 'cifar10', 'cifar100', 'fashion_mnist', 'imagenet2012', 'synthetic')
# (training images, image shape, classes) of each dataset, known without loading it.
_SHAPES = {'digits': (1437, (8, 8, 1), 10), 'cifar10': (50_000, (32, 32, 3), 10),
           'cifar100': (50_000, (32, 32, 3), 100), 'fashion_mnist': (60_000, (28, 28, 1), 10),
           'imagenet2012': (1_281_167, None, 1000)}
# Datasets held as uint8 arrays in memory: the ones `downsample` applies to.
_IN_MEMORY = ('digits', 'cifar10', 'cifar100', 'fashion_mnist')


def describe(name: str, image_size: int = 224, synthetic_options: dict | None = None,
             downsample: int = 1) -> tuple[int, tuple[int, int, int], int]:
  """(training images, (H, W, C), classes) of dataset `name`, without loading it.

  The shape is the one `load` returns with the same `downsample`, which is checked here.
  """
  if isinstance(downsample, bool) or not isinstance(downsample, int) or downsample < 1:
    raise UsageError(f'data.downsample must be an integer >= 1, got {downsample!r}')
  if name == 'synthetic':
    o = {**SYNTHETIC_DEFAULTS, **(synthetic_options or {})}
    n, shape, classes = (o['train_size'], (o['image_size'], o['image_size'], o['channels']),
                         o['num_classes'])
  elif name in _SHAPES:
    n, shape, classes = _SHAPES[name]
    shape = shape or (image_size, image_size, 3)
  else:
    raise UsageError(f'unknown dataset {name!r}; expected one of {list(NAMES)}')
  if downsample == 1:
    return n, shape, classes
  if name not in _IN_MEMORY:
    raise UsageError(
        f'data.downsample={downsample} applies to the in-memory datasets {list(_IN_MEMORY)}, '
        f'not {name!r}; set its image size instead (data.image_size, or '
        'data.synthetic.image_size) and leave data.downsample at 1')
  h, w, c = shape
  if h % downsample or w % downsample:
    side = math.gcd(h, w)
    divisors = [f for f in range(1, side + 1) if side % f == 0]
    raise UsageError(f'data.downsample={downsample} does not divide the {h}x{w} images of '
                     f'{name}; use one of {divisors}')
  return n, (h // downsample, w // downsample, c), classes


def mean_pool(images: np.ndarray, factor: int) -> np.ndarray:
  """f x f mean pooling of uint8 NHWC images, rounded half up to uint8 (for f = 2 and 4 the
  same as Pillow's Image.reduce). H and W must divide by f."""
  n, h, w, c = images.shape
  out = np.empty((n, h // factor, w // factor, c), np.uint8)
  area = factor * factor
  for start in range(0, n, 4096):  # chunks: no uint32 copy of the whole set
    x = images[start:start + 4096].astype(np.uint32)
    sums = x.reshape(len(x), h // factor, factor, w // factor, factor, c).sum((2, 4))
    out[start:start + 4096] = (sums + area // 2) // area
  return out


def load(name: str, data_dir: str | None = None, manual_dir: str | None = None,
         image_size: int = 224, synthetic_options=None, downsample: int = 1) -> Dataset:
  """Loads a dataset by name. CIFAR and ImageNet come through tfds (see jaxbud.data.tfds_data),
  Fashion-MNIST too (see jaxbud.data.fashion).

  'synthetic' takes its sizes from `synthetic_options` (a mapping with keys of
  `SYNTHETIC_DEFAULTS`, e.g. a config's data.synthetic section; missing keys keep the defaults).
  `downsample` f > 1 shrinks the images of an in-memory dataset (digits, CIFAR, Fashion-MNIST)
  by f x f mean pooling (`mean_pool`); mean/std are those of the pooled training images.
  """
  describe(name, image_size, synthetic_options, downsample)  # bad name or factor: fail first
  dataset = _load(name, data_dir, manual_dir, image_size, synthetic_options)
  if downsample == 1:
    return dataset
  train_x = mean_pool(dataset.train_images, downsample)
  mean, std = channel_stats(train_x)
  return dataclasses.replace(dataset, train_images=train_x,
                             test_images=mean_pool(dataset.test_images, downsample),
                             mean=mean, std=std)


def _load(name, data_dir, manual_dir, image_size, synthetic_options) -> Dataset:
  if name == 'digits':
    return digits()
  if name == 'synthetic':
    options = dict(synthetic_options or {})
    unknown = sorted(set(options) - set(SYNTHETIC_DEFAULTS))
    if unknown:
      raise UsageError(f'unknown data.synthetic field(s) {unknown}; expected some of '
                       f'{sorted(SYNTHETIC_DEFAULTS)}')
    return synthetic(**{**SYNTHETIC_DEFAULTS, **options})
  if name in ('cifar10', 'cifar100'):
    from jaxbud.data import tfds_data  # pylint: disable=g-import-not-at-top
    return tfds_data.cifar(name, data_dir=data_dir, manual_dir=manual_dir)
  if name == 'fashion_mnist':
    from jaxbud.data import fashion  # pylint: disable=g-import-not-at-top
    return fashion.fashion_mnist(data_dir=data_dir, manual_dir=manual_dir)
  if name == 'imagenet2012':
    from jaxbud.data import tfds_data  # pylint: disable=g-import-not-at-top
    return tfds_data.imagenet(data_dir=data_dir, manual_dir=manual_dir, image_size=image_size)
  raise UsageError(f'unknown dataset {name!r}; expected one of {list(NAMES)}')
