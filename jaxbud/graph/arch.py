"""Any Flax classifier as a width spec: `model.module` configs for launch.train and launch.prune.

A config names a factory, `model.module = 'package.module:make_module'` (or
'path/to/file.py:make_module'), that builds the linen module for a dict of widths (or the
flax.nnx module, when it also takes `rngs`), and gives the widths it starts from,
`model.widths = {group name: channels}`: one entry for each prunable channel group
`jaxbud.graph.analyze` finds in that module. `ModuleSpec` is then the network's
width spec, as `spec.WRNSpec` is a WRN's: prune runs map it to smaller ones, checkpoints and
snapshots record it (spec.json: family 'module', the factory, the widths, the input shape), and
`jaxbud.load` rebuilds the network from it by importing the factory again.

A linen module is called as `module.apply(variables, images, train=...)` (batch norm in
train mode when `train`; the batch statistics are the mutable collection), an nnx one as
`module(images)` after `module.train()` or `module.eval()`. Parameters and MACs are
counted from the built module: the params leaves, and the convolutions' and dot products'
multiply-accumulates in its traced forward pass on one image (jaxbud's own families count the
same things). Every prunable group keeps at least one channel (`min_width`), so a factory never
gets a zero width.
"""
import dataclasses
import functools
import importlib
import importlib.util
import inspect
import json
import math
import os
import sys
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxbud import spec as spec_lib
from jaxbud.errors import UsageError
from jaxbud.graph import nnx_module
from jaxbud.graph.analysis import analyze
from jaxbud.graph.compact import axis_masks


def resolve(ref):
  """The factory `ref` names: 'package.module:function' (importable from the working directory
  or sys.path) or 'path/to/file.py:function'."""
  if not isinstance(ref, str) or ref.count(':') != 1 or not all(ref.split(':')):
    raise UsageError(f'model.module={ref!r} must name a factory as \'package.module:function\' '
                     'or \'path/to/file.py:function\'')
  where, name = ref.split(':')
  if where.endswith('.py'):
    path = os.path.abspath(where)
    if not os.path.isfile(path):
      raise UsageError(f'model.module={ref!r}: no file {path}')
    key = f'jaxbud_module_{abs(hash(path))}'
    module = sys.modules.get(key)
    if module is None:
      loader_spec = importlib.util.spec_from_file_location(key, path)
      module = importlib.util.module_from_spec(loader_spec)
      loader_spec.loader.exec_module(module)
      sys.modules[key] = module
  else:
    if os.getcwd() not in sys.path and '' not in sys.path:
      sys.path.append(os.getcwd())  # as `python -m` does: a repository's configs/ import
    try:
      module = importlib.import_module(where)
    except ImportError as e:
      raise UsageError(f'model.module={ref!r}: cannot import {where!r} ({e}); run from the '
                       'folder that holds it or add that folder to PYTHONPATH') from None
  fn = getattr(module, name, None)
  if not callable(fn):
    raise UsageError(f'model.module={ref!r}: {where} has no function {name!r}')
  return fn


@dataclasses.dataclass(frozen=True)
class ModuleSpec:
  """The width spec of a network built by a user factory: `module` names the factory,
  `widths` is ((group name, channels), ...) for every prunable group in the order `analyze`
  lists them, `input_shape` the (H, W, C) images it takes."""
  family: ClassVar[str] = 'module'
  min_width: ClassVar[int] = 1
  module: str
  widths: tuple
  input_shape: tuple

  def __post_init__(self):
    widths = self.widths.items() if isinstance(self.widths, dict) else self.widths
    object.__setattr__(self, 'widths', tuple((str(n), int(w)) for n, w in widths))
    object.__setattr__(self, 'input_shape', tuple(int(d) for d in self.input_shape))
    if len(self.input_shape) != 3:
      raise UsageError(f'a module spec\'s input_shape is (H, W, C), got {self.input_shape}')
    for n, w in self.widths:
      if w < self.min_width:
        raise UsageError(f'module spec width {n}={w}: every group keeps >= {self.min_width}')

  @property
  def prunable_names(self) -> tuple:
    return tuple(n for n, _ in self.widths)

  @property
  def prunable(self) -> tuple:
    return tuple(w for _, w in self.widths)

  @property
  def in_channels(self) -> int:
    return self.input_shape[-1]

  def with_prunable(self, widths) -> 'ModuleSpec':
    widths = tuple(widths)
    if len(widths) != len(self.widths):
      raise ValueError(f'expected {len(self.widths)} widths, got {len(widths)}')
    return dataclasses.replace(self, widths=tuple(zip(self.prunable_names, widths)))

  def to_dict(self) -> dict:
    return {'family': self.family, 'module': self.module, 'widths': dict(self.widths),
            'input_shape': list(self.input_shape)}

  def to_json(self) -> str:
    return json.dumps(self.to_dict())

  @classmethod
  def from_config(cls, model_cfg, image_shape, num_classes: int) -> 'ModuleSpec':
    return from_config(model_cfg, image_shape, num_classes)

  def make(self, key=None):
    """The module at these widths (an nnx factory's parameters drawn from `key`)."""
    return call_factory(resolve(self.module), dict(self.widths), key)

  @property
  def nnx(self) -> bool:
    """Whether the factory builds a flax.nnx module (it takes `rngs`)."""
    return _takes_rngs(resolve(self.module))

  def build(self, num_classes: int, dtype=jnp.float32) -> 'Model':
    del num_classes  # the factory's module fixes its classes (checked by `from_config`)
    return Model(self, None if self.nnx else self.make(), jnp.dtype(dtype))

  def count_params(self, num_classes: int = 10) -> int:
    del num_classes
    return _params(self)

  def count_macs(self, image_size: int, num_classes: int = 10) -> int:
    del num_classes
    return _macs_on(self, (image_size, image_size, self.in_channels))


spec_lib.register_family(ModuleSpec)


def _takes_rngs(factory) -> bool:
  return 'rngs' in inspect.signature(factory).parameters


def call_factory(factory, widths: dict, key=None):
  """factory(widths), or for an nnx factory (one with an `rngs` parameter) factory(widths,
  rngs=nnx.Rngs(key)), key 0 by default."""
  if _takes_rngs(factory):
    from flax import nnx  # pylint: disable=g-import-not-at-top
    return factory(widths, rngs=nnx.Rngs(0 if key is None else key))
  return factory(widths)


class Model:
  """A factory's module with the interface jaxbud's own models have: `apply(variables, x,
  train=False, mutable=...)` with the batch statistics always in the mutable result (empty
  for a model without batch norm), `init`, `dtype` (of the inputs it is given) and `spec`.

  An nnx module (`module` None) is built inside each traced call, where building it costs only
  tracing (built eagerly, every initializer would be compiled on its own), and run in its
  functional form (`nnx_module.functional`) in eval mode (`module.eval()`) or train mode
  (`module.train()`) on the given variables; `init` builds it from the key."""

  def __init__(self, spec: ModuleSpec, module, dtype):
    self.spec, self.module, self.dtype = spec, module, dtype
    self.nnx = module is None

  def init(self, key, x):
    if self.nnx:
      variables = nnx_module.functional(self.spec.make(key))[1]
    else:
      variables = dict(self.module.init(key, x))
    variables.setdefault('batch_stats', {})
    return variables

  def apply(self, variables, x, train=False, gates=None, mutable=False):
    if gates is not None:
      raise UsageError('a model.module network takes no hand-placed gates; its channel '
                       'statistics come from jaxbud.graph (graph.step.make_prune_step)')
    if self.nnx:
      module = self.spec.make()
      module.train() if train else module.eval()  # pylint: disable=expression-not-assigned
      out, updates = nnx_module.functional(module)[0](variables, x)
      return out if mutable is False else (out, updates)
    variables = {k: v for k, v in variables.items() if v or k != 'batch_stats'}
    out = self.module.apply(variables, x, train=train, mutable=mutable)
    if mutable is False:
      return out
    out, updates = out
    updates = dict(updates)
    updates.setdefault('batch_stats', {})
    return out, updates

  @property
  def groups(self):
    """The module's channel groups in train mode (masks and compaction of a prune run)."""
    return spec_groups(self.spec)


@functools.lru_cache(maxsize=64)
def spec_groups(spec: ModuleSpec):
  """The channel groups of the module `spec` builds, in train mode, analysed once per spec
  (the prune step, the masked evaluation, compaction and `live_params` all read them)."""
  model = spec.build(0)
  x = jax.ShapeDtypeStruct((2, *spec.input_shape), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  return analyze(model.apply, variables, x, train=True, mutable=['batch_stats'])


def live_params(spec: ModuleSpec, mask: dict) -> int:
  """Parameters of `spec`'s network with the channels `mask` ({group: (C,) 0/1}) zeroes
  removed: the params positions compaction keeps (`axis_masks`), counted without tracing the
  module at the smaller widths. It equals `spec.with_prunable(live counts).count_params()`
  whenever the factory builds what compaction leaves (a prune run's snapshots rely on that)."""
  groups = spec_groups(spec)
  kept = axis_masks(groups, {n: np.flatnonzero(np.asarray(m) > 0) for n, m in mask.items()})
  return sum(math.prod(int(np.sum(kept[path, a])) if (path, a) in kept else d
                       for a, d in enumerate(shape))
             for path, shape in zip(groups.paths, groups.shapes) if path[0] == 'params')


def _macs(jaxpr) -> int:
  """Multiply-accumulates of the convolutions and dot products in `jaxpr` (calls included)."""
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'conv_general_dilated':
      rhs = eqn.invars[1].aval.shape
      out_dim = eqn.params['dimension_numbers'].rhs_spec[0]
      total += int(np.prod(eqn.outvars[0].aval.shape)) * int(np.prod(rhs)) // rhs[out_dim]
    elif name == 'dot_general':
      (contract, _), _ = eqn.params['dimension_numbers']
      lhs = eqn.invars[0].aval.shape
      total += int(np.prod(eqn.outvars[0].aval.shape)) * int(
          np.prod([lhs[d] for d in contract]))
    for value in eqn.params.values():
      inner = getattr(value, 'jaxpr', value)
      if hasattr(inner, 'eqns'):
        total += _macs(inner) * (eqn.params.get('length', 1) if name == 'scan' else 1)
  return total


@functools.lru_cache(maxsize=512)
def _shapes(spec: ModuleSpec, image_shape: tuple):
  """(model, abstract variables, abstract batch of one image) of the module `spec` builds."""
  model = spec.build(0)
  x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
  return model, jax.eval_shape(model.init, jax.random.key(0), x), x


def _params(spec: ModuleSpec) -> int:
  variables = _shapes(spec, spec.input_shape)[1]
  return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(variables.get('params', {})))


@functools.lru_cache(maxsize=512)
def _macs_on(spec: ModuleSpec, image_shape: tuple) -> int:
  model, variables, x = _shapes(spec, image_shape)
  closed = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, x)
  return _macs(closed.jaxpr)


def _check_deterministic(spec: ModuleSpec):
  """jaxbud's steps give a module no random key: an nnx Dropout would draw the same mask at
  every step (linen's asks for the key itself and fails)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  module = nnx.eval_shape(spec.make)
  for path, node in nnx.iter_graph(module):
    if isinstance(node, nnx.Dropout) and node.rate > 0:
      raise UsageError(f'model.module={spec.module!r} has a Dropout at '
                       f'{"/".join(map(str, path))}: jaxbud\'s steps pass no random key, so it '
                       'would drop the same channels at every step; build it with rate 0')


def from_config(model_cfg, image_shape, num_classes: int) -> ModuleSpec:
  """The spec of a `model.module` config section, checked against the module it builds: its
  widths must name every prunable group with the width the module has, and its output must
  have `num_classes` logits."""
  resolve(model_cfg.module)  # a usage error first if the factory cannot be had
  if model_cfg.get('spec_file'):
    spec = spec_lib.load(model_cfg.spec_file)
    if spec.family != ModuleSpec.family or spec.module != model_cfg.module:
      raise UsageError(f'model.spec_file {model_cfg.spec_file} holds a {spec.family} spec, '
                       f'not one of model.module={model_cfg.module!r}')
    if spec.input_shape != tuple(image_shape):
      raise UsageError(f'model.spec_file {model_cfg.spec_file} is for {spec.input_shape} '
                       f'images; the dataset\'s are {tuple(image_shape)}')
    widths = dict(spec.widths)
  else:
    widths = model_cfg.get('widths')
    if widths is None:
      raise UsageError('a model.module config gives model.widths, {group name: channels} for '
                       'every prunable group of the module')
    widths = dict(widths)
  try:
    model = ModuleSpec(model_cfg.module, widths, image_shape).build(num_classes)
  except KeyError as e:
    raise UsageError(f'model.module={model_cfg.module!r} reads widths[{e}], which model.widths '
                     f'({sorted(widths)}) lacks') from None
  x = jax.ShapeDtypeStruct((2, *image_shape), jnp.float32)
  try:
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    logits = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  except TypeError as e:
    raise UsageError(f'model.module={model_cfg.module!r}: a linen module must take '
                     f'(images, train=...), an nnx module (images) ({e})') from None
  if getattr(logits, 'shape', None) != (2, num_classes):
    raise UsageError(f'model.module={model_cfg.module!r} returns {jax.tree.map(np.shape, logits)}'
                     f' for 2 images; a classifier of this dataset returns (2, {num_classes})')
  if model.nnx:
    _check_deterministic(model.spec)
  groups = model.groups
  found = {g.name: g.size for g in groups.prunable}
  if not found:
    raise UsageError(f'model.module={model_cfg.module!r}: no channel group can be pruned '
                     f'({len(groups)} groups, all frozen; print jaxbud.graph.analyze(...))')
  if widths != found:
    raise UsageError(f'model.widths must name each prunable group with its width; the module '
                     f'built from {widths} has {found}')
  return ModuleSpec(model_cfg.module, tuple(found.items()), tuple(image_shape))
