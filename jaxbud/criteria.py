"""Saliency criteria: named functions from a `Context` to per-channel scores (lowest goes first).

A criterion maps every prunable layer name of the spec to a (C,) array over that layer's current
channels. Research code adds its own with the same signature:

    @criteria.register('my_criterion')
    def my_criterion(ctx: criteria.Context):
      return {name: ... for name in ctx.spec.prunable_names}

and selects it with `--config.prune.criterion=my_criterion`. A criterion that needs statistics
from training declares them, `@criteria.register('name', needs=('grad_sq',))`, and reads
`ctx.stats['grad_sq']`: each is summed over the `ctx.steps` steps since the last removal, in the
prune step's own backward pass (`jaxbud.prune.ACCUMULATORS`: fisher, grad, grad_sq, grad_abs,
activation). `needs_fisher=True` is `needs=('fisher',)`, also given as `ctx.fisher`.
`prune.normalise` ('none', 'l2' or 'mean' per layer) applies to any criterion's scores.
"""
import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxbud import prune
from jaxbud import spec as spec_lib
from jaxbud.errors import UsageError


@dataclasses.dataclass(frozen=True)
class Context:
  """What a criterion may look at when it scores channels.

  spec: the current width spec; params: its parameters (nested dict, see jaxbud.models);
  fisher: {name: (C,)} accumulated Fisher saliency (None unless the criterion needs it);
  key: a PRNG key for this round; options: the prune config section (criterion hyperparameters
  such as `beta` live there); image_size / num_classes: for cost terms; stats: {accumulator:
  {name: (C,)}} for the accumulators the criterion needs, summed over `steps` steps.
  """
  spec: spec_lib.Spec
  params: dict
  fisher: dict | None
  key: jax.Array
  options: object = None
  image_size: int = 32
  num_classes: int = 10
  stats: dict | None = None
  steps: int = 1


@dataclasses.dataclass(frozen=True)
class Criterion:
  name: str
  fn: Callable[[Context], dict]
  needs: tuple = ()  # names of jaxbud.prune.ACCUMULATORS
  any_model: bool = True  # False: reads the layers of jaxbud's own families (spec layouts)

  @property
  def needs_fisher(self) -> bool:
    return 'fisher' in self.needs


_REGISTRY: dict[str, Criterion] = {}


def register(name: str, needs: tuple = (), needs_fisher: bool = False, any_model: bool = True):
  """Decorator adding `fn(ctx) -> {layer name: (C,) scores}` to the registry under `name`; the
  prune step accumulates the statistics `needs` names for it. `any_model=False` marks a
  criterion that reads the parameter layout of jaxbud's own families (`producer_kernel`,
  `prune.coupled_modules`), which a model.module network (jaxbud.graph.arch) does not have."""
  needs = tuple(needs) + (('fisher',) if needs_fisher and 'fisher' not in needs else ())
  prune.check_accumulators(needs)

  def deco(fn):
    _REGISTRY[name] = Criterion(name, fn, needs, any_model)
    return fn

  return deco


NORMALISE = ('none', 'l2', 'mean')


def check_normalise(how: str):
  if how not in NORMALISE:
    raise UsageError(f'unknown prune.normalise {how!r}; expected one of {NORMALISE}')


def normalise(scores: dict, how: str, alive: dict | None = None) -> dict:
  """Scores divided, layer by layer, by their L2 norm (Molchanov et al. 2017) or their mean over
  the layer's live channels; 'none' leaves them. A layer whose norm or mean is 0 is left as it
  is."""
  check_normalise(how)
  if how == 'none':
    return scores
  out = {}
  for name, s in scores.items():
    s = np.asarray(s, np.float64)
    live = s[np.asarray(alive[name], bool)] if alive is not None else s
    scale = np.sqrt(np.sum(live ** 2)) if how == 'l2' else (np.mean(live) if live.size else 0.0)
    out[name] = s / scale if scale else s
  return out


def get(name: str) -> Criterion:
  if name not in _REGISTRY:
    raise UsageError(f'unknown prune criterion {name!r}; expected one of {names()}')
  return _REGISTRY[name]


def names() -> list[str]:
  return sorted(_REGISTRY)


def producer_kernel(params, name):
  """The kernel (kh, kw, cin, C) of the conv whose C output channels `name` denotes."""
  block, conv = name.split('/')
  return params[block][conv]['kernel']


@register('fisher', needs_fisher=True)
def fisher(ctx: Context):
  """Theis et al.: 0.5 * mean_n g_nc^2 accumulated over the steps since the last removal."""
  return dict(ctx.fisher)


def macs_saved(spec: spec_lib.Spec, image_size: int, num_classes: int) -> dict:
  """MACs removed by pruning one channel of each prunable layer (0 where the layer is empty, or
at its family's `min_width`)."""
  base = spec_lib.count_macs(spec, image_size, num_classes)
  widths, out = list(spec.prunable), {}
  for i, name in enumerate(spec.prunable_names):
    if widths[i] <= getattr(spec, 'min_width', 0):
      out[name] = 0.0
      continue
    fewer = widths[:i] + [widths[i] - 1] + widths[i + 1:]
    out[name] = float(base - spec_lib.count_macs(spec.with_prunable(fewer), image_size,
                                                 num_classes))
  return out


@register('fisher_cost', needs_fisher=True)
def fisher_cost(ctx: Context):
  """Theis et al.'s cost-aware signal Delta_c + beta * Delta-cost_c, Delta-cost = -MACs saved.

  Channels that save more compute look cheaper to remove. `beta` (prune.beta) trades Fisher
  units for MACs; with the mean-reduced loss Fisher scores are small (1e-8 .. 1e-4), so useful
  betas are small too (e.g. 1e-12 for CIFAR WRNs).
  """
  beta = float(getattr(ctx.options, 'beta', 0.0) or 0.0)
  saved = macs_saved(ctx.spec, ctx.image_size, ctx.num_classes)
  return {n: f - beta * saved[n] for n, f in ctx.fisher.items()}


@register('l1', any_model=False)
def l1(ctx: Context):
  """Li et al.: the L1 norm (sum of absolute values) of each output filter of the producer conv."""
  return {n: jnp.sum(jnp.abs(producer_kernel(ctx.params, n)), axis=(0, 1, 2))
          if w else jnp.zeros((0,)) for n, w in zip(ctx.spec.prunable_names, ctx.spec.prunable)}


@register('l1_signed', any_model=False)
def l1_signed(ctx: Context):
  """The authors' code's 'L1': the signed sum of each filter's weights (no absolute value)."""
  return {n: jnp.sum(producer_kernel(ctx.params, n), axis=(0, 1, 2))
          if w else jnp.zeros((0,)) for n, w in zip(ctx.spec.prunable_names, ctx.spec.prunable)}


@register('random')
def random(ctx: Context):
  """Uniform random scores: a channel chosen uniformly among the live ones."""
  keys = jax.random.split(ctx.key, len(ctx.spec.prunable))
  return {n: jax.random.uniform(k, (w,))
          for n, w, k in zip(ctx.spec.prunable_names, ctx.spec.prunable, keys)}


@register('taylor', needs=('grad_sq',))
def taylor(ctx: Context):
  """Molchanov et al. 2019, "Importance Estimation for Neural Network Pruning": the first-order
  Taylor estimate of the loss change when a channel is removed, (dL/ds_c)^2 for a scale s_c on
  the channel (its gate), per batch, averaged over the batches since the last removal."""
  return {n: v / ctx.steps for n, v in ctx.stats['grad_sq'].items()}


@register('bn_scale', any_model=False)
def bn_scale(ctx: Context):
  """Liu et al. 2017, "Learning Efficient Convolutional Networks through Network Slimming": the
  absolute BN scale |gamma_c| of the batch norm that normalises the channel (train with
  `train.bn_l1` > 0 to push the unimportant ones to zero first)."""
  out = {}
  for n, w in zip(ctx.spec.prunable_names, ctx.spec.prunable):
    _, (block, bn), _ = prune.coupled_modules(ctx.spec, n)
    out[n] = jnp.abs(ctx.params[block][bn]['scale']) if w else jnp.zeros((0,))
  return out
