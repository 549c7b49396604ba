"""Training from a config: pure jitted steps, epoch-ordered data, checkpoints, metrics.

`train_step(state, batch) -> (state, metrics)` and `eval_step(state, batch) -> sums` are pure
functions built once per model by `make_train_step` / `make_eval_step` and jitted with the
state donated. Randomness is `fold_in(key(seed), step)`; the data order of epoch e is a
permutation seeded by (seed, e). Both are functions of the step alone, so a run restored from a
checkpoint continues exactly where it stopped.
"""
import dataclasses
import functools
import json
import os
import time

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxbud import augment
from jaxbud import checkpoint as ckpt_lib
from jaxbud import data as data_lib
from jaxbud import metrics as metrics_lib
from jaxbud import models
from jaxbud import parallel
from jaxbud import preempt
from jaxbud import spec as spec_lib

SCHEDULES = ('multistep', 'cosine', 'constant')
DTYPES = ('float32', 'bfloat16')


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: dict
  batch_stats: dict
  opt_state: optax.OptState


def build_spec(model_cfg, in_channels: int) -> spec_lib.Spec:
  """The width spec a config's `model` section asks for (a spec file wins over the family)."""
  if model_cfg.get('spec_file'):
    spec = spec_lib.load(model_cfg.spec_file)
    if spec.in_channels != in_channels:
      raise ValueError(f'spec file {model_cfg.spec_file} expects {spec.in_channels} input '
                       f'channels but the dataset has {in_channels}')
    return spec
  family = model_cfg.family
  if family == 'wrn':
    spec = spec_lib.wrn(model_cfg.depth, model_cfg.widen, in_channels)
  elif family == 'densenet_bc':
    spec = spec_lib.densenet_bc(model_cfg.depth, model_cfg.growth, in_channels)
  elif family == 'resnet':
    spec = spec_lib.resnet(model_cfg.depth, in_channels)
  else:
    raise ValueError(f'unknown model.family {family!r}; expected one of '
                     f'{sorted(spec_lib.FAMILIES)}')
  scale = model_cfg.get('bottleneck_scale', 1.0)
  if scale != 1.0:
    if not scale > 0:
      raise ValueError(f'model.bottleneck_scale must be > 0, got {scale}')
    spec = spec.with_prunable(max(1, int(w * scale)) for w in spec.prunable)
  return spec


def make_optimizer(tcfg, steps_per_epoch: int) -> optax.GradientTransformation:
  """SGD with momentum (no Nesterov) and coupled L2 weight decay on all parameters."""
  if tcfg.schedule == 'multistep':
    lr = optax.piecewise_constant_schedule(
        tcfg.lr, {int(m * steps_per_epoch): tcfg.lr_decay for m in tcfg.milestones})
  elif tcfg.schedule == 'cosine':
    lr = optax.cosine_decay_schedule(tcfg.lr, max(1, tcfg.epochs * steps_per_epoch))
  elif tcfg.schedule == 'constant':
    lr = tcfg.lr
  else:
    raise ValueError(f'unknown train.schedule {tcfg.schedule!r}; expected one of {SCHEDULES}')
  # add_decayed_weights before sgd: grad + wd * w enters the momentum, as in torch.optim.SGD.
  return optax.chain(optax.add_decayed_weights(tcfg.weight_decay),
                     optax.sgd(lr, momentum=tcfg.momentum or None))


def create_state(model, tx, key, image_shape) -> TrainState:
  variables = models.init(model, key, image_shape)
  params, batch_stats = variables['params'], variables.get('batch_stats', {})
  return TrainState(jnp.zeros((), jnp.int32), params, batch_stats, tx.init(params))


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def make_preprocess(ds: data_lib.Dataset, *, seed: int, crop_pad: int, flip: bool, dtype):
  """(step, uint8 images) -> augmented, normalised inputs; the key is fold_in(seed, step)."""
  base_key = jax.random.key(seed)

  def preprocess(step, images):
    x = augment.random_crop_flip(jax.random.fold_in(base_key, step), images, crop_pad, flip)
    return augment.normalize(x, ds.mean, ds.std, dtype)

  return preprocess


def make_update(model, tx):
  """(state, x, labels, gates) -> (state, metrics, gate grads): one SGD step in train mode.

  With `gates` (a dict of (N, C) arrays, see jaxbud.models) the gradient with respect to them
  comes out of the same backward pass; it is the per-example g_nc that Fisher pruning needs.
  """

  def update(state: TrainState, x, labels, gates=None):

    def loss_fn(params, gates):
      logits, updates = model.apply({'params': params, 'batch_stats': state.batch_stats}, x,
                                    train=True, gates=gates, mutable=['batch_stats'])
      return cross_entropy(logits, labels).mean(), (logits, updates['batch_stats'])

    (loss, (logits, batch_stats)), (grads, gate_grads) = jax.value_and_grad(
        loss_fn, argnums=(0, 1), has_aux=True)(state.params, gates)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    acc = jnp.mean(jnp.argmax(logits, -1) == labels)
    return (TrainState(state.step + 1, params, batch_stats, opt_state),
            {'train_loss': loss, 'train_accuracy': acc}, gate_grads)

  return update


def make_train_step(model, tx, ds: data_lib.Dataset, *, seed: int, crop_pad: int, flip: bool):
  """The pure step: augment + normalise on device, forward/backward in train mode, SGD update."""
  preprocess = make_preprocess(ds, seed=seed, crop_pad=crop_pad, flip=flip, dtype=model.dtype)
  update = make_update(model, tx)

  def train_step(state: TrainState, batch):
    state, metrics, _ = update(state, preprocess(state.step, batch['image']), batch['label'])
    return state, metrics

  return train_step


def make_eval_step(model, ds: data_lib.Dataset):
  """Sums of loss and correct predictions over the rows of a batch where mask is 1."""

  def eval_step(state: TrainState, batch):
    x = augment.normalize(batch['image'], ds.mean, ds.std, model.dtype)
    logits = model.apply({'params': state.params, 'batch_stats': state.batch_stats}, x)
    mask = batch['mask']
    return {'loss': jnp.sum(cross_entropy(logits, batch['label']) * mask),
            'correct': jnp.sum((jnp.argmax(logits, -1) == batch['label']) * mask),
            'count': jnp.sum(mask)}

  return eval_step


def test_batches(images, labels, batch_size: int):
  """This process's rows of the test split's global batches, the last one padded (mask 0)."""
  n = len(labels)
  for start in range(0, n, batch_size):
    rows = _local_rows({'i': np.arange(start, start + batch_size)})['i']  # read only these
    idx = rows[rows < n]
    pad = len(rows) - len(idx)
    batch = {'image': images[idx], 'label': labels[idx], 'mask': np.ones(len(idx), np.float32)}
    if pad:
      batch = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)])
               for k, v in batch.items()}
    yield batch


def evaluate(eval_step, state, images, labels, batch_size: int, mesh, host_batches=None) -> dict:
  """Test loss and error over the whole split (last batch padded and masked).

  `host_batches` (this process's rows of each global batch, with 'mask') replaces the arrays,
  e.g. the streamed ImageNet validation split (`eval_batches`).
  """
  sums = None
  for batch in host_batches or test_batches(images, labels, batch_size):
    out = eval_step(state, parallel.put_batch(mesh, batch))
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  sums = jax.device_get(sums)
  return {'test_loss': float(sums['loss'] / sums['count']),
          'test_error': float(1.0 - sums['correct'] / sums['count'])}


def _local_rows(batch: dict) -> dict:
  """This process's contiguous share of a global host batch."""
  n, p = jax.process_count(), jax.process_index()
  return {k: v[len(v) * p // n:len(v) * (p + 1) // n] for k, v in batch.items()}


epoch_order = data_lib.epoch_order


def batches(ds: data_lib.Dataset, seed: int, batch_size: int, start: int, stop: int, mesh):
  """Yields (step, global batch) for steps start..stop-1; epoch e is a (seed, e) permutation."""
  spe = len(ds.train_labels) // batch_size
  for step in range(start, stop):
    epoch, i = divmod(step, spe)
    if i == 0 or step == start:
      order = epoch_order(seed, epoch, len(ds.train_labels))
    idx = np.sort(order[i * batch_size:(i + 1) * batch_size])
    idx = _local_rows({'i': idx})['i']  # each process reads (decodes) only its own rows
    batch = {'image': ds.train_images[idx], 'label': ds.train_labels[idx]}
    yield step, parallel.put_batch(mesh, batch)


def _streamed(config) -> bool:
  """Whether the dataset is read through jaxbud.data.stream (ImageNet) rather than arrays."""
  return config.data.name == 'imagenet2012'


def train_batches(config, ds: data_lib.Dataset, start: int, stop: int, mesh):
  """`batches`, or for ImageNet the same steps streamed, cropped and flipped by workers."""
  dcfg, tcfg = config.data, config.train
  if not _streamed(config):
    yield from batches(ds, config.seed, tcfg.batch_size, start, stop, mesh)
    return
  from jaxbud.data import stream  # pylint: disable=g-import-not-at-top
  source = stream.open_source(dcfg.name, 'train', dcfg.data_dir or None)
  for step, batch in stream.train_batches(
      source, seed=config.seed, batch_size=tcfg.batch_size, start=start, stop=stop,
      image_size=dcfg.image_size, flip=dcfg.flip, workers=dcfg.get('stream_workers', 0)):
    yield step, parallel.put_batch(mesh, batch)


def eval_batches(config, ds: data_lib.Dataset):
  """Host test batches for `evaluate`: None (the in-memory arrays), or for ImageNet the
  validation split streamed as centre crops, decoded by the stream's workers."""
  dcfg = config.data
  if not _streamed(config):
    return None
  from jaxbud.data import stream  # pylint: disable=g-import-not-at-top
  source = stream.open_source(dcfg.name, 'validation', dcfg.data_dir or None)
  return stream.eval_batches(source, batch_size=config.train.eval_batch_size,
                             image_size=dcfg.image_size, workers=dcfg.get('stream_workers', 0))


@dataclasses.dataclass
class Run:
  """Everything a training run is built from; validated before anything is written."""
  config: ml_collections.ConfigDict
  dataset: data_lib.Dataset
  spec: spec_lib.Spec
  model: object
  tx: optax.GradientTransformation
  steps_per_epoch: int

  @property
  def total_steps(self) -> int:
    return self.config.train.epochs * self.steps_per_epoch


def setup(config, dataset: data_lib.Dataset | None = None) -> Run:
  """Validates `config`, loads the data and builds spec, model and optimizer (writes nothing)."""
  tcfg = config.train
  if tcfg.epochs < 0:
    raise ValueError(f'train.epochs must be >= 0, got {tcfg.epochs}')
  if tcfg.batch_size < 1:
    raise ValueError(f'train.batch_size must be >= 1, got {tcfg.batch_size}')
  parallel.check_batch(tcfg.batch_size, 'train.batch_size')
  parallel.check_batch(tcfg.eval_batch_size, 'train.eval_batch_size')
  if config.model.dtype not in DTYPES:
    raise ValueError(f'unknown model.dtype {config.model.dtype!r}; expected one of {DTYPES}')
  if dataset is None:
    dcfg = config.data
    dataset = data_lib.load(dcfg.name, data_dir=dcfg.data_dir or None,
                            manual_dir=dcfg.manual_dir or None, image_size=dcfg.image_size,
                            synthetic_options=dcfg.get('synthetic'))
  spec = build_spec(config.model, dataset.image_shape[-1])
  steps_per_epoch = len(dataset.train_labels) // tcfg.batch_size
  if steps_per_epoch < 1:
    raise ValueError(f'train.batch_size={tcfg.batch_size} is larger than the '
                     f'{len(dataset.train_labels)} training images of {dataset.name}')
  model = models.build(spec, dataset.num_classes, config.model.dtype)
  return Run(config, dataset, spec, model, make_optimizer(tcfg, steps_per_epoch),
             steps_per_epoch)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, run: Run | None = None):
  """Trains (or resumes) the run in `workdir`; returns the final metrics dict."""
  run = run or setup(config)
  ds, tcfg = run.dataset, config.train
  metrics_lib.make_workdir(workdir)

  mesh = parallel.make_mesh()
  repl = parallel.replicated(mesh)
  init = jax.jit(functools.partial(create_state, run.model, run.tx,
                                   image_shape=ds.image_shape), out_shardings=repl)
  # 'rbg' keys: the same initialisers, compiled about twice as fast as threefry on CPU, which
  # matters when a study trains dozens of small networks.
  state = init(jax.random.key(config.seed, impl='rbg'))
  ckpts = ckpt_lib.Checkpoints(os.path.join(workdir, 'checkpoints'), tcfg.keep_checkpoints)
  start, pending = 0, []
  restored = ckpts.restore_newest(functools.partial(_restore, ckpts, run.spec, state, workdir))
  if restored is not None:
    start, (state, meta) = restored
    pending = preempt.unpack_pending(meta.get('pending'))
    metrics_lib.log(f'resumed from step {start} in {workdir}')
  if jax.process_index() == 0:  # after the checks above: a refused run changes nothing
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json(indent=2))
    spec_lib.save(run.spec, os.path.join(workdir, 'spec.json'))
  writer = metrics_lib.Writer(workdir, resume_step=start)  # drops lines a killed run wrote

  # Streamed ImageNet batches come cropped and flipped from the host.
  flip = config.data.flip and not _streamed(config)
  train_step = parallel.jit(make_train_step(run.model, run.tx, ds, seed=config.seed,
                                            crop_pad=config.data.crop_pad, flip=flip),
                            donate_argnums=0)
  eval_step = parallel.jit(make_eval_step(run.model, ds))
  spe, total = run.steps_per_epoch, run.total_steps
  progress = metrics_lib.Progress(total, start)
  metrics_lib.log(f'{run.spec.family} spec {run.spec.to_json()}: '
                  f'{spec_lib.count_params(run.spec, ds.num_classes):,} params, '
                  f'{spe} steps/epoch, {total} steps')
  last = {}
  t_start = time.perf_counter()

  def check(done, pending, state):  # the NaN/Inf guard, before metrics or state are written
    preempt.check_finite([m['train_loss'] for m in pending], done - len(pending) + 1,
                         state.params, f'training in {workdir}',
                         ckpts.describe_latest)

  with preempt.Preemption() as preemption:
    for step, batch in train_batches(config, ds, start, total, mesh):
      state, m = train_step(state, batch)
      pending.append(m)
      done, saved = step + 1, False
      if done % tcfg.log_every_steps == 0 or done % spe == 0 or done == total:
        pending = jax.device_get(pending)
        check(done, pending, state)
        means = jax.tree.map(lambda *xs: float(np.mean(xs)), *pending)
        pending = []
        means['steps_per_s'] = progress.rate(done)
        metrics_lib.log(f'{progress.tick(done)}  epoch {done / spe:.2f}  '
                        f'loss {means["train_loss"]:.4f}  acc {means["train_accuracy"]:.4f}')
        writer.write(done, means)
      if done % spe == 0 or done == total:
        ep = done // spe
        if ep % tcfg.eval_every_epochs == 0 or done == total:
          last = evaluate(eval_step, state, ds.test_images, ds.test_labels,
                          tcfg.eval_batch_size, mesh, eval_batches(config, ds))
          metrics_lib.log(f'epoch {ep}: test error {last["test_error"]:.4f}, '
                          f'test loss {last["test_loss"]:.4f}')
          writer.write(done, {**last, 'epoch': ep})
        if ep % tcfg.checkpoint_every_epochs == 0 or done == total:
          ckpts.save(done, state, run.spec, {'epoch': ep})
          saved = True
      if done < total and preemption.requested(done):
        if not saved:
          pending = jax.device_get(pending)
          check(done, pending, state)
          ckpts.save(done, state, run.spec, {'epoch': done / spe,
                                             'pending': preempt.pack_pending(pending)})
        preempt.stop(f'step {done} of {total}', ckpts, writer)
  if not last:  # nothing left to train: report the restored state
    last = evaluate(eval_step, state, ds.test_images, ds.test_labels, tcfg.eval_batch_size, mesh,
                    eval_batches(config, ds))
  ckpts.wait()
  ckpts.close()
  writer.close()
  final = {**last, 'step': total, 'params': spec_lib.count_params(run.spec, ds.num_classes),
           'macs': spec_lib.count_macs(run.spec, ds.image_shape[0], ds.num_classes),
           'train_seconds': time.perf_counter() - t_start}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'final.json'), 'w') as f:
      json.dump(final, f, indent=2)
  return final


def _restore(ckpts, spec, template, workdir, step):
  """(state, meta) of checkpoint `step`, which must hold `spec`."""
  saved = ckpts.restore_spec(step)
  if saved != spec:
    raise ckpt_lib.MismatchError(
        f'checkpoint step {step} in {workdir} holds spec {saved.to_json()} but the config gives '
        f'{spec.to_json()}; use another --workdir (or the config that made the checkpoint)')
  return ckpts.restore(ckpt_lib.abstract(template), step)

