"""Streaming ImageNet-scale input: grain over a tfds data source, JPEGs decoded in workers.

`train_batches` has the contract of `jaxbud.input_pipeline.array_batches`: this process's rows, as
numpy, decoded and augmented on the host:

- Global batch `step` holds the records `input_pipeline.array_batches` would pick: epoch
  e = step // steps_per_epoch is the permutation seeded by (seed, e). With drop_last=False
  (training runs) an epoch ends with its partial batch, trimmed to a multiple of the device
  count (`jaxbud.data.epoch_layout`).
- Each process reads and decodes only its contiguous rows of every global batch.
- Example `row` of global batch `step` gets an Inception-style random-resized crop and a
  random horizontal flip drawn from (seed, step, row) alone.

So a run restarted at step s sees exactly the batches it would have seen, whatever the number
of hosts or decoding workers. One grain element is one step's local batch. With workers > 0,
grain's `mp_prefetch` deals the steps round-robin to that many spawned processes, each decoding
whole batches and handing them over in shared memory (/dev/shm). Processes, not threads:
Pillow holds the GIL while decoding, and a thread pool measured no faster than one thread.
With workers = 0 one background thread of this process decodes. Either way batches are
decoded ahead of the training loop. A script that uses workers > 0 needs the
`if __name__ == '__main__':` guard, since the workers are spawned.

`eval_batches` streams a split once in order, centre-cropped, padded and masked.
`python -m jaxbud.data.stream --bench` measures images/s (see docs/data.md).
"""
import io
import math

from absl import flags
import grain
import numpy as np
from PIL import Image

from jaxbud import data as data_lib
from jaxbud.errors import UsageError

AREA_RANGE = (0.08, 1.0)      # crop area as a fraction of the image area
ASPECT_RANGE = (3 / 4, 4 / 3)  # crop width / height, drawn log-uniformly
EVAL_CROP = 0.875             # centre crop side / shorter side: 224 of 256
ATTEMPTS = 10                 # crop draws before falling back to the centre crop
_AUGMENT = 0x617567           # keeps augmentation seeds apart from epoch_order's (seed, epoch)


def open_source(name: str = 'imagenet2012', split: str = 'train', data_dir: str | None = None):
  """A prepared tfds split as random-access records whose 'image' is the encoded JPEG.

  Preparing (once, from the manual-download tars) is `jaxbud.data.load(name, ...)`'s job.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from jaxbud.data import tfds_data  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    raise UsageError(f'{name} is not prepared in {builder.data_dir}; prepare it once with '
                     f'jaxbud.data.load({name!r}, data_dir=..., manual_dir=...) '
                     '(see docs/data.md)')
  return tfds_data._data_source(  # pylint: disable=protected-access
      builder, split, decoders={'image': tfds.decode.SkipDecoding()})


center_box = data_lib.center_box


def inception_box(width: int, height: int, rng: np.random.Generator,
                  area_range=AREA_RANGE, aspect_range=ASPECT_RANGE) -> tuple[float, ...]:
  """A random crop box (left, top, right, bottom) inside a width x height image.

  Up to ATTEMPTS draws of an area fraction (uniform in area_range) and an aspect ratio
  (log-uniform in aspect_range); the first that fits is placed uniformly at random. If none
  fits, the EVAL_CROP centre square, as in the flax ImageNet example.
  """
  log_aspect = np.log(aspect_range)
  for _ in range(ATTEMPTS):
    area = width * height * rng.uniform(*area_range)
    aspect = math.exp(rng.uniform(*log_aspect))
    w, h = math.sqrt(area * aspect), math.sqrt(area / aspect)
    if w <= width and h <= height:
      left, top = rng.uniform(0, width - w), rng.uniform(0, height - h)
      return left, top, left + w, top + h
  return center_box(width, height, EVAL_CROP)


def random_resized_crop(encoded: bytes, size: int, rng: np.random.Generator, flip: bool = True,
                        area_range=AREA_RANGE, aspect_range=ASPECT_RANGE) -> np.ndarray:
  """Decodes an image to uint8 RGB (size, size, 3): random crop, resize, maybe mirrored."""
  img = Image.open(io.BytesIO(encoded))
  width, height = img.size
  left, top, right, bottom = inception_box(width, height, rng, area_range, aspect_range)
  # JPEG decodes at the smallest 1/2^k scale at which the crop still has >= size pixels a side.
  img.draft('RGB', (math.ceil(width * size / (right - left)),
                    math.ceil(height * size / (bottom - top))))
  sx, sy = img.size[0] / width, img.size[1] / height
  img = img.convert('RGB').resize((size, size), Image.Resampling.BICUBIC,
                                  box=(left * sx, top * sy, right * sx, bottom * sy))
  if flip and rng.random() < 0.5:
    img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  return np.asarray(img, np.uint8)


def center_crop(encoded: bytes, size: int, fraction: float = EVAL_CROP) -> np.ndarray:
  """`jaxbud.data.center_crop` with the standard evaluation fraction (224 of 256) by default;
  fraction=1 is exactly jaxbud.data.tfds_data.decode_center_crop (LazyImages)."""
  return data_lib.center_crop(encoded, size, fraction)


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  """(process index, process count), jax's where not given."""
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  return process_index, process_count


def local_rows(batch_size: int, process_index: int | None = None,
               process_count: int | None = None) -> slice:
  """This process's contiguous rows of a global batch (jax's process index/count by default)."""
  process_index, process_count = _process(process_index, process_count)
  if not 0 <= process_index < process_count:
    raise UsageError(f'process_index must be in [0, {process_count}), got {process_index}')
  if batch_size < 1 or batch_size % process_count:
    raise UsageError(f'batch size {batch_size} must be a positive multiple of the '
                     f'{process_count} processes, so each reads the same number of rows')
  local = batch_size // process_count
  return slice(process_index * local, (process_index + 1) * local)


def _read(source, keys: np.ndarray) -> list:
  keys = [int(k) for k in keys]
  # One batched read is much faster than a Python loop of single reads.
  if hasattr(source, '__getitems__'):
    return source.__getitems__(keys)
  return [source[k] for k in keys]


class _TrainStep:
  """step -> (step, this process's rows of global batch `step`, decoded and augmented).

  Pickled into each grain worker; a worker keeps the permutation of its current epoch.
  """

  def __init__(self, source, seed, batch_size, layout, process, image_size, flip, area_range,
               aspect_range):
    self.source, self.seed, self.batch_size = source, seed, batch_size
    self.steps_per_epoch, self.last = layout  # jaxbud.data.epoch_layout
    self.process_index, self.process_count = process
    self.image_size, self.flip = image_size, flip
    self.area_range, self.aspect_range = area_range, aspect_range
    self.n = len(source)
    self._order = (None, None)  # (epoch, permutation); replaced whole, so thread-safe

  def records(self, step: int) -> np.ndarray:
    """Sorted record indices of global batch `step` (as input_pipeline.array_batches)."""
    epoch, i = divmod(step, self.steps_per_epoch)
    cached, order = self._order
    if cached != epoch:
      order = data_lib.epoch_order(self.seed, epoch, self.n)
      self._order = (epoch, order)
    size = self.last if i == self.steps_per_epoch - 1 else self.batch_size
    return np.sort(order[i * self.batch_size:i * self.batch_size + size])

  def __call__(self, step: int):
    step = int(step)
    keys = self.records(step)
    # This process's contiguous share (input_pipeline.local_rows), of a full or partial batch.
    first = len(keys) * self.process_index // self.process_count
    keys = keys[first:len(keys) * (self.process_index + 1) // self.process_count]
    records = _read(self.source, keys)
    images = np.empty((len(keys), self.image_size, self.image_size, 3), np.uint8)
    for i, record in enumerate(records):
      rng = np.random.default_rng([self.seed, _AUGMENT, step, first + i])
      images[i] = random_resized_crop(record['image'], self.image_size, rng, self.flip,
                                      self.area_range, self.aspect_range)
    labels = np.array([r['label'] for r in records], np.int32).reshape(len(records))
    return step, {'image': images, 'label': labels}


class _EvalBatch:
  """b -> this process's rows of eval batch b, centre-cropped; the last batch zero-padded."""

  def __init__(self, source, batch_size, rows, image_size, fraction):
    self.source, self.batch_size, self.rows = source, batch_size, rows
    self.image_size, self.fraction = image_size, fraction

  def __call__(self, b: int):
    n, size, local = len(self.source), self.image_size, self.rows.stop - self.rows.start
    first = int(b) * self.batch_size + self.rows.start
    keys = np.arange(first, min(first + local, n))
    batch = {'image': np.zeros((local, size, size, 3), np.uint8),
             'label': np.zeros((local,), np.int32), 'mask': np.zeros((local,), np.float32)}
    for i, record in enumerate(_read(self.source, keys) if len(keys) else []):
      batch['image'][i] = center_crop(record['image'], size, self.fraction)
      batch['label'][i] = record['label']
      batch['mask'][i] = 1.0
    return batch


def _check_common(image_size: int, workers: int, prefetch: int) -> None:
  if image_size < 1:
    raise UsageError(f'image_size must be >= 1, got {image_size}')
  if workers < 0:
    raise UsageError(f'workers must be >= 0 (0: decode in a thread of this process), '
                     f'got {workers}')
  if prefetch < 1:
    raise UsageError(f'prefetch must be >= 1 batch, got {prefetch}')


def _stream(ds: grain.MapDataset, workers: int, prefetch: int):
  """Iterates ds with its elements computed ahead, in worker processes if workers > 0."""
  # In a worker, one element decoding ahead plus the worker's output buffer.
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=1,
                                            prefetch_buffer_size=1 if workers else prefetch))
  if workers:
    if not flags.FLAGS.is_parsed():
      # grain's process prefetch reads its absl flags; outside an absl app (a script, pytest)
      # nothing parsed them, so they take their defaults.
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                     per_worker_buffer_size=prefetch))
  iterator = iter(it)
  try:
    yield from iterator
  finally:
    iterator.close()  # stops the workers when the loop ends early or is garbage collected


def train_batches(source, *, seed: int, batch_size: int, start: int, stop: int,
                  image_size: int, process_index: int | None = None,
                  process_count: int | None = None, workers: int = 0, prefetch: int = 2,
                  flip: bool = True, area_range=AREA_RANGE, aspect_range=ASPECT_RANGE,
                  drop_last: bool = True, devices: int | None = None):
  """Yields (step, {'image': uint8 (B_local, S, S, 3), 'label': int32 (B_local,)}) for steps
  start..stop-1: this process's rows of each global batch of batch_size (see module doc).

  source: random-access records {'image': encoded bytes, 'label': int} (`open_source`, or
    any sequence of such dicts). S is image_size.
  process_index, process_count: default to jax's; B_local = batch_size / process_count.
  workers: decoding processes (0: one background thread of this process).
  prefetch: batches each worker (or the thread) decodes ahead.
  drop_last: False keeps each epoch's last partial batch, trimmed to a multiple of `devices`
    (default jax.device_count()); B_local is then that batch's share.
  Arguments are checked here, before the first batch is asked for.
  """
  local_rows(batch_size, process_index, process_count)  # checks the process arguments
  _check_common(image_size, workers, prefetch)
  if batch_size > len(source):
    raise UsageError(f'batch size {batch_size} is larger than the {len(source)} records')
  if not 0 <= start <= stop:
    raise UsageError(f'need 0 <= start <= stop, got start={start}, stop={stop}')
  layout = data_lib.epoch_layout(len(source), batch_size, drop_last=drop_last,
                                 devices=devices)
  fn = _TrainStep(source, seed, batch_size, layout, _process(process_index, process_count),
                  image_size, flip, area_range, aspect_range)
  return _stream(grain.MapDataset.range(start, stop).map(fn), workers, prefetch)


def eval_batches(source, *, batch_size: int, image_size: int, fraction: float = EVAL_CROP,
                 process_index: int | None = None, process_count: int | None = None,
                 workers: int = 0, prefetch: int = 2):
  """Yields this process's rows of the split's global batches in record order, as
  {'image', 'label', 'mask'}: centre crops (`center_crop`), the last batch padded with mask 0.
  """
  rows = local_rows(batch_size, process_index, process_count)
  _check_common(image_size, workers, prefetch)
  if not 0 < fraction <= 1:
    raise UsageError(f'fraction must be in (0, 1], got {fraction}')
  fn = _EvalBatch(source, batch_size, rows, image_size, fraction)
  steps = -(-len(source) // batch_size)
  return _stream(grain.MapDataset.range(steps).map(fn), workers, prefetch)


def synthetic_source(num_images: int, width: int = 500, height: int = 375,
                     seed: int = 0) -> list:
  """In-memory records of JPEG photos-like images (smooth colour fields plus noise, ~80 KB
  each at 500x375, quality 90) with labels 0..9: a stand-in for ImageNet in benchmarks.
  """
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:height, 0:width].astype(np.float32)
  records = []
  for i in range(num_images):
    a, b, c = rng.uniform(0.2, 2.0, 3)
    field = np.stack([(a * x + y) % 256, (b * y + 7 * i) % 256, (c * (x + y) / 4) % 256], -1)
    img = np.clip(field + rng.normal(0, 12, field.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(img).save(out, format='JPEG', quality=90)
    records.append({'image': out.getvalue(), 'label': i % 10})
  return records


def benchmark(workers=(0, 1, 2), num_images: int = 256, width: int = 500, height: int = 375,
              batch_size: int = 32, image_size: int = 224, epochs: int = 4) -> list[dict]:
  """images/s of train_batches on synthetic_source, per worker count, and of serial decoding.

  'serial' is decode_center_crop image by image in the calling thread (what LazyImages does).
  A pipeline's rate is over its last 3/4 of the batches, once all workers run; first_batch_s
  includes starting the worker processes. cpu_ms_per_image is this process's CPU time per
  image over the same batches: the decoding cost for serial and workers=0 (which a busy
  machine changes less than the rate), what taking batches from the workers costs otherwise.
  """
  import time  # pylint: disable=g-import-not-at-top
  from jaxbud.data import tfds_data  # pylint: disable=g-import-not-at-top
  source = synthetic_source(num_images, width, height)
  steps = epochs * (num_images // batch_size)
  if steps < 2:
    raise UsageError(f'{epochs} epochs of {num_images} images in batches of {batch_size} is '
                     f'{steps} steps; a rate needs at least 2')
  t, cpu = time.perf_counter(), time.process_time()
  for record in source:
    tfds_data.decode_center_crop(record['image'], image_size)
  results = [{'pipeline': 'serial', 'workers': 0,
              'images_per_s': len(source) / (time.perf_counter() - t),
              'cpu_ms_per_image': 1e3 * (time.process_time() - cpu) / len(source),
              'first_batch_s': 0.0}]
  warmup = max(1, steps // 4)
  for w in workers:
    times, cpus = [time.perf_counter()], [time.process_time()]
    for _ in train_batches(source, seed=0, batch_size=batch_size, start=0, stop=steps,
                           image_size=image_size, process_index=0, process_count=1, workers=w):
      times.append(time.perf_counter())
      cpus.append(time.process_time())
    images = (steps - warmup) * batch_size
    results.append({'pipeline': 'train_batches', 'workers': w,
                    'images_per_s': images / (times[-1] - times[warmup]),
                    'cpu_ms_per_image': 1e3 * (cpus[-1] - cpus[warmup]) / images,
                    'first_batch_s': times[1] - times[0]})
  return results


def main(argv=None) -> None:
  """python -m jaxbud.data.stream --bench [--workers 0,1,2] [--images 256] ..."""
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(prog='python -m jaxbud.data.stream', description=main.__doc__)
  parser.add_argument('--bench', action='store_true', help='measure images/s')
  parser.add_argument('--workers', default='0,1,2', help='comma-separated worker counts')
  parser.add_argument('--images', type=int, default=256)
  parser.add_argument('--width', type=int, default=500)
  parser.add_argument('--height', type=int, default=375)
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--size', type=int, default=224)
  parser.add_argument('--epochs', type=int, default=4)
  args = parser.parse_args(argv)
  if not args.bench:
    parser.error('nothing to do: pass --bench')
  try:
    workers = tuple(int(w) for w in args.workers.split(','))
    results = benchmark(workers, args.images, args.width, args.height, args.batch, args.size,
                        args.epochs)
  except ValueError as e:
    parser.error(str(e))
  print(f'{args.images} synthetic {args.width}x{args.height} JPEGs -> {args.size}x{args.size}, '
        f'batch {args.batch}, {args.epochs} epochs')
  for r in results:
    print(f"{r['pipeline']:>14}  workers {r['workers']}  {r['images_per_s']:7.1f} images/s  "
          f"{r['cpu_ms_per_image']:5.2f} CPU ms/image here  first batch {r['first_batch_s']:.2f} s")


if __name__ == '__main__':
  # By its import name, so the worker processes unpickle this module's functions.
  from jaxbud.data import stream  # pylint: disable=g-import-not-at-top,import-self
  stream.main()
