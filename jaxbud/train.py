"""Training from a config: pure jitted steps around the shared loop (jaxbud.loop).

`train_step(state, batch) -> (state, metrics)` and `eval_step(state, batch) -> sums` are pure
functions built once per model by `make_train_step` / `make_eval_step` and jitted with the
state donated. Randomness is `fold_in(key(seed), step)`; the data order of epoch e is a
permutation seeded by (seed, e) (jaxbud.input_pipeline). Both are functions of the step alone,
so a run restored from a checkpoint continues exactly where it stopped.
"""
import dataclasses
import functools
import json
import os

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxbud import augment
from jaxbud import checkpoint as ckpt_lib
from jaxbud import data as data_lib
from jaxbud import inference
from jaxbud import input_pipeline
from jaxbud import loop as loop_lib
from jaxbud import metrics as metrics_lib
from jaxbud import models
from jaxbud import parallel
from jaxbud import spec as spec_lib
from jaxbud import stats
from jaxbud.errors import UsageError

SCHEDULES = ('multistep', 'cosine', 'constant')
DTYPES = ('float32', 'bfloat16')


class TrainState(flax.struct.PyTreeNode):
  """A training run's state. `rng` is the key data of its data stream (augmentation): the key
  of step s is fold_in(rng, s). Carried as data, not compiled in, so runs that differ only in
  their seed run the same program (and share the compilation cache)."""
  step: jax.Array
  params: dict
  batch_stats: dict
  opt_state: optax.OptState
  rng: jax.Array


def build_spec(model_cfg, in_channels: int, image_shape=None,
               num_classes: int | None = None) -> spec_lib.Spec:
  """The width spec a config's `model` section asks for (a spec file wins over the family).

  A section with `module` (any linen classifier, jaxbud.graph.arch) needs the dataset's
  `image_shape` and `num_classes`, against which the module is checked."""
  if model_cfg.get('module'):
    if image_shape is None:  # a study: reduced networks are made by scaling a family's widths
      raise UsageError(f'model.module={model_cfg.module!r}: a study compares networks of '
                       f'jaxbud\'s own families ({", ".join(spec_lib.BUILTIN_FAMILIES)}); '
                       'prune a model.module network with launch.prune')
    return spec_lib.get_family('module').from_config(model_cfg, image_shape, num_classes)
  if model_cfg.get('spec_file'):
    spec = spec_lib.load(model_cfg.spec_file)
    if spec.in_channels != in_channels:
      raise UsageError(f'spec file {model_cfg.spec_file} expects {spec.in_channels} input '
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
    raise UsageError(f'unknown model.family {family!r}; expected one of '
                     f'{sorted(spec_lib.FAMILIES)}')
  scale = model_cfg.get('bottleneck_scale', 1.0)
  if scale != 1.0:
    if not scale > 0:
      raise UsageError(f'model.bottleneck_scale must be > 0, got {scale}')
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
    raise UsageError(f'unknown train.schedule {tcfg.schedule!r}; expected one of {SCHEDULES}')
  # add_decayed_weights before sgd: grad + wd * w enters the momentum, as in torch.optim.SGD.
  return optax.chain(optax.add_decayed_weights(tcfg.weight_decay),
                     optax.sgd(lr, momentum=tcfg.momentum or None))


def data_rng(seed):
  """Key data (uint32 (2,)) of the data stream seeded by `seed` (an int, or traced)."""
  return jax.random.key_data(jax.random.key(jnp.asarray(seed, jnp.uint32)))


def create_state(model, tx, key, image_shape, data_seed=0) -> TrainState:
  """Fresh state: parameters initialised from `key`, the data stream seeded by `data_seed`."""
  variables = models.variables(model, key, image_shape)
  params, batch_stats = variables['params'], variables.get('batch_stats', {})
  return TrainState(jnp.zeros((), jnp.int32), params, batch_stats, tx.init(params),
                    data_rng(data_seed))


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def make_preprocess(ds: data_lib.Dataset, *, crop_pad: int, flip: bool, dtype,
                    pad_mode: str = 'reflect'):
  """(rng, step, uint8 images) -> augmented, normalised inputs; the key is fold_in(rng, step).
  `pad_mode`: the random crop's padding, 'reflect' or 'zeros' (`augment.random_crop_flip`)."""

  def preprocess(rng, step, images):
    key = jax.random.fold_in(jax.random.wrap_key_data(rng), step)
    x = augment.random_crop_flip(key, images, crop_pad, flip, pad_mode)
    return augment.normalize(x, ds.mean, ds.std, dtype)

  return preprocess


def make_update(model, tx, record_activations: bool = False, bn_l1: float = 0.0):
  """(state, x, labels, gates) -> (state, metrics, gate grads): one SGD step in train mode.

  With `gates` (a dict of (N, C) arrays, see jaxbud.models) the gradient with respect to them
  comes out of the same backward pass; it is the per-example g_nc that Fisher pruning needs.
  With `record_activations`, the third value is (gate grads, {gate name: (C,) mean activation
  where the gate sits}) (jaxbud.models' `intermediates`). With `bn_l1` > 0 the loss minimised
  adds bn_l1 * sum |gamma| over the BN scales of the prunable channels (network slimming);
  `train_loss` stays the cross-entropy and `bn_l1_penalty` reports the added term.
  """
  mutable = ['batch_stats'] + (['intermediates'] if record_activations else [])

  def update(state: TrainState, x, labels, gates=None):

    def loss_fn(params, gates):
      logits, updates = model.apply({'params': params, 'batch_stats': state.batch_stats}, x,
                                    train=True, gates=gates, mutable=mutable)
      loss = cross_entropy(logits, labels).mean()
      penalty = bn_l1 * models.bn_l1(model.spec, params) if bn_l1 else 0.0
      return loss + penalty, (loss, penalty, logits, updates)

    (_, (loss, penalty, logits, updates)), (grads, gate_grads) = jax.value_and_grad(
        loss_fn, argnums=(0, 1), has_aux=True)(state.params, gates)
    tx_updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, tx_updates)
    metrics = {'train_loss': loss, 'train_accuracy': jnp.mean(jnp.argmax(logits, -1) == labels)}
    if bn_l1:
      metrics['bn_l1_penalty'] = penalty
    if record_activations:
      gate_grads = (gate_grads, models.gate_activations(updates['intermediates']))
    return (state.replace(step=state.step + 1, params=params,
                          batch_stats=updates['batch_stats'], opt_state=opt_state),
            metrics, gate_grads)

  return update


def make_train_step(model, tx, ds: data_lib.Dataset, *, crop_pad: int, flip: bool,
                    pad_mode: str = 'reflect', bn_l1: float = 0.0):
  """The pure step: augment + normalise on device, forward/backward in train mode, SGD update
  (with network slimming's penalty when `bn_l1` > 0, see make_update). Random crops pad by
  reflection by default, as the reference's training script does."""
  preprocess = make_preprocess(ds, crop_pad=crop_pad, flip=flip, dtype=model.dtype,
                               pad_mode=pad_mode)
  update = make_update(model, tx, bn_l1=bn_l1)

  def train_step(state: TrainState, batch):
    x = preprocess(state.rng, state.step, batch['image'])
    state, metrics, _ = update(state, x, batch['label'])
    return state, metrics

  return train_step


def make_eval_step(model, ds: data_lib.Dataset):
  """Sums of loss and correct predictions over the rows of a batch where mask is 1, and every
  row's predicted class ('pred', 'label', 'valid': mask > 0) for per-example statistics.
  `gates` ({name: (C,)}, optional) multiply the prunable channels, e.g. a prune run's masks."""

  def eval_step(state: TrainState, batch, gates=None):
    x = augment.normalize(batch['image'], ds.mean, ds.std, model.dtype)
    logits = model.apply({'params': state.params, 'batch_stats': state.batch_stats}, x,
                         gates=gates)
    mask = batch['mask']
    pred = jnp.argmax(logits, -1).astype(jnp.int32)
    return {'loss': jnp.sum(cross_entropy(logits, batch['label']) * mask),
            'correct': jnp.sum((pred == batch['label']) * mask),
            'count': jnp.sum(mask),
            'pred': pred, 'label': batch['label'], 'valid': mask > 0}

  return eval_step


def evaluate(eval_step, state, batches, mesh) -> tuple[dict, dict]:
  """Test loss and error over a split, and its per-example predictions.

  `batches`: this process's rows of each global test batch with 'mask' (see
  `input_pipeline.eval_batches`). Returns (metrics, {'predictions', 'labels'}): the predicted
  class of every test image and its label, in split order.
  """
  sums, preds, labels = None, [], []
  for batch in batches:
    out = dict(eval_step(state, parallel.put_batch(mesh, batch)))
    valid = _host(out.pop('valid'))
    preds.append(_host(out.pop('pred'))[valid])
    labels.append(_host(out.pop('label'))[valid])
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  sums = jax.device_get(sums)
  metrics = {'test_loss': float(sums['loss'] / sums['count']),
             'test_error': float(1.0 - sums['correct'] / sums['count'])}
  return metrics, {'predictions': np.concatenate(preds).astype(np.int32),
                   'labels': np.concatenate(labels).astype(np.int32)}


def _host(x) -> np.ndarray:
  """A replicated global array as numpy (each process holds all of it)."""
  return np.asarray(x.addressable_data(0))


def final_lr(tcfg) -> float:
  """The learning rate a schedule ends at (the paper fine-tunes pruned networks at it)."""
  if tcfg.schedule == 'multistep':
    return tcfg.lr * tcfg.lr_decay ** len(tcfg.milestones)
  if tcfg.schedule == 'constant':
    return tcfg.lr
  raise UsageError(f'train.schedule={tcfg.schedule!r} ends at learning rate 0; give the '
                   'fine-tuning rate explicitly (prune.lr > 0)')


def scale_schedule(tcfg, factor: float):
  """A copy of train config `tcfg` with the whole schedule stretched by `factor`.

  Epochs become round(epochs * factor) and multistep milestones scale with them, as Liu et
  al.'s Scratch-B does (an lr step at 60 of 200 epochs moves to 120 of 400).
  """
  out = ml_collections.ConfigDict(tcfg.to_dict())
  epochs = int(round(tcfg.epochs * factor))
  ratio = epochs / tcfg.epochs if tcfg.epochs else 1.0
  out.epochs = epochs
  out.milestones = tuple(m * ratio for m in tcfg.milestones)
  return out


@dataclasses.dataclass
class TrainSetup:
  """Everything a training run is built from; validated before anything is written."""
  config: ml_collections.ConfigDict
  dataset: data_lib.Dataset
  spec: spec_lib.Spec
  model: object
  tx: optax.GradientTransformation
  steps_per_epoch: int
  # Jitted functions by mesh, built once and shared by every run made from this setup and its
  # `dataclasses.replace` copies (a study's seeds of one architecture): a function JAX has seen
  # is neither traced nor compiled again.
  jitted: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

  @property
  def total_steps(self) -> int:
    return self.config.train.epochs * self.steps_per_epoch

  def functions(self, mesh):
    """(init, train step, eval step), jitted for `mesh`: init(key, data_seed=) -> TrainState."""
    if mesh not in self.jitted:
      augmentation = input_pipeline.device_augment(self.config)
      self.jitted[mesh] = (
          parallel.jit_once(functools.partial(create_state, self.model, self.tx,
                                              image_shape=self.dataset.image_shape),
                            out_shardings=parallel.replicated(mesh)),
          parallel.jit(make_train_step(self.model, self.tx, self.dataset, **augmentation,
                                       bn_l1=self.config.train.get('bn_l1', 0.0)),
                       donate_argnums=0),
          parallel.jit(make_eval_step(self.model, self.dataset),
                       out_shardings=parallel.replicated(mesh)))
    return self.jitted[mesh]

  def initial_state(self, mesh) -> TrainState:
    """The run's fresh state on `mesh`: parameters and data stream seeded by config.seed."""
    seed = self.config.seed
    # 'rbg' keys: the same initialisers, compiled about twice as fast as threefry on CPU, which
    # matters when a study trains dozens of small networks.
    return self.functions(mesh)[0](jax.random.key(seed, impl='rbg'), data_seed=np.uint32(seed))


def setup(config, dataset: data_lib.Dataset | None = None) -> TrainSetup:
  """Validates `config`, loads the data and builds spec, model and optimizer (writes nothing)."""
  tcfg = config.train
  for field in ('epochs', 'batch_size', 'eval_batch_size', 'eval_every_epochs',
                'log_every_steps', 'checkpoint_every_epochs', 'keep_checkpoints'):
    low = 0 if field == 'epochs' else 1
    if tcfg[field] < low:
      raise UsageError(f'train.{field} must be >= {low}, got {tcfg[field]}')
  parallel.check_batch(tcfg.batch_size, 'train.batch_size')
  if tcfg.get('bn_l1', 0.0) < 0:
    raise UsageError(f'train.bn_l1 must be >= 0 (0: no sparsity penalty), got {tcfg.bn_l1}')
  if config.model.dtype not in DTYPES:
    raise UsageError(f'unknown model.dtype {config.model.dtype!r}; expected one of {DTYPES}')
  input_pipeline.pad_mode(config)  # data.pad_mode is one the random crop knows
  if dataset is None:
    dcfg = config.data
    dataset = data_lib.load(dcfg.name, data_dir=dcfg.data_dir or None,
                            manual_dir=dcfg.manual_dir or None, image_size=dcfg.image_size,
                            synthetic_options=dcfg.get('synthetic'),
                            downsample=dcfg.get('downsample', 1))
  spec = build_spec(config.model, dataset.image_shape[-1], dataset.image_shape,
                    dataset.num_classes)
  if tcfg.get('bn_l1', 0.0) and spec.family not in spec_lib.BUILTIN_FAMILIES:
    raise UsageError('train.bn_l1 penalises the BN scales of jaxbud\'s own families; a '
                     'model.module network has no such map (set train.bn_l1=0)')
  if tcfg.batch_size > len(dataset.train_labels):
    raise UsageError(f'train.batch_size={tcfg.batch_size} is larger than the '
                     f'{len(dataset.train_labels)} training images of {dataset.name}')
  # Epochs end with their partial batch, as the reference's DataLoader does (391 steps per
  # CIFAR epoch at batch 128); train_and_evaluate reads the batches the same way.
  steps_per_epoch = input_pipeline.steps_per_epoch(len(dataset.train_labels), tcfg.batch_size,
                                                   drop_last=False)
  model = models.build(spec, dataset.num_classes, config.model.dtype)
  return TrainSetup(config, dataset, spec, model, make_optimizer(tcfg, steps_per_epoch),
                    steps_per_epoch)


def write_json(path, obj):
  """`obj` as indented JSON at `path` (process 0 writes; the others skip).

  Atomic: a run killed while writing leaves the old file or none, never half a file (final.json
  and summary.json say that a run is finished).
  """
  if jax.process_index() == 0:
    with open(f'{path}.tmp', 'w') as f:
      json.dump(obj, f, indent=1)
    os.replace(f'{path}.tmp', path)


class _Training:
  """The training run as a `loop.Task`: evaluation and checkpoints at epoch ends."""

  def __init__(self, ts: TrainSetup, workdir, ckpts, writer, mesh):
    self.ts, self.tcfg, self.workdir, self.ckpts, self.writer, self.mesh = (
        ts, ts.config.train, workdir, ckpts, writer, mesh)
    _, self.step, self.eval_step = ts.functions(mesh)
    self.last, self.predictions = {}, None

  def evaluate(self, state):
    self.last, self.predictions = evaluate(
        self.eval_step, state, input_pipeline.eval_batches(self.ts.config, self.ts.dataset),
        self.mesh)
    return self.last

  def end_period(self, state, done):
    spe, total = self.ts.steps_per_epoch, self.ts.total_steps
    ep = done // spe
    if ep % self.tcfg.eval_every_epochs == 0 or done == total:
      last = self.evaluate(state)
      metrics_lib.log(f'epoch {ep}: test error {last["test_error"]:.4f}, '
                      f'test loss {last["test_loss"]:.4f}')
      self.writer.write(done, {**last, 'epoch': ep})
    return state, False

  def log_line(self, done, means):
    return (f'epoch {done / self.ts.steps_per_epoch:.2f}  loss {means["train_loss"]:.4f}  '
            f'acc {means["train_accuracy"]:.4f}', {})

  def save(self, done, state, meta):
    self.ckpts.save(done, state, self.ts.spec, {'epoch': done / self.ts.steps_per_epoch, **meta})

  def params(self, state):
    return state.params


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       ts: TrainSetup | None = None):
  """Trains (or resumes) the run in `workdir`; returns the final metrics dict.

  Writes final.json (test error and loss, params, MACs, steps, training compute, seconds) and
  predictions.npz (the predicted class of every test image) when the run ends.
  """
  ts = ts or setup(config)
  ds, tcfg = ts.dataset, config.train
  metrics_lib.make_workdir(workdir)

  mesh = parallel.make_mesh()
  state = ts.initial_state(mesh)
  ckpts = ckpt_lib.Checkpoints(os.path.join(workdir, 'checkpoints'), tcfg.keep_checkpoints)
  start, meta = 0, {}
  restored = ckpts.restore_newest(functools.partial(_restore, ckpts, ts.spec, state, workdir))
  if restored is not None:
    start, (state, meta) = restored
    metrics_lib.log(f'resumed from step {start} in {workdir}')
  if jax.process_index() == 0:  # after the checks above: a refused run changes nothing
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json(indent=2))
    spec_lib.save(ts.spec, os.path.join(workdir, 'spec.json'))
    inference.write_model_json(workdir, ts.spec, ds, config.model.dtype)
  writer = metrics_lib.Writer(workdir, resume_step=start)  # drops lines a killed run wrote

  spe, total = ts.steps_per_epoch, ts.total_steps
  task = _Training(ts, workdir, ckpts, writer, mesh)
  loop = loop_lib.Loop(ckpts=ckpts, writer=writer, where=f'training in {workdir}', total=total,
                       period=spe, log_every=tcfg.log_every_steps,
                       checkpoint_every=tcfg.checkpoint_every_epochs * spe,
                       restored_meta=meta)
  metrics_lib.log(f'{ts.spec.family} spec {ts.spec.to_json()}: '
                  f'{spec_lib.count_params(ts.spec, ds.num_classes):,} params, '
                  f'{spe} steps/epoch, {total} steps')
  batches = input_pipeline.train_batches(config, ds, seed=config.seed,
                                         batch_size=tcfg.batch_size, start=start, stop=total,
                                         mesh=mesh, drop_last=False)  # as ts.steps_per_epoch
  state, _ = loop.run(task, state, batches, start)
  if not task.last:  # nothing left to train: report the restored state
    task.evaluate(state)
  ckpts.wait()
  ckpts.close()
  writer.close()
  macs = spec_lib.count_macs(ts.spec, ds.image_shape[0], ds.num_classes)
  final = {**task.last, 'step': total, 'params': spec_lib.count_params(ts.spec, ds.num_classes),
           'macs': macs, 'train_macs': training_macs(macs, tcfg.epochs * epoch_images(ts)),
           'train_seconds': loop.elapsed()}
  if jax.process_index() == 0:
    stats.save_predictions(os.path.join(workdir, 'predictions.npz'), **task.predictions)
  write_json(os.path.join(workdir, 'final.json'), final)
  return final


def epoch_images(ts: TrainSetup) -> int:
  """Images one training epoch reads (the last batch may be partial)."""
  spe, last = data_lib.epoch_layout(len(ts.dataset.train_labels),
                                          ts.config.train.batch_size, drop_last=False)
  return (spe - 1) * ts.config.train.batch_size + last


def training_macs(macs_per_image: int, images: int) -> int:
  """Training compute in multiply-accumulates: forward + backward ~ 3 forward passes."""
  return 3 * int(macs_per_image) * int(images)


def _restore(ckpts, spec, template, workdir, step):
  """(state, meta) of checkpoint `step`, which must hold `spec`."""
  saved = ckpts.restore_spec(step)
  if saved != spec:
    raise ckpt_lib.MismatchError(
        f'checkpoint step {step} in {workdir} holds spec {saved.to_json()} but the config gives '
        f'{spec.to_json()}; use another --workdir (or the config that made the checkpoint)')
  return ckpts.restore(ckpt_lib.abstract(template), step)

