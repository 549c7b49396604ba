"""jaxbud.data.stream on a tiny ImageNet prepared by tfds' own imagenet2012 builder.

The fake manual download has the real layout: ILSVRC2012_img_train.tar holding one tar per
synset (n01440764.tar with n01440764_1000.JPEG, ...) and ILSVRC2012_img_val.tar holding
ILSVRC2012_val_00000001.JPEG, ... whose labels tfds takes from its validation_labels.txt.
"""
import io
import json
import os
import tarfile
import threading

import numpy as np
import pytest
from PIL import Image

from jaxbud import data as data_lib
from jaxbud import input_pipeline
from jaxbud import prune_tune
from jaxbud import train
from jaxbud.data import stream
from jaxbud.data import tfds_data

SYNSETS = ('n01440764', 'n01443537', 'n01484850')  # labels 0, 1, 2 in tfds' labels.txt
PER_CLASS = 8
NUM_TRAIN = len(SYNSETS) * PER_CLASS
NUM_VAL = 6
SIZES = ((64, 48), (48, 72), (80, 60), (60, 60))  # (width, height)
SIZE, BATCH = 24, 8


def _jpeg(array: np.ndarray) -> bytes:
  out = io.BytesIO()
  Image.fromarray(array).save(out, format='JPEG', quality=95)
  return out.getvalue()


def _image(k: int) -> np.ndarray:
  """Image number k: red rises left to right (shows flips), blue is 8 + 10k (names it)."""
  w, h = SIZES[k % len(SIZES)]
  img = np.empty((h, w, 3), np.uint8)
  img[..., 0] = np.linspace(0, 255, w).astype(np.uint8)
  img[..., 1] = 60 + 40 * (k % 3)
  img[..., 2] = 8 + 10 * k
  return img


def _tar(files: dict[str, bytes]) -> bytes:
  out = io.BytesIO()
  with tarfile.open(fileobj=out, mode='w') as tar:
    for name, content in files.items():
      info = tarfile.TarInfo(name)
      info.size = len(content)
      tar.addfile(info, io.BytesIO(content))
  return out.getvalue()


@pytest.fixture(scope='module')
def imagenet(tmp_path_factory):
  """data_dir of the prepared fake imagenet2012, and the Dataset jaxbud.data.load gives."""
  root = tmp_path_factory.mktemp('imagenet')
  manual = root / 'manual'
  manual.mkdir()
  per_class = {}
  for c, synset in enumerate(SYNSETS):
    per_class[f'{synset}.tar'] = _tar({
        f'{synset}_{1000 + j}.JPEG': _jpeg(_image(c * PER_CLASS + j)) for j in range(PER_CLASS)})
  (manual / 'ILSVRC2012_img_train.tar').write_bytes(_tar(per_class))
  (manual / 'ILSVRC2012_img_val.tar').write_bytes(_tar({
      f'ILSVRC2012_val_{i + 1:08d}.JPEG': _jpeg(_image(i)) for i in range(NUM_VAL)}))
  data_dir = str(root / 'tfds')
  ds = tfds_data.imagenet(data_dir=data_dir, manual_dir=str(manual), image_size=SIZE)
  return data_dir, ds


@pytest.fixture(scope='module')
def train_source(imagenet):
  return stream.open_source('imagenet2012', 'train', imagenet[0])


def _k(record) -> int:
  """The image number k of a train record, from its file name."""
  synset, j = record['file_name'].decode().removesuffix('.JPEG').split('_')
  return SYNSETS.index(synset) * PER_CLASS + int(j) - 1000


def _collect(source, **kwargs):
  args = dict(seed=0, batch_size=BATCH, start=0, stop=4, image_size=SIZE, process_index=0,
              process_count=1)
  return list(stream.train_batches(source, **{**args, **kwargs}))


def _assert_same(a, b):
  assert [s for s, _ in a] == [s for s, _ in b]
  for (_, x), (_, y) in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


def test_prepared_by_tfds_imagenet_builder(imagenet, train_source):
  _, ds = imagenet
  assert ds.num_classes == 1000 and len(train_source) == NUM_TRAIN
  assert sorted(_k(train_source[i]) for i in range(NUM_TRAIN)) == list(range(NUM_TRAIN))
  labels = [train_source[i]['label'] for i in range(NUM_TRAIN)]
  assert labels == [_k(train_source[i]) // PER_CLASS for i in range(NUM_TRAIN)]


def test_batches_are_train_order_shapes_and_dtypes(train_source):
  out = _collect(train_source, start=0, stop=7)  # 3 steps an epoch: into the third epoch
  assert [s for s, _ in out] == list(range(7))
  k_of = np.array([_k(train_source[i]) for i in range(NUM_TRAIN)])
  for step, batch in out:
    assert batch['image'].shape == (BATCH, SIZE, SIZE, 3) and batch['image'].dtype == np.uint8
    assert batch['label'].shape == (BATCH,) and batch['label'].dtype == np.int32
    epoch, i = divmod(step, NUM_TRAIN // BATCH)
    idx = np.sort(data_lib.epoch_order(0, epoch, NUM_TRAIN)[i * BATCH:(i + 1) * BATCH])
    # Blue is constant per image, so it names the record whatever the crop and flip.
    blue = batch['image'][..., 2].astype(float).mean((1, 2))
    np.testing.assert_array_equal(np.round((blue - 8) / 10), k_of[idx])
    np.testing.assert_array_equal(batch['label'], k_of[idx] // PER_CLASS)


def test_restart_at_step_gives_the_same_batches(train_source):
  full = _collect(train_source, start=0, stop=7)
  _assert_same(_collect(train_source, start=4, stop=7), full[4:])
  other = _collect(train_source, seed=1, start=0, stop=1)
  assert not np.array_equal(other[0][1]['image'], full[0][1]['image'])


def test_hosts_partition_the_global_batch(train_source):
  one = _collect(train_source, start=2, stop=5)
  for count in (2, 4):
    hosts = [_collect(train_source, start=2, stop=5, process_index=p, process_count=count)
             for p in range(count)]
    for h in hosts:
      assert h[0][1]['image'].shape == (BATCH // count, SIZE, SIZE, 3)
    joined = [(step, {k: np.concatenate([h[t][1][k] for h in hosts]) for k in batch})
              for t, (step, batch) in enumerate(hosts[0])]
    _assert_same(joined, one)


def test_worker_processes_give_the_same_batches(train_source):
  _assert_same(_collect(train_source, stop=5, workers=2), _collect(train_source, stop=5))


def test_records_are_read_and_decoded_off_the_main_thread():
  main_pid = os.getpid()

  class Where(list):
    """A list of records that notes which process and thread reads it."""
    readers = []

    def __getitems__(self, keys):
      if os.getpid() == main_pid:
        Where.readers.append(threading.current_thread() is threading.main_thread())
      else:
        Where.readers.append('worker')
      return [self[k] for k in keys]

  source = Where(stream.synthetic_source(8, 40, 30))
  inline = _collect(source, batch_size=4, stop=3, workers=0)
  assert Where.readers == [False] * 3  # a background thread of this process
  Where.readers.clear()
  _assert_same(_collect(source, batch_size=4, stop=3, workers=2), inline)
  assert not Where.readers  # every read happened in a worker process


def test_random_resized_crops_and_flips(train_source):
  flipped = _collect(train_source, stop=6)
  plain = _collect(train_source, stop=6, flip=False)
  k_of = {_k(train_source[i]): i for i in range(NUM_TRAIN)}
  flips, far_from_centre = [], []
  for (_, f), (_, p) in zip(flipped, plain):
    for x, y in zip(f['image'], p['image']):
      # Red rises left to right unless mirrored.
      red = y[..., 0].astype(float)
      assert red[:, :SIZE // 2].mean() < red[:, SIZE // 2:].mean()
      # The flip is drawn after the crop: the same crop, mirrored or not.
      mirrored = np.array_equal(x, y[:, ::-1])
      assert mirrored or np.array_equal(x, y)
      flips.append(mirrored)
      k = int(np.round((y[..., 2].mean() - 8) / 10))
      centre = stream.center_crop(train_source[k_of[k]]['image'], SIZE)
      far_from_centre.append(np.abs(y.astype(float) - centre).mean() > 4)
  assert 0.3 < np.mean(flips) < 0.7, np.mean(flips)
  assert np.mean(far_from_centre) > 0.75, np.mean(far_from_centre)


def test_inception_box_ranges_and_fallback():
  rng = np.random.default_rng(0)
  areas, aspects = [], []
  for _ in range(2000):
    left, top, right, bottom = stream.inception_box(500, 375, rng)
    assert 0 <= left < right <= 500 and 0 <= top < bottom <= 375
    w, h = right - left, bottom - top
    areas.append(w * h / (500 * 375))
    aspects.append(w / h)
  assert 0.08 - 1e-9 <= min(areas) and max(areas) <= 1 + 1e-9
  assert min(areas) < 0.15 and max(areas) > 0.9  # the whole range is used
  assert 3 / 4 - 1e-9 <= min(aspects) and max(aspects) <= 4 / 3 + 1e-9
  # No box of >= 90% of the area with aspect <= 4/3 fits a 1000x10 strip: centre crop.
  box = stream.inception_box(1000, 10, rng, area_range=(0.9, 1.0))
  assert box == stream.center_box(1000, 10, stream.EVAL_CROP) == (495.625, 0.625, 504.375, 9.375)


def test_reduced_scale_jpeg_decoding_matches_full_decoding():
  y, x = np.mgrid[0:480, 0:640]
  img = np.stack([x * 255 // 639, y * 255 // 479, (x + y) * 255 // 1118], -1).astype(np.uint8)
  encoded = _jpeg(img)
  for area in (1.0, 0.5, 0.1):  # JPEG decoded at 1/8, 1/4 (or 1/2), 1 of its size
    got = stream.random_resized_crop(encoded, 32, np.random.default_rng(3), flip=False,
                                     area_range=(area, area))
    box = stream.inception_box(640, 480, np.random.default_rng(3), area_range=(area, area))
    full = Image.open(io.BytesIO(encoded)).convert('RGB')
    want = np.asarray(full.resize((32, 32), Image.Resampling.BICUBIC, box=box))
    assert np.abs(got.astype(float) - want).mean() < 2.0


def test_eval_batches_are_centre_crops_padded_and_partitioned(imagenet):
  data_dir, ds = imagenet
  source = stream.open_source('imagenet2012', 'validation', data_dir)
  # fraction=1 is the LazyImages decoding: exactly tfds_data.decode_center_crop.
  out = list(stream.eval_batches(source, batch_size=4, image_size=SIZE, fraction=1.0,
                                 process_index=0, process_count=1))
  assert len(out) == 2
  images = np.concatenate([b['image'] for b in out])
  labels = np.concatenate([b['label'] for b in out])
  mask = np.concatenate([b['mask'] for b in out])
  np.testing.assert_array_equal(mask, [1, 1, 1, 1, 1, 1, 0, 0])
  assert not images[NUM_VAL:].any() and not labels[NUM_VAL:].any()
  for i in range(NUM_VAL):
    np.testing.assert_array_equal(images[i],
                                  tfds_data.decode_center_crop(source[i]['image'], SIZE))
  np.testing.assert_array_equal(images[:NUM_VAL], ds.test_images[np.arange(NUM_VAL)])
  np.testing.assert_array_equal(labels[:NUM_VAL], ds.test_labels[np.arange(NUM_VAL)])

  hosts = [list(stream.eval_batches(source, batch_size=4, image_size=SIZE, fraction=1.0,
                                    process_index=p, process_count=2)) for p in range(2)]
  for b, batch in enumerate(out):
    for key in batch:
      np.testing.assert_array_equal(np.concatenate([h[b][key] for h in hosts]), batch[key])



def _rings(w: int, h: int) -> np.ndarray:
  """Concentric rings: any shift or rescaling of a crop changes many pixels."""
  y, x = np.mgrid[0:h, 0:w]
  v = 128 + 100 * np.sin(np.hypot(x - w / 2, y - h / 2) / 4)
  return np.stack([v, 255 - v, np.full_like(v, 90)], -1).astype(np.uint8)


def test_eval_default_is_resize_to_size_over_0875_then_centre_crop():
  # Sizes where the shorter side -> 32 and the centre 28x28 fall on whole pixels; the last is
  # decoded at half scale (JPEG draft).
  source = [{'image': _jpeg(_rings(w, h)), 'label': i}
            for i, (w, h) in enumerate(((72, 48), (48, 96), (96, 64)))]
  for fraction, lo, hi in ((stream.EVAL_CROP, 0.0, 2.0), (1.0, 15.0, 255.0)):
    (batch,) = stream.eval_batches(source, batch_size=3, image_size=28, fraction=fraction,
                                   process_index=0, process_count=1)
    for i, record in enumerate(source):
      img = Image.open(io.BytesIO(record['image'])).convert('RGB')
      w, h = img.size
      img = img.resize((w * 32 // min(w, h), h * 32 // min(w, h)), Image.Resampling.BICUBIC)
      left, top = (img.size[0] - 28) // 2, (img.size[1] - 28) // 2
      want = np.asarray(img.crop((left, top, left + 28, top + 28)))
      assert lo <= np.abs(batch['image'][i].astype(float) - want).mean() <= hi


def test_errors_say_what_is_wrong(tmp_path, train_source):
  with pytest.raises(ValueError, match='multiple of the 4 processes'):
    stream.local_rows(6, 0, 4)
  with pytest.raises(ValueError, match=r'process_index must be in \[0, 2\)'):
    stream.local_rows(8, 2, 2)
  with pytest.raises(ValueError, match='larger than the 24 records'):
    stream.train_batches(train_source, seed=0, batch_size=32, start=0, stop=1, image_size=8,
                         process_index=0, process_count=1)
  with pytest.raises(ValueError, match='workers must be >= 0'):
    stream.train_batches(train_source, seed=0, batch_size=8, start=0, stop=1, image_size=8,
                         process_index=0, process_count=1, workers=-1)
  with pytest.raises(ValueError, match='start <= stop'):
    stream.train_batches(train_source, seed=0, batch_size=8, start=3, stop=1, image_size=8,
                         process_index=0, process_count=1)
  with pytest.raises(ValueError, match='not prepared') as e:
    stream.open_source('imagenet2012', 'train', str(tmp_path / 'empty'))
  assert 'jaxbud.data.load' in str(e.value)


def test_bench_entry_runs(capsys):
  stream.main(['--bench', '--workers', '0', '--images', '8', '--width', '64', '--height', '48',
               '--batch', '4', '--size', '16', '--epochs', '1'])
  out = capsys.readouterr().out
  assert 'serial' in out and 'train_batches  workers 0' in out and 'images/s' in out


def test_imagenet_config_trains_on_the_stream_and_resumes(imagenet, tmp_path):
  """The config's training loop reads the stream (cropped, flipped on the host) and resumes."""
  from configs import resnet50_imagenet  # pylint: disable=g-import-not-at-top
  c = resnet50_imagenet.get_config()
  c.model.update(depth=18, bottleneck_scale=0.125)  # the ImageNet recipe, a fast-compiling net
  c.data.update(data_dir=imagenet[0], image_size=SIZE, stream_workers=0)
  c.train.update(epochs=1, batch_size=BATCH, eval_batch_size=NUM_VAL, log_every_steps=1)
  workdir = str(tmp_path / 'run')
  first = train.train_and_evaluate(c, workdir)
  assert first['step'] == NUM_TRAIN // BATCH
  c.train.epochs = 2
  resumed = train.train_and_evaluate(c, workdir)
  straight = train.train_and_evaluate(c, str(tmp_path / 'straight'))
  assert resumed['step'] == 2 * NUM_TRAIN // BATCH
  assert (resumed['test_loss'], resumed['test_error']) == (
      straight['test_loss'], straight['test_error'])
  # Evaluation reads the validation split through the stream too (centre crops, masked padding).
  batches = list(input_pipeline.eval_batches(c, None))
  assert [b['image'].shape for b in batches] == [(NUM_VAL, SIZE, SIZE, 3)]
  assert batches[0]['mask'].tolist() == [1.0] * NUM_VAL


def test_imagenet_prune_run_streams(imagenet, tmp_path, monkeypatch):
  """A prune run of the ImageNet recipe reads its batches through the stream, on its own seed."""
  from configs import resnet50_imagenet  # pylint: disable=g-import-not-at-top
  from configs import sections  # pylint: disable=g-import-not-at-top
  c = resnet50_imagenet.get_config()
  c.model.update(depth=18, bottleneck_scale=0.125)
  c.data.update(data_dir=imagenet[0], image_size=SIZE, stream_workers=0)
  c.train.update(epochs=1, batch_size=BATCH, eval_batch_size=NUM_VAL, log_every_steps=1)
  train.train_and_evaluate(c, str(tmp_path / 'base'))
  c.prune = sections.prune_section(base_workdir=str(tmp_path / 'base'), prune_every=2, rounds=2,
                                   batch_size=BATCH, eval_every_rounds=1, compact_every=8)
  calls = []
  real = stream.train_batches

  def spy(source, **kw):
    calls.append(kw)
    return real(source, **kw)

  monkeypatch.setattr(stream, 'train_batches', spy)
  summary = prune_tune.prune_and_tune(c, str(tmp_path / 'prune'))
  assert summary['removed'] == 2
  assert [(k['start'], k['stop'], k['seed']) for k in calls] == [
      (0, 6, prune_tune.data_seed(c.seed))]
  history = json.load(open(tmp_path / 'prune' / 'history.json'))
  assert [e['removed'] for e in history['evaluations']] == [0, 1, 2]
