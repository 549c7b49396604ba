"""Trained and pruned networks as users run them: `load(path)`, `predict(images)`, model.json.

A train workdir (launch.train) or a prune snapshot (<prune workdir>/snapshots/<budget>/) holds all
that inference needs. Its checkpoint carries the width spec and the arrays; `model.json`, written
beside spec.json, carries what the checkpoint does not: the input shape, the number of classes
and the per-channel normalisation of the data the network was trained on. `load` rebuilds the
network from the spec and restores only params and batch statistics (no optimizer, no config),
zero-width layers included; `predict` takes uint8 NHWC images and returns logits.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxbud import augment
from jaxbud import checkpoint as ckpt_lib
from jaxbud import errors
from jaxbud import models
from jaxbud import spec as spec_lib

MODEL_JSON = 'model.json'
_FIELDS = ('input_shape', 'num_classes', 'params', 'macs', 'normalisation', 'dataset', 'dtype')


def model_info(spec: spec_lib.Spec, dataset, dtype) -> dict:
  """model.json's fields for `spec` trained on `dataset` (a jaxbud.data.Dataset) at `dtype`.

  `normalisation` is the per-channel mean and std on the 0..255 scale: the network sees
  (image - mean) / std, as in training (jaxbud.augment.normalize).
  """
  h, w, c = (int(d) for d in dataset.image_shape)
  nc = int(dataset.num_classes)
  return {'input_shape': [h, w, c], 'input_dtype': 'uint8', 'layout': 'NHWC',
          'num_classes': nc, 'output': 'logits',
          'params': spec_lib.count_params(spec, nc), 'macs': spec_lib.count_macs(spec, h, nc),
          'normalisation': {'mean': [float(m) for m in dataset.mean],
                            'std': [float(s) for s in dataset.std]},
          'dataset': dataset.name, 'dtype': jnp.dtype(dtype).name, 'family': spec.family}


def write_model_json(directory, spec: spec_lib.Spec, dataset, dtype) -> str:
  """Writes `model_info(...)` to <directory>/model.json; returns the path."""
  path = os.path.join(directory, MODEL_JSON)
  with open(path, 'w') as f:
    json.dump(model_info(spec, dataset, dtype), f, indent=1)
  return path


def read_model_json(directory) -> dict:
  path = os.path.join(directory, MODEL_JSON)
  if not os.path.isfile(path):
    raise errors.UsageError(
        f'{directory} has no {MODEL_JSON} (input shape, classes, normalisation): launch.train '
        'and launch.prune write it; for a run made before them, write it with '
        'jaxbud.inference.write_model_json(DIR, spec, jaxbud.data.load(DATASET), DTYPE)')
  try:
    with open(path) as f:
      info = json.load(f)
  except (OSError, ValueError) as e:
    raise errors.UsageError(f'cannot read {path}: {e}') from None
  missing = [k for k in _FIELDS if k not in info]
  if missing:
    raise errors.UsageError(f'{path} lacks the field(s) {missing}')
  return info


def forward(model, variables, normalisation: dict, images):
  """Eval-mode float32 logits of uint8 NHWC `images`, normalised as in training."""
  x = augment.normalize(images, normalisation['mean'], normalisation['std'], model.dtype)
  return model.apply(variables, x).astype(jnp.float32)


class Network:
  """A restored network: `spec`, `model` (linen module), `variables` ({'params',
  'batch_stats'}), `info` (model.json) and `predict(images)`."""

  def __init__(self, spec, model, variables, info, path=None):
    self.spec, self.model, self.variables, self.info, self.path = (spec, model, variables, info,
                                                                   path)
    self._predict = jax.jit(lambda variables, images: forward(
        self.model, variables, self.info['normalisation'], images))

  @property
  def input_shape(self) -> tuple[int, int, int]:
    return tuple(self.info['input_shape'])

  @property
  def num_params(self) -> int:
    """Parameters (kernels, BN scale and bias, dense weight and bias), counted in `variables`."""
    return models.count(self.variables['params'])

  def apply(self, images):
    """`forward` with this network's variables and normalisation (traceable, for jax.export)."""
    return forward(self.model, self.variables, self.info['normalisation'], images)

  def predict(self, images) -> np.ndarray:
    """Logits (N, num_classes) of uint8 images (N, H, W, C) on the 0..255 scale."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape[1:] != self.input_shape or images.ndim != 4:
      raise errors.UsageError(
          f'predict takes uint8 images of shape (N, {", ".join(map(str, self.input_shape))}) '
          f'(NHWC, 0..255), got {images.dtype} {images.shape}')
    return np.asarray(self._predict(self.variables, images))

  def __repr__(self):
    return (f'Network({self.spec.family}, {self.num_params:,} params, input '
            f'{self.input_shape}, {self.info["num_classes"]} classes, from {self.path})')


def checkpoint_dir(path) -> str:
  """The checkpoint folder of a train workdir (checkpoints/) or prune snapshot (checkpoint/)."""
  if not os.path.isdir(path):
    raise errors.UsageError(f'{path} is not a folder; expected a train workdir (launch.train) '
                            'or a prune snapshot (<prune workdir>/snapshots/<budget>)')
  snapshots = os.path.join(path, 'snapshots')
  if os.path.isdir(snapshots) and not os.path.isfile(os.path.join(path, MODEL_JSON)):
    raise errors.UsageError(
        f'{path} is a prune run; give one of its snapshots: '
        f'{", ".join(sorted(os.listdir(snapshots))) or "none saved yet"} in {snapshots}')
  for name in ('checkpoints', 'checkpoint'):
    d = os.path.join(path, name)
    if os.path.isdir(d) and any(e.isdigit() for e in os.listdir(d)):
      return d
  raise errors.UsageError(f'no checkpoint in {path}: expected checkpoints/ (a train workdir) '
                          'or checkpoint/ (a prune snapshot) holding a saved step')


def load(path) -> Network:
  """The network saved in a train workdir or prune snapshot, ready for `predict`.

  Restores the newest readable checkpoint step's params and batch statistics only.
  """
  path = os.fspath(path)
  ckpt_dir = checkpoint_dir(path)
  info = read_model_json(path)
  ckpts = ckpt_lib.Checkpoints(ckpt_dir)

  def restore(step):
    spec = ckpts.restore_spec(step)
    model = models.build(spec, info['num_classes'], info['dtype'])
    abstract = jax.eval_shape(lambda k: models.variables(model, k, tuple(info['input_shape'])),
                              jax.random.key(0))
    abstract = {'params': abstract['params'], 'batch_stats': abstract.get('batch_stats', {})}
    return spec, model, ckpts.restore_part(abstract, step)

  found = ckpts.restore_newest(restore, quarantine=False)  # read only: rename nothing
  ckpts.close()
  if found is None:
    raise errors.UsageError(f'no readable checkpoint step in {ckpt_dir} (see the warnings above)')
  _, (spec, model, variables) = found
  return Network(spec, model, variables, info, path)
