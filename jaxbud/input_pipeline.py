"""The one input pipeline: training batches and evaluation batches for every jaxbud run.

Training, prune-and-tune and evaluation all read data through here, so an ImageNet prune run
streams exactly as an ImageNet training run does.

- `train_batches` yields (step, global batch) for steps start..stop-1. Epoch e of a stream is a
  permutation seeded by (seed, e) alone (`jaxbud.data.epoch_order`), so a run restored at step s
  reads exactly the batches it would have read. With `drop_last=False` (training runs, as the
  reference's DataLoader) an epoch ends with its partial batch, trimmed to a multiple of the
  device count so that it shards evenly (`jaxbud.data.epoch_layout`); with `drop_last=True`
  (the default: prune-and-tune runs, benchmarks) every batch is full and the remainder is not
  read. In-memory datasets (digits, Fashion-MNIST, CIFAR, synthetic) are indexed here; ImageNet
  is streamed by `jaxbud.data.stream`, whose workers decode, crop and flip on the host.
- `eval_batches` yields this process's rows of each global test batch, padded with mask 0.
- Each process reads (decodes) only its own rows of every global batch (`local_rows`).

Pad-and-crop and flips of in-memory data happen on the device inside the jitted step
(`device_augment` says which); streamed batches arrive augmented.
"""
import jax
import numpy as np

from jaxbud import augment
from jaxbud import data as data_lib
from jaxbud import parallel
from jaxbud.errors import UsageError


def streamed(config) -> bool:
  """Whether the dataset is read through jaxbud.data.stream (ImageNet) rather than arrays."""
  return config.data.name == 'imagenet2012'


def pad_mode(config, prune: bool = False) -> str:
  """The random crop's padding: `data.pad_mode` for training runs, `prune.pad_mode` for
  prune-and-tune runs (the reference pads by reflection in training, with zeros in pruning)."""
  field = 'prune.pad_mode' if prune else 'data.pad_mode'
  mode = config.prune.pad_mode if prune else config.data.pad_mode
  if mode not in augment.PAD_MODES:
    raise UsageError(f'unknown {field} {mode!r}; expected one of {tuple(augment.PAD_MODES)}')
  return mode


def device_augment(config, prune: bool = False) -> dict:
  """The jitted step's augmentation, as keyword arguments of `train.make_train_step` and
  `prune.make_prune_step`: crop_pad, flip and pad_mode (see `pad_mode`; `prune` for a
  prune-and-tune run's step). None for streamed data, augmented on the host."""
  if streamed(config):
    return dict(crop_pad=0, flip=False, pad_mode='zeros')
  return dict(crop_pad=config.data.crop_pad, flip=config.data.flip,
              pad_mode=pad_mode(config, prune))


def steps_per_epoch(n: int, batch_size: int, *, drop_last: bool,
                    devices: int | None = None) -> int:
  """Steps in one epoch of n examples (see `jaxbud.data.epoch_layout`)."""
  return data_lib.epoch_layout(n, batch_size, drop_last=drop_last, devices=devices)[0]


def local_rows(batch: dict) -> dict:
  """This process's contiguous share of a global host batch."""
  n, p = jax.process_count(), jax.process_index()
  return {k: v[len(v) * p // n:len(v) * (p + 1) // n] for k, v in batch.items()}


def array_batches(ds: data_lib.Dataset, seed: int, batch_size: int, start: int, stop: int,
                  drop_last: bool = True):
  """Yields (step, this process's rows of global batch `step`) from the in-memory arrays.

  Batch i of epoch e holds rows i * batch_size... of epoch e's permutation, so the batches
  depend on the step alone; with drop_last=False an epoch's last one is partial
  (`jaxbud.data.epoch_layout`).
  """
  n = len(ds.train_labels)
  spe, last = data_lib.epoch_layout(n, batch_size, drop_last=drop_last)
  for step in range(start, stop):
    epoch, i = divmod(step, spe)
    if i == 0 or step == start:
      order = data_lib.epoch_order(seed, epoch, n)
    rows = last if i == spe - 1 else batch_size
    idx = np.sort(order[i * batch_size:i * batch_size + rows])
    idx = local_rows({'i': idx})['i']  # each process reads (decodes) only its own rows
    yield step, {'image': ds.train_images[idx], 'label': ds.train_labels[idx]}


def train_batches(config, ds: data_lib.Dataset, *, seed: int, batch_size: int, start: int,
                  stop: int, mesh, drop_last: bool = True):
  """Yields (step, global batch on `mesh`) for steps start..stop-1 (see the module doc).

  Training runs pass drop_last=False and count their epochs with `steps_per_epoch` alike.
  """
  if not streamed(config):
    for step, batch in array_batches(ds, seed, batch_size, start, stop, drop_last):
      yield step, parallel.put_batch(mesh, batch)
    return
  from jaxbud.data import stream  # pylint: disable=g-import-not-at-top
  dcfg = config.data
  source = stream.open_source(dcfg.name, 'train', dcfg.data_dir or None)
  for step, batch in stream.train_batches(
      source, seed=seed, batch_size=batch_size, start=start, stop=stop,
      image_size=dcfg.image_size, flip=dcfg.flip, workers=dcfg.get('stream_workers', 0),
      drop_last=drop_last):
    yield step, parallel.put_batch(mesh, batch)


def array_test_batches(images, labels, batch_size: int):
  """This process's rows of the test split's global batches, the last one padded (mask 0)."""
  n = len(labels)
  for start in range(0, n, batch_size):
    rows = local_rows({'i': np.arange(start, start + batch_size)})['i']  # read only these
    idx = rows[rows < n]
    pad = len(rows) - len(idx)
    batch = {'image': images[idx], 'label': labels[idx], 'mask': np.ones(len(idx), np.float32)}
    if pad:
      batch = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)])
               for k, v in batch.items()}
    yield batch


def eval_batches(config, ds: data_lib.Dataset, batch_size: int | None = None):
  """This process's rows of every global test batch, in test-split order, last one masked.

  In-memory arrays, or for ImageNet the validation split streamed as centre crops, decoded by
  the stream's workers.
  """
  # Rounded up to a multiple of the device count; the padding rows are masked out.
  batch_size = parallel.divisible_batch(batch_size or config.train.eval_batch_size)
  if not streamed(config):
    return array_test_batches(ds.test_images, ds.test_labels, batch_size)
  from jaxbud.data import stream  # pylint: disable=g-import-not-at-top
  dcfg = config.data
  source = stream.open_source(dcfg.name, 'validation', dcfg.data_dir or None)
  return stream.eval_batches(source, batch_size=batch_size, image_size=dcfg.image_size,
                             workers=dcfg.get('stream_workers', 0))
